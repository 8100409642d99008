"""PostgreSQL for real: the throwaway server helper, sync savers, conformance, shared registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from nodes.errors import ThreadDeletedError
from store.checkpointer import open_checkpointer, open_sync_checkpointer, prune_checkpoints
from store.threads import open_thread_registry
from tests.postgres_server import create_database, pg_available, start_postgres
from tests.unit.test_checkpointer import CONFORMANCE_CAPABILITIES, cfg, echo_graph

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_start_postgres_serves_then_cleans_up(tmp_path: Path) -> None:
    assert pg_available()
    with start_postgres(tmp_path, database="steadychat") as dsn:
        assert dsn.startswith("postgresql://postgres@127.0.0.1:") and dsn.endswith("/steadychat")
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT current_database(), current_setting('fsync'), "
                "current_setting('unix_socket_directories')"
            ).fetchone()
        assert row is not None and row[:2] == ("steadychat", "off")
        server_dir = Path(row[2])
        assert (server_dir / "data" / "PG_VERSION").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    assert not server_dir.exists()


def test_create_database_rejects_odd_names(postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="database name"):
        create_database(postgres_dsn, "x; DROP DATABASE postgres")


def test_sync_postgres_saver_runs_the_graph(postgres_db: str) -> None:
    with open_sync_checkpointer(postgres_db) as saver:
        assert isinstance(saver, PostgresSaver)
        graph = echo_graph(saver)
        for i in range(10):
            graph.invoke({"messages": [HumanMessage(f"m{i}")]}, cfg("sync"))
        assert graph.get_state(cfg("sync")).values["turn"] == 10


async def test_unreachable_server_fails_fast() -> None:
    with pytest.raises(psycopg_pool.PoolTimeout):
        async with open_checkpointer("postgresql://postgres@127.0.0.1:9/x", connect_timeout=1):
            pass


async def test_setup_is_idempotent_across_openings(postgres_db: str) -> None:
    for _ in range(2):
        async with open_checkpointer(postgres_db), open_thread_registry(postgres_db):
            pass
    with psycopg.connect(postgres_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables")}
    assert {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "steadychat_threads"} <= tables


async def test_registry_is_shared_between_independent_openings(postgres_db: str) -> None:
    """Two API processes see one registry: a deletion by one refuses late writes by the other."""
    async with (
        open_thread_registry(postgres_db) as first,
        open_thread_registry(postgres_db) as second,
    ):
        await first.create("shared", owner="o", title="t")
        seen = await second.get("shared")
        assert seen is not None and seen.title == "t"
        await second.touch("shared", turns=2)
        assert await second.mark_deleted("shared") is True
        with pytest.raises(ThreadDeletedError):
            await first.touch("shared", turns=3)
        assert await first.get("shared") is None


class PruningPostgresSaver(AsyncPostgresSaver):
    """AsyncPostgresSaver whose ``aprune`` is ``prune_checkpoints`` instead of upstream's."""

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
            else:
                await prune_checkpoints(self, thread_id, keep=1)


async def test_conformance_suite_passes_with_our_pruning(postgres_db: str) -> None:
    @checkpointer_test(name="PruningPostgresSaver")
    async def postgres_saver() -> Any:
        async with open_checkpointer(postgres_db) as opened:
            assert isinstance(opened, AsyncPostgresSaver)
            yield PruningPostgresSaver(opened.conn)

    report = await validate(postgres_saver, capabilities=CONFORMANCE_CAPABILITIES)
    failures = {name: r.failures for name, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    assert report.results["prune"].passed is True, failures
