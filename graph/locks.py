"""One turn at a time per thread: an asyncio lock per thread, held while a turn runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["ThreadLocks"]


class ThreadLocks:
    """One asyncio lock per thread, dropped when nobody holds or waits for it.

    ``enter`` registers a user synchronously (no await), so a check-then-enter on the event
    loop is atomic: two requests arriving together cannot both see a thread as free.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, thread_id: str) -> bool:
        """Whether a turn holds or waits for the thread."""
        return thread_id in self._locks

    @property
    def waiting(self) -> int:
        """Turns queued behind another turn of the same thread."""
        return sum(max(0, users - 1) for _, users in self._locks.values())

    def enter(self, thread_id: str) -> asyncio.Lock:
        """Register one more user of the thread's lock and return the lock (not acquired)."""
        lock, users = self._locks.get(thread_id, (asyncio.Lock(), 0))
        self._locks[thread_id] = (lock, users + 1)
        return lock

    def leave(self, thread_id: str) -> None:
        """Unregister a user; the lock goes when its last user leaves."""
        lock, users = self._locks[thread_id]
        if users <= 1:
            del self._locks[thread_id]
        else:
            self._locks[thread_id] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        """Hold the thread's lock for the body of the ``async with``."""
        lock = self.enter(thread_id)
        try:
            async with lock:
                yield
        finally:
            self.leave(thread_id)
