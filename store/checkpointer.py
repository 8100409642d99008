"""Open a LangGraph checkpointer from a URL, and prune a thread's old checkpoints."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

__all__ = [
    "ACCEPTED_URLS",
    "StoreURL",
    "open_checkpointer",
    "open_sync_checkpointer",
    "parse_store_url",
    "prune_checkpoints",
    "prune_checkpoints_sync",
]

ACCEPTED_URLS = (
    '"memory", "sqlite:///PATH" (or a bare file path) or "postgresql://USER@HOST:PORT/DB"'
)
_POSTGRES_HINT = "PostgreSQL support needs the postgres extra: pip install 'steadychat[postgres]'"
# Metadata keys a DeltaChannel leaves on checkpoints (see BaseCheckpointSaver.prune).
_DELTA_METADATA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")
# Stays well under SQLite's bound-parameter limit.
_SQLITE_CHUNK = 500


@dataclass(frozen=True)
class StoreURL:
    """Where checkpoints (and the thread registry) live, parsed from a URL."""

    kind: Literal["memory", "sqlite", "postgres"]
    location: str
    """The SQLite file path (or ":memory:") or the PostgreSQL URL; "" for memory."""


def parse_store_url(url: str) -> StoreURL:
    """Parse a storage URL.

    Accepted: ``memory``; ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``sqlite:///:memory:`` or a bare file path; ``postgresql://...`` (or ``postgres://...``).

    Args:
        url: The URL, e.g. from ``STEADYCHAT_CHECKPOINT_URL``.

    Returns:
        The parsed kind and location.

    Raises:
        ValueError: Empty, or a scheme other than the accepted ones.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"checkpoint URL is empty; expected {ACCEPTED_URLS}")
    url = url.strip()
    if url in ("memory", "memory://"):
        return StoreURL(kind="memory", location="")
    if url.startswith(("postgresql://", "postgres://")):
        return StoreURL(kind="postgres", location=url)
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(f"bad SQLite URL {url!r}; expected {ACCEPTED_URLS}")
        return StoreURL(kind="sqlite", location=url[len("sqlite:///") :])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(f"unsupported checkpoint URL scheme {scheme!r}; expected {ACCEPTED_URLS}")
    return StoreURL(kind="sqlite", location=url)


def _prepare_sqlite_path(location: str) -> str:
    if location == ":memory:":
        return location
    path = Path(location).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _import_postgres() -> Any:
    """The psycopg_pool module, once the postgres extra is known to be installed."""
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(f"{_POSTGRES_HINT} ({exc})") from exc
    return psycopg_pool


