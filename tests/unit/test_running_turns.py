"""The running turns of a process: a deletion stops them, whichever process wrote it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

import pytest

from graph.running import RunningTurns
from store.threads import InMemoryThreadRegistry

POLL_S = 0.02


async def _set_within(event: threading.Event, seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not event.is_set():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(POLL_S / 2)
    return True


async def test_a_tombstone_written_elsewhere_stops_only_that_threads_turn() -> None:
    registry = InMemoryThreadRegistry()
    for thread_id in ("doomed", "kept"):
        await registry.create(thread_id, owner="o")
    turns = RunningTurns(registry, poll_s=POLL_S)
    doomed, kept = threading.Event(), threading.Event()
    with turns.running("doomed", doomed), turns.running("kept", kept):
        assert turns.watching
        await asyncio.sleep(POLL_S * 3)
        assert not doomed.is_set() and not kept.is_set()
        # Another process deletes the thread: only the shared registry says so.
        await registry.mark_deleted("doomed")
        assert await _set_within(doomed)
        await asyncio.sleep(POLL_S * 3)
        assert not kept.is_set()
    assert len(turns) == 0
    # The watch does not outlive the last turn.
    await asyncio.sleep(0)
    assert not turns.watching


async def test_without_a_period_only_a_deletion_in_this_process_stops_a_turn() -> None:
    registry = InMemoryThreadRegistry()
    await registry.create("t", owner="o")
    turns = RunningTurns(registry)
    event = threading.Event()
    with turns.running("t", event):
        assert not turns.watching
        await registry.mark_deleted("t")
        await asyncio.sleep(POLL_S * 5)
        assert not event.is_set()
        assert turns.stop("t") is True and event.is_set()
    assert turns.stop("t") is False  # nothing runs on it any more
    with pytest.raises(ValueError, match="poll_s"):
        RunningTurns(registry, poll_s=0)


class FlakyRegistry(InMemoryThreadRegistry):
    """A registry whose first reads of tombstones fail, as over a dropped connection."""

    failures = 2

    async def deleted_among(self, thread_ids: Iterable[str]) -> set[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("server closed the connection unexpectedly")
        return await super().deleted_among(thread_ids)


async def test_a_failed_read_is_retried_so_no_tombstone_is_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = FlakyRegistry()
    await registry.create("t", owner="o")
    await registry.mark_deleted("t")
    turns = RunningTurns(registry, poll_s=POLL_S)
    event = threading.Event()
    with turns.running("t", event):
        assert await _set_within(event)
    assert registry.failures == 0
    # One warning for the outage, not one per failed period.
    assert caplog.text.count("could not read the registry") == 1


async def test_a_turn_starting_again_restarts_the_watch() -> None:
    registry = InMemoryThreadRegistry()
    await registry.create("t", owner="o")
    turns = RunningTurns(registry, poll_s=POLL_S)
    with turns.running("t", threading.Event()):
        pass
    await asyncio.sleep(0)
    assert not turns.watching
    event = threading.Event()
    with turns.running("t", event):
        assert turns.watching
        await registry.mark_deleted("t")
        assert await _set_within(event)
