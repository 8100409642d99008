"""One turn at a time per thread: in one process (asyncio) or across processes (PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = [
    "LocalThreadLocks",
    "PostgresThreadLocks",
    "ThreadBusy",
    "advisory_key",
    "open_postgres_locks",
]


class ThreadBusy(RuntimeError):
    """The thread is held by another turn and the caller asked not to wait."""


class LocalThreadLocks:
    """One asyncio lock per thread, dropped when nobody holds or waits for it.

    The check and the registration in ``hold`` happen with no await between them, so on the
    event loop they are atomic: two requests arriving together cannot both see a thread free.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def busy(self, thread_id: str) -> bool:
        """Whether a turn of this process holds or waits for the thread."""
        return thread_id in self._locks

    @property
    def waiting(self) -> int:
        """Turns queued behind another turn of the same thread."""
        return sum(max(0, users - 1) for _, users in self._locks.values())

    def _enter(self, thread_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(thread_id, (asyncio.Lock(), 0))
        self._locks[thread_id] = (lock, users + 1)
        return lock

    def _leave(self, thread_id: str) -> None:
        lock, users = self._locks[thread_id]
        if users <= 1:
            del self._locks[thread_id]
        else:
            self._locks[thread_id] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, *, wait: bool = True) -> AsyncIterator[None]:
        """Hold the thread's lock for the body of the ``async with``.

        Args:
            thread_id: The thread.
            wait: Queue behind a running turn (True) or raise ThreadBusy at once (False).

        Raises:
            ThreadBusy: ``wait`` is False and the thread is held or waited for.
        """
        if not wait and self.busy(thread_id):
            raise ThreadBusy(thread_id)
        lock = self._enter(thread_id)  # no await since the check: atomic on the loop
        try:
            async with lock:
                yield
        finally:
            self._leave(thread_id)


_KEY_PREFIX = b"steadychat:thread:"


def advisory_key(thread_id: str) -> int:
    """The signed 64-bit PostgreSQL advisory lock key of a thread.

    A hash of the id with a prefix of ours, so that other users of advisory locks in the same
    database are unlikely to collide; two threads sharing a key would only take turns.
    """
    digest = hashlib.blake2b(_KEY_PREFIX + thread_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresThreadLocks:
    """A PostgreSQL session advisory lock per thread, for API processes sharing a database.

    A turn holds ``pg_advisory_lock(key)`` on a connection of its own for as long as it runs
    (``pg_try_advisory_lock`` when it must not wait), and unlocks it at the end. If a process
    dies, its connections close and PostgreSQL releases their locks: a crashed worker never
    leaves a thread locked. Turns of one process first queue on a local lock, so a process
    uses at most one connection per thread, and the busy check of its own turns costs no
    round trip.

    Args:
        pool: A psycopg ``AsyncConnectionPool`` of autocommit connections reserved for locks
            (a held lock keeps its connection for the whole turn).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._local = LocalThreadLocks()
        self._blocked = 0

    def busy(self, thread_id: str) -> bool:
        """Whether a turn of this process holds or waits for the thread (no query)."""
        return self._local.busy(thread_id)

    @property
    def waiting(self) -> int:
        """Turns of this process queued behind another turn of the same thread."""
        return self._local.waiting + self._blocked

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str, *, wait: bool = True) -> AsyncIterator[None]:
        """Hold the thread across every process on the database for the body.

        Args:
            thread_id: The thread.
            wait: Queue behind a running turn (True) or raise ThreadBusy at once (False).

        Raises:
            ThreadBusy: ``wait`` is False and a turn of any process holds the thread.
        """
        key = advisory_key(thread_id)
        async with self._local.hold(thread_id, wait=wait), self.pool.connection() as conn:
            if wait:
                self._blocked += 1
                try:
                    await _locked(conn, "SELECT pg_advisory_lock(%s)", key)
                finally:
                    self._blocked -= 1
            else:
                cur = await _locked(conn, "SELECT pg_try_advisory_lock(%s)", key)
                row = await cur.fetchone()
                if not row or not _first(row):
                    raise ThreadBusy(thread_id)
            try:
                yield
            finally:
                # Shielded: a cancelled turn must still give the thread back. If the unlock
                # itself fails, closing the connection releases the lock on the server.
                with anyio_shield():
                    try:
                        await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    except Exception:
                        await conn.close()


async def _locked(conn: Any, sql: str, key: int) -> Any:
    """Run a lock statement; if the caller is cancelled meanwhile, drop the connection.

    A cancelled ``pg_advisory_lock`` may still be granted on the server after the client gave
    up; closing the connection is what makes sure no lock is left behind.
    """
    try:
        return await conn.execute(sql, (key,))
    except BaseException:
        with anyio_shield():
            await conn.close()
        raise


def _first(row: Any) -> Any:
    return row[next(iter(row))] if isinstance(row, dict) else row[0]


def anyio_shield() -> Any:
    """A cancel scope that lets cleanup awaits finish inside a cancelled task."""
    import anyio

    return anyio.CancelScope(shield=True)


@contextlib.asynccontextmanager
async def open_postgres_locks(
    url: str, *, max_connections: int = 20, connect_timeout: float = 10.0
) -> AsyncIterator[PostgresThreadLocks]:
    """Open the per-thread advisory locks of a PostgreSQL database; close their pool at exit.

    Args:
        url: A ``postgresql://`` URL (the checkpointer's database).
        max_connections: Threads this process can hold or wait for at once; one more waits
            for a connection to come free.
        connect_timeout: Seconds to wait for the first connection.

    Yields:
        The locks.
    """
    from store.checkpointer import _import_postgres

    psycopg_pool = _import_postgres()

    async def unlock_all(conn: Any) -> None:
        # A connection goes back to the pool holding no lock, whatever happened to its turn.
        await conn.execute("SELECT pg_advisory_unlock_all()")

    pool = psycopg_pool.AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_connections,
        kwargs={"autocommit": True},
        reset=unlock_all,
        # A turn waiting for a thread may also wait for a connection: as long as it takes.
        timeout=24 * 3600.0,
        open=False,
    )
    await pool.open(wait=True, timeout=connect_timeout)
    try:
        yield PostgresThreadLocks(pool)
    finally:
        await pool.close()