def _postgres_connection_kwargs() -> dict[str, Any]:
    from psycopg.rows import dict_row

    # What the Postgres savers require of their connections.
    return {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


@asynccontextmanager
async def open_checkpointer(
    url: str, *, max_connections: int = 10, connect_timeout: float = 10.0
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """Open a checkpointer for async callers (the API, ``graph.ainvoke``) and close it at exit.

    ``memory`` gives an ``InMemorySaver``; a SQLite path an ``AsyncSqliteSaver`` in WAL mode
    (the folder is created); a PostgreSQL URL an ``AsyncPostgresSaver`` over a connection pool.
    Tables are created idempotently before the saver is handed out.

    Args:
        url: See ``parse_store_url``.
        max_connections: Upper bound of the PostgreSQL pool.
        connect_timeout: Seconds to wait for the first PostgreSQL connection.

    Yields:
        The ready checkpointer.

    Raises:
        ValueError: The URL has an unsupported scheme.
        ImportError: A PostgreSQL URL without the postgres extra installed.
        psycopg_pool.PoolTimeout: The PostgreSQL server cannot be reached.
    """
    target = parse_store_url(url)
    if target.kind == "memory":
        yield InMemorySaver()
        return
    if target.kind == "sqlite":
        path = _prepare_sqlite_path(target.location)
        async with aiosqlite.connect(path) as conn:
            saver = AsyncSqliteSaver(conn)
            await saver.setup()  # runs PRAGMA journal_mode=WAL and CREATE TABLE IF NOT EXISTS
            yield saver
        return
    psycopg_pool = _import_postgres()
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    pool = psycopg_pool.AsyncConnectionPool(
        target.location,
        min_size=1,
        max_size=max_connections,
        kwargs=_postgres_connection_kwargs(),
        open=False,
    )
    await pool.open(wait=True, timeout=connect_timeout)
    try:
        pg_saver = AsyncPostgresSaver(conn=pool)
        await pg_saver.setup()
        yield pg_saver
    finally:
        await pool.close()


@contextmanager
def open_sync_checkpointer(
    url: str, *, max_connections: int = 4, connect_timeout: float = 10.0
) -> Iterator[BaseCheckpointSaver[Any]]:
    """Open a checkpointer for sync callers (the CLI, scripts, ``graph.invoke``).

    The sync twin of ``open_checkpointer``: ``InMemorySaver``, ``SqliteSaver`` (WAL mode) or
    ``PostgresSaver`` over a connection pool.

    Args:
        url: See ``parse_store_url``.
        max_connections: Upper bound of the PostgreSQL pool.
        connect_timeout: Seconds to wait for the first PostgreSQL connection.

    Yields:
        The ready checkpointer.

    Raises:
        ValueError: The URL has an unsupported scheme.
        ImportError: A PostgreSQL URL without the postgres extra installed.
        psycopg_pool.PoolTimeout: The PostgreSQL server cannot be reached.
    """
    target = parse_store_url(url)
    if target.kind == "memory":
        yield InMemorySaver()
        return
    if target.kind == "sqlite":
        path = _prepare_sqlite_path(target.location)
        # The saver serialises access with its own lock, so any thread may use it.
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
        return
    psycopg_pool = _import_postgres()
    from langgraph.checkpoint.postgres import PostgresSaver

    with psycopg_pool.ConnectionPool(
        target.location,
        min_size=1,
        max_size=max_connections,
        kwargs=_postgres_connection_kwargs(),
        open=False,
    ) as pool:
        pool.open(wait=True, timeout=connect_timeout)
        pg_saver = PostgresSaver(conn=pool)
        pg_saver.setup()
        yield pg_saver


# --- pruning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    ns: str
    checkpoint_id: str
    parent_id: str | None
    root_id: str | None
    """The root graph's checkpoint a subgraph call started from (metadata ``parents[""]``)."""
    uses_delta: bool


@dataclass
class _Plan:
    kept: dict[str, list[str]]
    deleted: dict[str, list[str]]
    reparent: dict[str, list[str]]
    """Kept checkpoints whose parent is deleted: their parent pointer is cleared."""

    @property
    def deleted_count(self) -> int:
        return sum(len(ids) for ids in self.deleted.values())


def _metadata_facts(metadata: dict[str, Any] | None) -> tuple[str | None, bool]:
    metadata = metadata or {}
    parents = metadata.get("parents") or {}
    root = parents.get("") if isinstance(parents, dict) else None
    return root, any(key in metadata for key in _DELTA_METADATA_KEYS)


def _plan(thread_id: str, rows: Sequence[_Row], keep: int) -> _Plan:
    """Decide what to keep: the newest ``keep`` checkpoints of each namespace.

    A subgraph call's namespace (``node:task_id``) goes entirely once the root checkpoint it
    started from is pruned, as LangGraph's own ``prune`` does, so finished calls do not pile up.
    """
    if delta := sorted({r.ns or "(root)" for r in rows if r.uses_delta}):
        raise NotImplementedError(
            f"cannot prune thread {thread_id!r}: it uses a DeltaChannel (namespaces "
            f"{', '.join(delta)}), whose state needs the checkpoints before the last snapshot"
        )
    by_ns: dict[str, list[_Row]] = {}
    for row in rows:
        by_ns.setdefault(row.ns, []).append(row)
    kept: dict[str, list[str]] = {}
    deleted: dict[str, list[str]] = {}
    for ns, ns_rows in by_ns.items():
        # Checkpoint ids are time-ordered (uuid6), so the lexical maximum is the newest.
        ns_rows.sort(key=lambda r: r.checkpoint_id, reverse=True)
        kept[ns] = [r.checkpoint_id for r in ns_rows[:keep]]
        deleted[ns] = [r.checkpoint_id for r in ns_rows[keep:]]
    deleted_roots = set(deleted.get("", ()))
    for ns, ns_rows in by_ns.items():
        if ":" in ns and ns_rows[0].root_id in deleted_roots:
            deleted[ns] = [r.checkpoint_id for r in ns_rows]
            kept[ns] = []
    reparent: dict[str, list[str]] = {}
    for ns, ns_rows in by_ns.items():
        kept_ids = set(kept[ns])
        orphans = [
            r.checkpoint_id
            for r in ns_rows
            if r.checkpoint_id in kept_ids
            and r.parent_id is not None
            and r.parent_id not in kept_ids
        ]
        if orphans:
            reparent[ns] = orphans
    return _Plan(
        kept=kept, deleted={ns: ids for ns, ids in deleted.items() if ids}, reparent=reparent
    )


def _check_keep(thread_id: str, keep: int) -> None:
    if not isinstance(thread_id, str) or not thread_id:
        raise ValueError("thread_id must be a non-empty string")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")


def _prune_memory(saver: InMemorySaver, thread_id: str, keep: int) -> int:
    namespaces = saver.storage.get(thread_id)
    if not namespaces:
        return 0
    rows = []
    for ns, checkpoints in namespaces.items():
        for checkpoint_id, (_, metadata, parent_id) in checkpoints.items():
            root, uses_delta = _metadata_facts(saver.serde.loads_typed(metadata))
            rows.append(_Row(ns, checkpoint_id, parent_id, root, uses_delta))
    plan = _plan(thread_id, rows, keep)
    for ns, ids in plan.deleted.items():
        checkpoints = namespaces[ns]
        freed: set[tuple[str, Any]] = set()
        for checkpoint_id in ids:
            checkpoint, _, _ = checkpoints.pop(checkpoint_id)
            freed.update(saver.serde.loads_typed(checkpoint)["channel_versions"].items())
            saver.writes.pop((thread_id, ns, checkpoint_id), None)
        referenced: set[tuple[str, Any]] = set()
        for checkpoint, _, _ in checkpoints.values():
            referenced.update(saver.serde.loads_typed(checkpoint)["channel_versions"].items())
        for channel, version in freed - referenced:
            saver.blobs.pop((thread_id, ns, channel, version), None)
        if not checkpoints:
            del namespaces[ns]
    for ns, ids in plan.reparent.items():
        for checkpoint_id in ids:
            checkpoint, metadata, _ = namespaces[ns][checkpoint_id]
            namespaces[ns][checkpoint_id] = (checkpoint, metadata, None)
    return plan.deleted_count


# A prune is written once as a generator of (sql, params, fetch?) steps that receives each
# step's rows, so that the sync and async drivers below run the very same statements.
_Steps = Generator[tuple[str, Sequence[Any], bool], list[Any], int]


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _SQLITE_CHUNK):
        yield list(ids[start : start + _SQLITE_CHUNK])


def _sqlite_steps(thread_id: str, keep: int) -> _Steps:
    rows = yield (
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata "
        "FROM checkpoints WHERE thread_id = ?",
        (thread_id,),
        True,
    )
    parsed = []
    for ns, checkpoint_id, parent_id, metadata in rows:
        root, uses_delta = _metadata_facts(json.loads(metadata) if metadata else None)
        parsed.append(_Row(ns, checkpoint_id, parent_id, root, uses_delta))
    plan = _plan(thread_id, parsed, keep)
    for ns, ids in plan.deleted.items():
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            params = (thread_id, ns, *chunk)
            yield (
                "DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? "
                f"AND checkpoint_id IN ({marks})",
                params,
                False,
            )
            yield (
                "DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? "
                f"AND checkpoint_id IN ({marks})",
                params,
                False,
            )
    for ns, ids in plan.reparent.items():
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            yield (
                "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = ? "
                f"AND checkpoint_ns = ? AND checkpoint_id IN ({marks})",
                (thread_id, ns, *chunk),
                False,
            )
    return plan.deleted_count


def _postgres_steps(thread_id: str, keep: int) -> _Steps:
    # One snapshot for every statement: what a run saves meanwhile is neither seen nor deleted.
    yield "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", (), False
    rows = yield (
        "SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id, "
        "metadata -> 'parents' ->> '' AS root_id, "
        "(metadata ?| %s) AS uses_delta "
        "FROM checkpoints WHERE thread_id = %s",
        (list(_DELTA_METADATA_KEYS), thread_id),
        True,
    )
    parsed = [
        _Row(
            r["checkpoint_ns"],
            r["checkpoint_id"],
            r["parent_checkpoint_id"],
            r["root_id"],
            bool(r["uses_delta"]),
        )
        for r in rows
    ]
    plan = _plan(thread_id, parsed, keep)
    for ns, ids in plan.deleted.items():
        kept = plan.kept.get(ns, [])
        yield (
            "DELETE FROM checkpoint_writes "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)",
            (thread_id, ns, ids),
            False,
        )
        freed = yield (
            "WITH gone AS (DELETE FROM checkpoints "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s) "
            "RETURNING checkpoint -> 'channel_versions' AS versions) "
            "SELECT DISTINCT v.key AS channel, v.value AS version "
            "FROM gone CROSS JOIN LATERAL jsonb_each_text(gone.versions) AS v",
            (thread_id, ns, ids),
            True,
        )
        referenced = yield (
            "SELECT DISTINCT v.key AS channel, v.value AS version FROM checkpoints c "
            "CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v "
            "WHERE c.thread_id = %s AND c.checkpoint_ns = %s AND c.checkpoint_id = ANY(%s)",
            (thread_id, ns, kept),
            True,
        )
        still_used = {(r["channel"], r["version"]) for r in referenced}
        garbage: dict[str, list[str]] = {}
        for r in freed:
            if (r["channel"], r["version"]) not in still_used:
                garbage.setdefault(r["channel"], []).append(r["version"])
        for channel, versions in garbage.items():
            yield (
                "DELETE FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = %s "
                "AND channel = %s AND version = ANY(%s)",
                (thread_id, ns, channel, versions),
                False,
            )
    for ns, ids in plan.reparent.items():
        yield (
            "UPDATE checkpoints SET parent_checkpoint_id = NULL "
            "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)",
            (thread_id, ns, ids),
            False,
        )
    return plan.deleted_count


