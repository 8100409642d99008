"""Open a LangGraph checkpointer from a URL, and prune a thread's old checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
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
    "forget_on_disk",
    "open_checkpointer",
    "open_sync_checkpointer",
    "parse_store_url",
    "prune_checkpoints",
]

ACCEPTED_URLS = (
    '"memory", "sqlite:///PATH" (or a bare file path) or "postgresql://USER@HOST:PORT/DB"'
)
_POSTGRES_HINT = "PostgreSQL support needs the postgres extra: pip install 'steadychat[postgres]'"


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


@asynccontextmanager
async def _postgres_pool(
    url: str, *, max_connections: int, connect_timeout: float, **kwargs: Any
) -> AsyncIterator[Any]:
    """An open psycopg ``AsyncConnectionPool`` whose connections get ``kwargs``; closed at exit."""
    psycopg_pool = _import_postgres()
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=max_connections, kwargs=kwargs, open=False
    )
    await pool.open(wait=True, timeout=connect_timeout)
    try:
        yield pool
    finally:
        await pool.close()


_TRY_SETUP_LOCK = "SELECT pg_try_advisory_lock(hashtext('steadychat:setup')) AS locked"
_SETUP_UNLOCK = "SELECT pg_advisory_unlock(hashtext('steadychat:setup'))"


def _first(row: Any) -> Any:
    """The first column of a row (a dict row or a tuple)."""
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


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
            # Deleted rows are overwritten with zeros, not only unlinked (see forget_on_disk).
            await conn.execute("PRAGMA secure_delete = ON")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()  # runs PRAGMA journal_mode=WAL and CREATE TABLE IF NOT EXISTS
            yield saver
        return
    async with _postgres_pool(
        target.location,
        max_connections=max_connections,
        connect_timeout=connect_timeout,
        **_postgres_connection_kwargs(),
    ) as pool:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        pg_saver = AsyncPostgresSaver(conn=pool)
        # The saver's migrations race when several workers start at once on a fresh
        # database (duplicate migration rows): one setup at a time, across processes.
        async with pool.connection() as conn:
            # Polled, not a blocking pg_advisory_lock: a statement waiting on the server
            # would hold a snapshot that the saver's CREATE INDEX CONCURRENTLY waits for.
            while True:
                if _first(await (await conn.execute(_TRY_SETUP_LOCK)).fetchone()):
                    break
                await asyncio.sleep(0.1)
            try:
                await pg_saver.setup()
            finally:
                await conn.execute(_SETUP_UNLOCK)
        yield pg_saver


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
        conn.execute("PRAGMA secure_delete = ON")
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
        with pool.connection() as conn:  # one setup at a time, as in open_checkpointer
            while not _first(conn.execute(_TRY_SETUP_LOCK).fetchone()):
                time.sleep(0.1)
            try:
                pg_saver.setup()
            finally:
                conn.execute(_SETUP_UNLOCK)
        yield pg_saver


# --- pruning -------------------------------------------------------------------------------

# The thread's checkpoints older than the newest {keep} of their namespace. Checkpoint ids are
# time-ordered (uuid6), so the lexically greatest is the newest.
_OLD = (
    "SELECT checkpoint_ns, checkpoint_id FROM (SELECT checkpoint_ns, checkpoint_id, "
    "row_number() OVER (PARTITION BY checkpoint_ns ORDER BY checkpoint_id DESC) AS age "
    "FROM checkpoints WHERE thread_id = {thread}) AS ranked WHERE age > {keep}"
)


def _prune_statements(writes: str, thread: str, keep: str) -> list[str]:
    """The old checkpoints' writes, then their children's parent pointer, then themselves."""
    old = _OLD.format(thread=thread, keep=keep)
    rows = f"thread_id = {thread} AND (checkpoint_ns, checkpoint_id)"
    return [
        f"DELETE FROM {writes} WHERE {rows} IN ({old})",
        f"UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE {rows} NOT IN ({old}) "
        f"AND (checkpoint_ns, parent_checkpoint_id) IN ({old})",
        f"DELETE FROM checkpoints WHERE {rows} IN ({old})",
    ]


_SQLITE_PRUNE = _prune_statements("writes", ":thread", ":keep")
# PostgreSQL keeps channel values apart, one blob per version, shared by every checkpoint
# that saw that version: a blob goes when old checkpoints use it and no kept one does.
_PG_OLD = _OLD.format(thread="%(thread)s", keep="%(keep)s")
_PG_VERSIONS = (
    "SELECT c.checkpoint_ns, v.key, v.value FROM checkpoints AS c, "
    "jsonb_each_text(c.checkpoint -> 'channel_versions') AS v "
    "WHERE c.thread_id = %(thread)s AND (c.checkpoint_ns, c.checkpoint_id) {op} ({old})"
)
_POSTGRES_PRUNE = [
    "DELETE FROM checkpoint_blobs WHERE thread_id = %(thread)s "
    "AND (checkpoint_ns, channel, version) IN ("
    f"{_PG_VERSIONS.format(op='IN', old=_PG_OLD)} EXCEPT "
    f"{_PG_VERSIONS.format(op='NOT IN', old=_PG_OLD)})",
    *_prune_statements("checkpoint_writes", "%(thread)s", "%(keep)s"),
]


def _prune_memory(saver: InMemorySaver, thread_id: str, keep: int) -> int:
    deleted = 0
    for ns, checkpoints in saver.storage.get(thread_id, {}).items():
        old = set(sorted(checkpoints, reverse=True)[keep:])
        if not old:
            continue
        freed: set[tuple[str, Any]] = set()
        for checkpoint_id in old:
            checkpoint, _, _ = checkpoints.pop(checkpoint_id)
            freed.update(saver.serde.loads_typed(checkpoint)["channel_versions"].items())
            saver.writes.pop((thread_id, ns, checkpoint_id), None)
        for checkpoint_id, (checkpoint, metadata, parent_id) in checkpoints.items():
            freed.difference_update(saver.serde.loads_typed(checkpoint)["channel_versions"].items())
            if parent_id in old:
                checkpoints[checkpoint_id] = (checkpoint, metadata, None)
        for channel, version in freed:
            saver.blobs.pop((thread_id, ns, channel, version), None)
        deleted += len(old)
    return deleted


def _is_async_postgres(saver: object) -> bool:
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    except ImportError:
        return False
    return isinstance(saver, AsyncPostgresSaver)


async def prune_checkpoints(saver: BaseCheckpointSaver[Any], thread_id: str, keep: int) -> int:
    """Keep only the newest ``keep`` checkpoints of a thread, so storage stays bounded.

    Deletes the older checkpoints of each namespace with their pending writes (and, on
    PostgreSQL, the channel blobs only they used), in one transaction; a kept checkpoint whose
    parent is deleted loses its parent pointer. The newest checkpoint, and so the thread's
    current state, is untouched, and so are other threads.

    Args:
        saver: A checkpointer ``open_checkpointer`` returns (``InMemorySaver``,
            ``AsyncSqliteSaver`` or ``AsyncPostgresSaver``).
        thread_id: The thread to prune.
        keep: How many of the newest checkpoints of each namespace to keep (>= 1).

    Returns:
        The number of checkpoints deleted.

    Raises:
        ValueError: ``keep`` < 1 or an empty ``thread_id``.
        TypeError: Another kind of saver.
    """
    if not isinstance(thread_id, str) or not thread_id:
        raise ValueError("thread_id must be a non-empty string")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    params = {"thread": thread_id, "keep": keep}
    if isinstance(saver, InMemorySaver):
        return _prune_memory(saver, thread_id, keep)
    if isinstance(saver, AsyncSqliteSaver):
        async with saver.lock, saver.conn.cursor() as cur:
            try:
                for sql in _SQLITE_PRUNE:
                    await cur.execute(sql, params)
                await saver.conn.commit()
            except BaseException:
                await saver.conn.rollback()
                raise
            return cur.rowcount
    if _is_async_postgres(saver):
        pg: Any = saver  # imported lazily, so mypy cannot narrow it
        # The saver's own cursor: its lock, and a connection from its pool.
        async with pg._cursor() as pg_cur, pg_cur.connection.transaction():
            # One snapshot for every statement: what a run saves meanwhile is left alone.
            await pg_cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for sql in _POSTGRES_PRUNE:
                await pg_cur.execute(sql, params)
            return int(pg_cur.rowcount)
    raise TypeError(
        f"cannot prune checkpoints of {type(saver).__name__}; supported: InMemorySaver, "
        "AsyncSqliteSaver, AsyncPostgresSaver"
    )


async def forget_on_disk(saver: BaseCheckpointSaver[Any]) -> bool:
    """Make what was just deleted from a SQLite checkpointer unreadable in its files.

    The saver's connection has secure deletion on, so deleted rows are zeroed in the pages
    that held them; but in WAL mode the pages as they were before the delete stay in the
    ``-wal`` file until it is checkpointed. This checkpoints it and truncates it to zero
    bytes (retried while another connection reads or writes; the thread registry shares the
    file). Other savers keep nothing on disk of their own (memory) or delete rows
    (PostgreSQL): a no-op.

    Args:
        saver: A checkpointer ``open_checkpointer`` returned.

    Returns:
        False when the write-ahead log stayed in use and could not be truncated.
    """
    if not isinstance(saver, AsyncSqliteSaver):
        return True
    for _ in range(100):
        async with saver.lock, saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            row = await cur.fetchone()
        if row is None or int(row[0]) == 0:
            return True
        await asyncio.sleep(0.05)
    return False
