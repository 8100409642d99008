"""One turn at a time per thread: the interface the service holds, and its two back ends."""

from __future__ import annotations

import contextlib
from typing import Protocol

from store.locks import LocalThreadLocks, PostgresThreadLocks, ThreadBusy

__all__ = ["LocalThreadLocks", "PostgresThreadLocks", "ThreadBusy", "ThreadLocks", "TurnLocks"]

ThreadLocks = LocalThreadLocks
"""The in-process locks (SQLite or in-memory deployments: one process)."""


class TurnLocks(Protocol):
    """What the service needs of its per-thread locks, in one process or across several."""

    @property
    def waiting(self) -> int:
        """Turns of this process queued behind another turn of the same thread."""
        ...

    def hold(
        self, thread_id: str, *, wait: bool = True
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the thread for the body; ThreadBusy at once when ``wait`` is False and busy."""
        ...
