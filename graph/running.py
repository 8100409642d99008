"""The turns this process runs now, and how a deletion stops them from this or another process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator

from store.threads import ThreadRegistry

__all__ = ["DELETION_POLL_S", "RunningTurns"]

log = logging.getLogger(__name__)

DELETION_POLL_S = 0.25
"""Seconds between two looks at the shared registry for tombstones of running turns."""


class RunningTurns:
    """Cancel events of the turns running in this process, by thread, and their deletion watch.

    A deletion made in this process stops its thread's turn at once (``stop``). A deletion
    made by another process on the same database (API workers sharing PostgreSQL) is seen by
    polling the registry: while at least one turn runs, one task of this process asks every
    ``poll_s`` seconds which of the running threads carry a tombstone, in one primary-key
    read for all of them, and sets their cancel events. The turn then ends exactly as when
    it is deleted in-process: generation stops at the next token, nothing of the turn is
    saved, its client is told the thread is gone. The deleting process writes the tombstone
    before it waits for the thread's lock, so the turn stops within about ``poll_s`` and the
    deletion proceeds as soon as the turn has rolled back.

    Why a poll rather than ``LISTEN``/``NOTIFY``: the tombstone is durable, a notification is
    not. A listener needs a connection of its own per process, held for the process's life
    outside the pool (which resets its connections), and a notification sent while that
    connection is down or reconnecting is lost: the turn would then run to its end while the
    deletion waits, the failure this guards against. The poll cannot miss a tombstone (a
    failed read is retried at the next period), needs no extra connection (it borrows one of
    the registry's pool for a fraction of a millisecond), costs one indexed query per process
    per period only while turns run (nothing when idle, however many turns run), and works
    on every registry back end. Its price is latency: up to ``poll_s`` (0.25 s), small next to
    a generation and to the deletion's own work.

    Args:
        registry: The registry every process writes its tombstones to.
        poll_s: Seconds between two looks; None watches nothing (one process, where the
            deletion sets the event itself).
    """

    def __init__(self, registry: ThreadRegistry, *, poll_s: float | None = None) -> None:
        if poll_s is not None and poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s!r}")
        self.registry = registry
        self.poll_s = poll_s
        self._events: dict[str, threading.Event] = {}
        self._watch: asyncio.Task[None] | None = None
        self._reading = False

    def __contains__(self, thread_id: object) -> bool:
        return thread_id in self._events

    def __len__(self) -> int:
        return len(self._events)

    @property
    def watching(self) -> bool:
        """Whether the deletion watch is running (only while turns run and ``poll_s`` is set)."""
        return self._watch is not None and not self._watch.done()

    @contextlib.contextmanager
    def running(self, thread_id: str, cancel_event: threading.Event) -> Iterator[None]:
        """Register the thread's turn for the body of the ``with`` (the caller holds its lock).

        Args:
            thread_id: The thread.
            cancel_event: The turn's cancel event: set when the thread is deleted.
        """
        self._events[thread_id] = cancel_event
        if self.poll_s is not None and not self.watching:
            self._watch = asyncio.get_running_loop().create_task(self._watch_deletions())
        try:
            yield
        finally:
            if self._events.get(thread_id) is cancel_event:
                del self._events[thread_id]
            if not self._events and self._watch is not None and not self._reading:
                # Nothing left to watch: the watch does not outlive the last turn. A read in
                # flight is left to finish; the loop ends after it.
                self._watch.cancel()
                self._watch = None

    def stop(self, thread_id: str) -> bool:
        """Cancel the thread's turn if this process runs one; whether it did."""
        event = self._events.get(thread_id)
        if event is None:
            return False
        event.set()
        return True

    async def _watch_deletions(self) -> None:
        assert self.poll_s is not None
        failing = False
        while self._events:
            await asyncio.sleep(self.poll_s)
            ids = [t for t, event in self._events.items() if not event.is_set()]
            if not ids:
                continue
            self._reading = True
            try:
                deleted = await self.registry.deleted_among(ids)
            except Exception:
                # The next period reads again: a tombstone stays until it is seen. One warning
                # per outage, not one per period.
                if not failing:
                    log.warning("could not read the registry for deleted threads", exc_info=True)
                failing = True
                continue
            finally:
                self._reading = False
            failing = False
            for thread_id in deleted:
                self.stop(thread_id)
