"""Thread registry over memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from nodes.errors import ThreadDeletedError
from store.checkpointer import open_checkpointer
from store.threads import (
    ThreadExistsError,
    ThreadRegistry,
    UnknownThreadError,
    open_thread_registry,
)
from tests.unit.test_checkpointer import BACKENDS, echo_graph, run_turns


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/steadychat.db"
    return str(request.getfixturevalue("postgres_db"))


@pytest.fixture
async def registry(store_url: str) -> AsyncIterator[ThreadRegistry]:
    async with open_thread_registry(store_url) as opened:
        yield opened


async def test_create_then_get_returns_the_record(registry: ThreadRegistry) -> None:
    meta = {"channel": "web", "tags": ["vip", "北京"], "nested": {"n": 1, "ok": True}}
    created = await registry.create("t1", owner="acme", title="Order help", metadata=meta)
    got = await registry.get("t1")
    assert got == created
    assert (got.thread_id, got.owner, got.title, got.metadata, got.turns) == (
        "t1",
        "acme",
        "Order help",
        meta,
        0,
    )
    assert got.created_at == got.updated_at
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - got.created_at) < timedelta(minutes=5)
    assert got.deleted_at is None
    assert await registry.get("absent") is None


async def test_duplicate_live_id_is_refused(registry: ThreadRegistry) -> None:
    await registry.create("dup", owner="a", title="first")
    with pytest.raises(ThreadExistsError, match="already exists"):
        await registry.create("dup", owner="b", title="second")
    got = await registry.get("dup")
    assert got is not None and (got.owner, got.title) == ("a", "first")


async def test_concurrent_creates_of_one_id_let_exactly_one_win(registry: ThreadRegistry) -> None:
    results = await asyncio.gather(
        *(registry.create("race", owner=f"o{i}") for i in range(5)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ThreadExistsError) for r in results if r not in winners)


async def test_list_is_newest_updated_first_with_pages_and_owner_filter(
    registry: ThreadRegistry,
) -> None:
    for i in range(5):
        await registry.create(f"a{i}", owner="alice")
    await registry.create("b0", owner="bob")
    await registry.touch("a1", turns=3)  # most recently updated now

    items, total = await registry.list(owner="alice", limit=2, offset=0)
    assert total == 5
    assert [r.thread_id for r in items] == ["a1", "a4"]
    items, total = await registry.list(owner="alice", limit=2, offset=2)
    assert [r.thread_id for r in items] == ["a3", "a2"]
    items, _ = await registry.list(owner="alice", limit=2, offset=4)
    assert [r.thread_id for r in items] == ["a0"]
    items, total = await registry.list(owner="alice", limit=10, offset=10)
    assert (items, total) == ([], 5)

    everyone, total = await registry.list(limit=10)
    assert total == 6
    assert [r.thread_id for r in everyone][:2] == ["a1", "b0"]
    none, total = await registry.list(owner="carol")
    assert (none, total) == ([], 0)


async def test_touch_updates_turns_and_time(registry: ThreadRegistry) -> None:
    created = await registry.create("t", owner="o")
    touched = await registry.touch("t", turns=7)
    assert touched.turns == 7 and touched.updated_at > created.updated_at
    again = await registry.touch("t")
    assert again.turns == 7 and again.updated_at > touched.updated_at
    assert await registry.get("t") == again
    assert again.created_at == created.created_at


async def test_tombstone_hides_the_thread_refuses_writes_and_reuse(
    registry: ThreadRegistry,
) -> None:
    await registry.create("gone", owner="o", title="bye", metadata={"note": "private"})
    await registry.create("kept", owner="o")
    assert await registry.mark_deleted("gone") is True
    # The tombstone keeps the id and owner, nothing the thread was about.
    tombstone = await registry._get("gone")
    assert tombstone is not None and tombstone.owner == "o"
    assert tombstone.title is None and tombstone.metadata == {}

    assert await registry.get("gone") is None
    assert await registry.is_deleted("gone") is True
    assert await registry.is_deleted("kept") is False
    items, total = await registry.list(owner="o")
    assert [r.thread_id for r in items] == ["kept"] and total == 1

    with pytest.raises(ThreadDeletedError):
        await registry.touch("gone", turns=1)
    with pytest.raises(ThreadExistsError, match="deleted"):
        await registry.create("gone", owner="o")
    assert await registry.mark_deleted("gone") is False


async def test_deleting_an_unregistered_id_still_blocks_it(registry: ThreadRegistry) -> None:
    assert await registry.is_deleted("never") is False
    assert await registry.mark_deleted("never") is False
    assert await registry.is_deleted("never") is True
    with pytest.raises(ThreadExistsError):
        await registry.create("never", owner="o")


async def test_deleted_among_names_only_the_tombstoned_ids(registry: ThreadRegistry) -> None:
    for thread_id in ("live", "gone", "also-gone"):
        await registry.create(thread_id, owner="o")
    assert await registry.deleted_among(["live", "gone", "never"]) == set()
    await registry.mark_deleted("gone")
    await registry.mark_deleted("also-gone")
    await registry.mark_deleted("unregistered")
    found = await registry.deleted_among(["live", "gone", "gone", "also-gone", "never"])
    assert found == {"gone", "also-gone"}
    assert await registry.deleted_among(["unregistered", "live"]) == {"unregistered"}
    assert await registry.deleted_among([]) == set()
    with pytest.raises(ValueError, match="thread_id"):
        await registry.deleted_among(["live", ""])


async def test_unknown_thread_and_bad_input_raise_clear_errors(registry: ThreadRegistry) -> None:
    with pytest.raises(UnknownThreadError):
        await registry.touch("nope", turns=1)
    with pytest.raises(ValueError, match="owner"):
        await registry.create("x", owner="")
    with pytest.raises(ValueError, match="thread_id"):
        await registry.create("", owner="o")
    with pytest.raises(ValueError, match="JSON"):
        await registry.create("x", owner="o", metadata={"when": datetime.now(UTC)})
    await registry.create("x", owner="o")
    with pytest.raises(ValueError, match="turns"):
        await registry.touch("x", turns=-1)
    with pytest.raises(ValueError, match="limit"):
        await registry.list(limit=-1)
    with pytest.raises(ValueError, match="offset"):
        await registry.list(offset=-5)


async def test_records_copy_into_another_registry_exactly(
    registry: ThreadRegistry, tmp_path: Path
) -> None:
    await registry.create("b-live", owner="acme", title="Order", metadata={"tier": 2})
    await registry.touch("b-live", turns=3)
    await registry.create("a-gone", owner="acme", title="secret")
    await registry.mark_deleted("a-gone")
    await registry.mark_deleted("c-never")  # a tombstone with the empty owner
    for i in range(5):
        await registry.create(f"page-{i}", owner="o")
    copied = [r async for r in registry.records(batch=2)]
    assert [r.thread_id for r in copied] == sorted(r.thread_id for r in copied)
    assert len(copied) == 8 and len({r.thread_id for r in copied}) == 8
    async with open_thread_registry(f"sqlite:///{tmp_path}/copy.db") as other:
        for record in copied:
            assert await other.put_record(record) is True
        assert [r async for r in other.records()] == copied
        # Written as they are: dates, turns and tombstones are not stamped again.
        live = await other.get("b-live")
        assert live is not None and live == await registry.get("b-live") and live.turns == 3
        assert await other.get("a-gone") is None and await other.is_deleted("a-gone")
        gone = await other.read("a-gone")
        assert gone is not None and gone.title is None and gone.owner == "acme"
        # Writing the same record again changes nothing; another version overwrites.
        assert await other.put_record(live) is False
        renamed = replace(live, title="Renamed")
        assert await other.put_record(renamed) is True
        assert await other.get("b-live") == renamed
        with pytest.raises(ValueError, match="owner"):
            await other.put_record(replace(live, owner=""))
        with pytest.raises(ValueError, match="timezone"):
            await other.put_record(replace(live, created_at=datetime(2026, 1, 1)))


async def test_clock_is_stored_in_utc_and_never_ties(store_url: str) -> None:
    frozen = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
    async with open_thread_registry(store_url, clock=lambda: frozen) as registry:
        first = await registry.create("c1", owner="o")
        second = await registry.create("c2", owner="o")
        assert first.created_at == datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
        assert first.created_at.tzinfo == UTC
        assert second.created_at > first.created_at
        items, _ = await registry.list(owner="o")
        assert [r.thread_id for r in items] == ["c2", "c1"]
        stored = await registry.get("c1")
        assert stored is not None and stored.created_at == first.created_at


async def test_sqlite_registry_persists_beside_the_checkpoints(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/one.db"
    async with open_checkpointer(url) as saver, open_thread_registry(url) as registry:
        await registry.create("p", owner="o", title="kept")
        await run_turns(echo_graph(saver), "p", 1)
        await registry.touch("p", turns=1)
    async with open_thread_registry(url) as reopened:  # setup runs again: idempotent
        got = await reopened.get("p")
        assert got is not None and (got.title, got.turns) == ("kept", 1)
    with sqlite3.connect(tmp_path / "one.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"checkpoints", "writes", "steadychat_threads"} <= tables


async def test_open_thread_registry_rejects_bad_url() -> None:
    with pytest.raises(ValueError, match=r"memory.*sqlite.*postgresql"):
        async with open_thread_registry("mongodb://x"):
            pass
