"""Memory writes after the reply: a turn's records are written once its stream has closed.

``DeferredWrites`` wraps a memory store. ``add`` queues the records and returns at once, so
the ``remember`` node (and with it the turn's stream) ends at the last token; one worker
thread writes them in order (embedding included). Every read or deletion that concerns a
thread first waits for that thread's queued writes, so the next turn on a thread recalls
what the previous one remembered: the per-thread order holds. A write that fails is retried
with a growing pause; one that still fails is logged with its record ids and kept, to be
tried again before the thread's next read. Only a write the store refuses because the thread
was deleted (the thread is gone) or rejects as invalid (logged as an error) is dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from nodes.errors import ThreadDeletedError
from nodes.memory import MemoryHit, MemoryRecord, MemoryStore

__all__ = ["DeferredWrites"]

log = logging.getLogger(__name__)


class DeferredWrites:
    """A memory store whose writes happen in the background, in order, retried on failure.

    Args:
        inner: The store that holds the records.
        attempts: Tries per write before it is set aside for the thread's next read.
        backoff_s: Pause before the second try; doubled for each further one.
    """

    def __init__(self, inner: MemoryStore, *, attempts: int = 3, backoff_s: float = 0.2) -> None:
        self.inner = inner
        self._attempts = max(1, attempts)
        self._backoff_s = backoff_s
        self._jobs: collections.deque[tuple[str, list[MemoryRecord]]] = collections.deque()
        self._pending: collections.Counter[str] = collections.Counter()
        self._failed: dict[str, list[list[MemoryRecord]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(
            target=self._run, name="steadychat-memory-writes", daemon=True
        )
        self._worker.start()

    # ------------------------------------------------------------------ writes
    def add(self, records: Sequence[MemoryRecord]) -> None:
        """Queue the records (grouped by thread); they are written after the call returns."""
        by_thread: dict[str, list[MemoryRecord]] = {}
        for record in records:
            by_thread.setdefault(record.thread_id, []).append(record)
        with self._cond:
            if self._closed:
                raise RuntimeError("memory writes are closed")
            for thread_id, group in by_thread.items():
                self._jobs.append((thread_id, group))
                self._pending[thread_id] += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                thread_id, records = self._jobs[0]
            try:
                self._write(thread_id, records, self._attempts)
            finally:
                with self._cond:
                    self._jobs.popleft()
                    self._pending[thread_id] -= 1
                    if self._pending[thread_id] <= 0:
                        del self._pending[thread_id]
                    self._cond.notify_all()

    def _write(self, thread_id: str, records: list[MemoryRecord], attempts: int) -> bool:
        """Write with retries; a final failure sets the records aside. True when written."""
        pause = self._backoff_s
        for attempt in range(1, attempts + 1):
            try:
                self.inner.add(records)
                return True
            except ThreadDeletedError:
                log.info("memory write dropped: thread %s was deleted", thread_id)
                return True
            except ValueError:
                # Records the store rejects will never be accepted: trying again cannot help.
                log.exception(
                    "memory write rejected for thread %s, not retried: %s",
                    thread_id,
                    ", ".join(record.id for record in records),
                )
                return False
            except Exception:
                if attempt < attempts:
                    log.warning(
                        "memory write failed for thread %s (try %d of %d); retrying",
                        thread_id,
                        attempt,
                        attempts,
                        exc_info=True,
                    )
                    time.sleep(pause)
                    pause *= 2
        log.error(
            "memory write failed for thread %s after %d tries; kept to retry before the "
            "thread's next read: %s",
            thread_id,
            attempts,
            ", ".join(record.id for record in records),
            exc_info=True,
        )
        with self._cond:
            self._failed.setdefault(thread_id, []).append(records)
        return False

    def wait(self, thread_id: str | None = None) -> None:
        """Wait until the thread's queued writes (every thread's when None) are done, and try
        the ones that failed before once more."""
        with self._cond:
            self._cond.wait_for(
                lambda: (not self._pending) if thread_id is None else not self._pending[thread_id]
            )
            if thread_id is None:
                failed = [(t, jobs) for t, jobs in self._failed.items()]
                self._failed = {}
            else:
                failed = [(thread_id, self._failed.pop(thread_id, []))]
        for failed_thread, jobs in failed:
            for records in jobs:
                self._write(failed_thread, records, 1)

    @property
    def pending(self) -> int:
        """Writes queued or running now."""
        with self._cond:
            return sum(self._pending.values())

    @property
    def failed(self) -> int:
        """Writes that failed every try and wait for their thread's next read."""
        with self._cond:
            return sum(len(jobs) for jobs in self._failed.values())

    def close(self) -> None:
        """Write what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    # ------------------------------------------------------------------ reads and deletions
    def search(
        self,
        query: str,
        *,
        thread_id: str | None,
        user_id: str | None,
        k: int,
        min_score: float = 0.0,
        exclude_turns_from: int | None = None,
        neighbours: int = 0,
        neighbours_before: int = 0,
    ) -> list[MemoryHit]:
        """The inner store's search, once this thread's writes (all, across threads) landed."""
        self.wait(thread_id)
        return self.inner.search(
            query,
            thread_id=thread_id,
            user_id=user_id,
            k=k,
            min_score=min_score,
            exclude_turns_from=exclude_turns_from,
            neighbours=neighbours,
            neighbours_before=neighbours_before,
        )

    def delete_thread(self, thread_id: str) -> int:
        """Delete the thread's records after its queued writes (later writes are refused)."""
        self.wait(thread_id)
        return self.inner.delete_thread(thread_id)

    def delete_records(self, ids: Sequence[str]) -> int:
        """Delete records by id once every queued write landed."""
        self.wait()
        return self.inner.delete_records(ids)

    def clear_thread(self, thread_id: str) -> int:
        """Clear the thread's records after its queued writes."""
        self.wait(thread_id)
        return self.inner.clear_thread(thread_id)

    def count(self, *, thread_id: str | None = None) -> int:
        """Count records once the writes concerned landed."""
        self.wait(thread_id)
        return self.inner.count(thread_id=thread_id)

    def __getattr__(self, name: str) -> Any:
        # Anything else the concrete store offers (its client, its embedder...).
        return getattr(self.inner, name)
