"""Checkpointer factory and pruning over memory, SQLite and PostgreSQL back ends."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph

from store.checkpointer import (
    open_checkpointer,
    open_sync_checkpointer,
    parse_store_url,
    prune_checkpoints,
)

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow]),
]


class EchoState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    turn: int
    topic: str
    """Set once by the first input and never again: its stored value is shared by every later
    checkpoint, so pruning must not drop it."""
    labels: list[str]
    """Like ``topic``, but not a primitive: PostgreSQL keeps it in a blob of its own."""


WINDOW = 4


def _reply(state: EchoState) -> dict[str, Any]:
    turn = state.get("turn", 0) + 1
    messages = state["messages"]
    # Like the real graph, old turns leave state, so checkpoints stay small.
    folded = [RemoveMessage(id=str(m.id)) for m in messages[: max(0, len(messages) + 1 - WINDOW)]]
    reply = AIMessage(f"reply {turn}: {messages[-1].content}")
    return {"messages": [*folded, reply], "turn": turn}


def echo_graph(saver: BaseCheckpointSaver[Any]) -> CompiledStateGraph:
    """One node that answers each user message (keeping the last 4 messages): three
    checkpoints per turn."""
    builder = StateGraph(EchoState)
    builder.add_node("reply", _reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def cfg(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


async def run_turns(graph: CompiledStateGraph, thread_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await graph.ainvoke({"messages": [HumanMessage(f"message {i}")]}, cfg(thread_id))


async def checkpoint_ids(saver: BaseCheckpointSaver[Any], thread_id: str) -> list[str]:
    return [t.config["configurable"]["checkpoint_id"] async for t in saver.alist(cfg(thread_id))]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of each back end; the SQLite file sits in folders that do not exist yet."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/not/yet/there/checkpoints.db"
    return str(request.getfixturevalue("postgres_db"))


def stored_rows(url: str, saver: BaseCheckpointSaver[Any], thread_id: str) -> dict[str, int]:
    """What a thread occupies in storage, per table."""
    if isinstance(saver, InMemorySaver):
        return {
            "checkpoints": sum(len(c) for c in saver.storage.get(thread_id, {}).values()),
            "writes": sum(len(w) for k, w in saver.writes.items() if k[0] == thread_id),
            "blobs": sum(1 for k in saver.blobs if k[0] == thread_id),
        }
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {
                table: conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE thread_id = ?", (thread_id,)
                ).fetchone()[0]
                for table in ("checkpoints", "writes")
            }
    import psycopg

    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(  # type: ignore[index]
                f"SELECT COUNT(*) FROM {table} WHERE thread_id = %s", (thread_id,)
            ).fetchone()[0]
            for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs")
        }


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "location"),
    [
        ("memory", "memory", ""),
        ("sqlite:///data/chk.db", "sqlite", "data/chk.db"),
        ("sqlite:////var/lib/chk.db", "sqlite", "/var/lib/chk.db"),
        ("sqlite:///:memory:", "sqlite", ":memory:"),
        ("./chk.sqlite", "sqlite", "./chk.sqlite"),
        ("postgresql://u@h:5432/db", "postgres", "postgresql://u@h:5432/db"),
        ("postgres://u@h/db", "postgres", "postgres://u@h/db"),
    ],
)
def test_parse_store_url(url: str, kind: str, location: str) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.location) == (kind, location)


@pytest.mark.parametrize("url", ["redis://localhost:6379", "mysql://u@h/db", "", "sqlite://host/x"])
async def test_bad_url_names_accepted_schemes(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory.*sqlite.*postgresql"):
        async with open_checkpointer(url):
            pass
    with (
        pytest.raises(ValueError, match=r"memory.*sqlite.*postgresql"),
        open_sync_checkpointer(url),
    ):
        pass


# -- open / round trip --------------------------------------------------------------------------


async def test_state_round_trips_and_survives_reopen(store_url: str) -> None:
    async with open_checkpointer(store_url) as saver:
        graph = echo_graph(saver)
        await run_turns(graph, "t1", 3)
        state = await graph.aget_state(cfg("t1"))
        assert state.values["turn"] == 3
        assert [m.content for m in state.values["messages"]] == [
            "message 1",
            "reply 2: message 1",
            "message 2",
            "reply 3: message 2",
        ]
    if store_url == "memory":
        return
    async with open_checkpointer(store_url) as reopened:
        state = await echo_graph(reopened).aget_state(cfg("t1"))
        assert state.values["turn"] == 3
        assert state.values["messages"][-1].content == "reply 3: message 2"


async def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "chk.db"
    async with open_checkpointer(str(path)) as saver:
        assert isinstance(saver, AsyncSqliteSaver)
        await run_turns(echo_graph(saver), "t", 1)
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sync_twin_runs_the_graph(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sync.db"
    with open_sync_checkpointer(url) as saver:
        assert isinstance(saver, SqliteSaver)
        graph = echo_graph(saver)
        for i in range(4):
            graph.invoke({"messages": [HumanMessage(f"m{i}")]}, cfg("s"))
        assert graph.get_state(cfg("s")).values["turn"] == 4
    with open_sync_checkpointer("memory") as memory_saver:
        assert isinstance(memory_saver, InMemorySaver)


# -- pruning ------------------------------------------------------------------------------------


async def test_prune_500_checkpoints_to_20_keeps_latest_state_and_other_threads(
    store_url: str,
) -> None:
    async with open_checkpointer(store_url) as saver:
        graph = echo_graph(saver)
        first = {"messages": [HumanMessage("message 0")], "topic": "billing", "labels": ["vip"]}
        await graph.ainvoke(first, cfg("long"))
        await run_turns(graph, "long", 166, start=1)  # 3 checkpoints per turn: 501
        await run_turns(graph, "other", 2)
        before = await checkpoint_ids(saver, "long")
        other_before = await checkpoint_ids(saver, "other")
        newest = await saver.aget_tuple(cfg("long"))
        assert len(before) == 501 and newest is not None

        deleted = await prune_checkpoints(saver, "long", keep=20)

        after = await checkpoint_ids(saver, "long")
        assert deleted == 481
        assert after == before[:20]
        assert await checkpoint_ids(saver, "other") == other_before
        latest = await saver.aget_tuple(cfg("long"))
        assert latest is not None
        assert latest.config == newest.config
        assert latest.checkpoint["channel_values"] == newest.checkpoint["channel_values"]
        state = await graph.aget_state(cfg("long"))
        assert state.values["turn"] == 167
        assert state.values["topic"] == "billing"
        assert state.values["labels"] == ["vip"]
        assert [m.content for m in state.values["messages"]] == [
            "message 165",
            "reply 166: message 165",
            "message 166",
            "reply 167: message 166",
        ]
        # The oldest kept checkpoint points at no deleted parent.
        oldest = [t async for t in saver.alist(cfg("long"))][-1]
        assert oldest.parent_config is None
        # The thread goes on as if nothing happened.
        await run_turns(graph, "long", 1, start=167)
        state = await graph.aget_state(cfg("long"))
        assert state.values["turn"] == 168
        assert state.values["messages"][-1].content == "reply 168: message 167"


async def test_pruning_every_turn_keeps_storage_bounded(store_url: str) -> None:
    async with open_checkpointer(store_url) as saver:
        graph = echo_graph(saver)
        sizes = []
        for turn in range(24):
            await run_turns(graph, "bounded", 1, start=turn)
            await prune_checkpoints(saver, "bounded", keep=6)
            if turn in (7, 23):
                sizes.append(stored_rows(store_url, saver, "bounded"))
        assert sizes[0] == sizes[1], sizes
        assert sizes[1]["checkpoints"] == 6
        state = await graph.aget_state(cfg("bounded"))
        assert state.values["turn"] == 24


async def test_prune_keeps_writes_of_kept_checkpoints(store_url: str) -> None:
    async with open_checkpointer(store_url) as saver:
        graph = echo_graph(saver)
        await run_turns(graph, "w", 3)
        head = await saver.aget_tuple(cfg("w"))
        assert head is not None
        await saver.aput_writes(head.config, [("messages", [HumanMessage("pending")])], "task-1")
        await prune_checkpoints(saver, "w", keep=1)
        kept = await saver.aget_tuple(cfg("w"))
        assert kept is not None
        assert [(c, v[0].content) for _, c, v in kept.pending_writes or []] == [
            ("messages", "pending")
        ]


async def test_prune_of_unknown_thread_or_fewer_checkpoints_deletes_nothing(
    store_url: str,
) -> None:
    async with open_checkpointer(store_url) as saver:
        await run_turns(echo_graph(saver), "short", 1)
        assert await prune_checkpoints(saver, "nobody", keep=5) == 0
        assert await prune_checkpoints(saver, "short", keep=5) == 0
        assert len(await checkpoint_ids(saver, "short")) == 3


async def test_prune_rejects_bad_arguments() -> None:
    saver = InMemorySaver()
    for keep in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            await prune_checkpoints(saver, "t", keep=keep)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thread_id"):
        await prune_checkpoints(saver, "", keep=1)
    with pytest.raises(TypeError, match="supported"):
        await prune_checkpoints(object(), "t", keep=1)  # type: ignore[arg-type]


# -- upstream conformance suite, with pruning standing in for the saver's own prune ---------------


class PruningSqliteSaver(AsyncSqliteSaver):
    """An AsyncSqliteSaver whose ``aprune`` is ``prune_checkpoints`` (keep_latest = keep 1)."""

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
            else:
                await prune_checkpoints(self, thread_id, keep=1)


class PruningMemorySaver(InMemorySaver):
    """An InMemorySaver whose ``aprune`` is ``prune_checkpoints``."""

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
            else:
                await prune_checkpoints(self, thread_id, keep=1)


CONFORMANCE_CAPABILITIES = {"put", "put_writes", "get_tuple", "list", "delete_thread", "prune"}


async def test_conformance_suite_passes_with_our_pruning(tmp_path: Path) -> None:
    @checkpointer_test(name="PruningSqliteSaver")
    async def sqlite_saver() -> Any:
        async with open_checkpointer(f"sqlite:///{tmp_path}/conf.db") as opened:
            assert isinstance(opened, AsyncSqliteSaver)
            yield PruningSqliteSaver(opened.conn)

    @checkpointer_test(name="PruningMemorySaver")
    async def memory_saver() -> Any:
        yield PruningMemorySaver()

    for registered in (sqlite_saver, memory_saver):
        report = await validate(registered, capabilities=CONFORMANCE_CAPABILITIES)
        failures = {name: r.failures for name, r in report.results.items() if r.failures}
        assert report.passed_all_base(), failures
        assert report.results["prune"].passed is True, failures