def _drive(steps: _Steps, execute: Callable[[str, Sequence[Any], bool], list[Any]]) -> int:
    try:
        sql, params, fetch = next(steps)
        while True:
            sql, params, fetch = steps.send(execute(sql, params, fetch))
    except StopIteration as stop:
        return int(stop.value)


async def _adrive(
    steps: _Steps, execute: Callable[[str, Sequence[Any], bool], Awaitable[list[Any]]]
) -> int:
    try:
        sql, params, fetch = next(steps)
        while True:
            sql, params, fetch = steps.send(await execute(sql, params, fetch))
    except StopIteration as stop:
        return int(stop.value)


def _postgres_classes() -> tuple[type, type]:
    """(PostgresSaver, AsyncPostgresSaver), or two never-matching classes without the extra."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError:

        class _Missing:
            pass

        return _Missing, _Missing
    return PostgresSaver, AsyncPostgresSaver


def _unsupported(saver: object) -> TypeError:
    return TypeError(
        f"cannot prune checkpoints of {type(saver).__name__}; supported: InMemorySaver, "
        "SqliteSaver, AsyncSqliteSaver, PostgresSaver, AsyncPostgresSaver"
    )


def prune_checkpoints_sync(saver: BaseCheckpointSaver[Any], thread_id: str, keep: int) -> int:
    """Keep only the newest ``keep`` checkpoints of a thread (sync twin of ``prune_checkpoints``).

    Works on ``InMemorySaver``, ``SqliteSaver`` and ``PostgresSaver``.

    Args:
        saver: The checkpointer.
        thread_id: The thread to prune; other threads are not touched.
        keep: How many of the newest checkpoints of each namespace to keep (>= 1).

    Returns:
        The number of checkpoints deleted.

    Raises:
        ValueError: ``keep`` < 1 or an empty ``thread_id``.
        TypeError: An async-only saver (use ``prune_checkpoints``) or an unsupported one.
        NotImplementedError: The thread uses a ``DeltaChannel``.
    """
    _check_keep(thread_id, keep)
    postgres_saver, async_postgres_saver = _postgres_classes()
    if isinstance(saver, InMemorySaver):
        return _prune_memory(saver, thread_id, keep)
    if isinstance(saver, AsyncSqliteSaver | async_postgres_saver):
        raise TypeError(
            f"{type(saver).__name__} is async: use `await prune_checkpoints(saver, ...)`"
        )
    if isinstance(saver, SqliteSaver):
        with saver.cursor(transaction=True) as cur:
            if not saver.conn.in_transaction:
                cur.execute("BEGIN IMMEDIATE")

            def run_sqlite(sql: str, params: Sequence[Any], fetch: bool) -> list[Any]:
                cur.execute(sql, params)
                return cur.fetchall() if fetch else []

            try:
                return _drive(_sqlite_steps(thread_id, keep), run_sqlite)
            except BaseException:
                saver.conn.rollback()
                raise
    if isinstance(saver, postgres_saver):
        from psycopg.rows import dict_row

        pg: Any = saver  # a PostgresSaver (its class is imported lazily, so mypy cannot narrow)
        with pg.lock, _sync_pg_connection(pg.conn) as conn:
            if pg.pipe is not None:
                pg.pipe.sync()
            with conn.transaction(), conn.cursor(row_factory=dict_row) as pg_cur:

                def run_pg(sql: str, params: Sequence[Any], fetch: bool) -> list[Any]:
                    pg_cur.execute(sql, params, prepare=False)
                    return pg_cur.fetchall() if fetch else []

                return _drive(_postgres_steps(thread_id, keep), run_pg)
    raise _unsupported(saver)


@contextmanager
def _sync_pg_connection(conn: Any) -> Iterator[Any]:
    from psycopg_pool import ConnectionPool

    if isinstance(conn, ConnectionPool):
        with conn.connection() as borrowed:
            yield borrowed
    else:
        yield conn


@asynccontextmanager
async def _async_pg_connection(conn: Any) -> AsyncIterator[Any]:
    from psycopg_pool import AsyncConnectionPool

    if isinstance(conn, AsyncConnectionPool):
        async with conn.connection() as borrowed:
            yield borrowed
    else:
        yield conn


async def prune_checkpoints(saver: BaseCheckpointSaver[Any], thread_id: str, keep: int) -> int:
    """Keep only the newest ``keep`` checkpoints of a thread, so storage stays bounded.

    Deletes the older checkpoints of each namespace with their pending writes (and, for
    PostgreSQL, the channel blobs no kept checkpoint references); the oldest kept checkpoint
    loses its parent pointer. The newest checkpoint, and so the thread's current state, is
    untouched. Works on every saver ``open_checkpointer`` and ``open_sync_checkpointer``
    return; sync savers are pruned in a worker thread.

    Args:
        saver: The checkpointer.
        thread_id: The thread to prune; other threads are not touched.
        keep: How many of the newest checkpoints of each namespace to keep (>= 1).

    Returns:
        The number of checkpoints deleted.

    Raises:
        ValueError: ``keep`` < 1 or an empty ``thread_id``.
        TypeError: An unsupported saver.
        NotImplementedError: The thread uses a ``DeltaChannel``.
    """
    _check_keep(thread_id, keep)
    postgres_saver, async_postgres_saver = _postgres_classes()
    if isinstance(saver, InMemorySaver):
        return _prune_memory(saver, thread_id, keep)
    if isinstance(saver, SqliteSaver | postgres_saver):
        return await asyncio.to_thread(prune_checkpoints_sync, saver, thread_id, keep)
    if isinstance(saver, AsyncSqliteSaver):
        await saver.setup()
        async with saver.lock:
            conn = saver.conn
            if not conn.in_transaction:
                await conn.execute("BEGIN IMMEDIATE")

            async def run_sqlite(sql: str, params: Sequence[Any], fetch: bool) -> list[Any]:
                async with conn.execute(sql, params) as cur:
                    return list(await cur.fetchall()) if fetch else []

            try:
                deleted = await _adrive(_sqlite_steps(thread_id, keep), run_sqlite)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
            return deleted
    if isinstance(saver, async_postgres_saver):
        from psycopg.rows import dict_row

        pg: Any = saver  # an AsyncPostgresSaver, imported lazily
        async with pg.lock, _async_pg_connection(pg.conn) as pg_conn:
            if pg.pipe is not None:
                await pg.pipe.sync()
            async with pg_conn.transaction(), pg_conn.cursor(row_factory=dict_row) as pg_cur:

                async def run_pg(sql: str, params: Sequence[Any], fetch: bool) -> list[Any]:
                    await pg_cur.execute(sql, params, prepare=False)
                    return await pg_cur.fetchall() if fetch else []

                return await _adrive(_postgres_steps(thread_id, keep), run_pg)
    raise _unsupported(saver)
