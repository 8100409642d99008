"""Idempotency-Key results kept in PostgreSQL, so that every API process on it sees them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["TABLE", "KeyState", "PostgresIdempotencyStore", "open_idempotency_store"]

TABLE = "steadychat_idempotency"


@dataclass(frozen=True)
class KeyState:
    """What ``claim`` found for a key."""

    status: Literal["run", "done", "mismatch"]
    """``run``: this caller owns the key now and runs the request; ``done``: a result is
    remembered (``result``); ``mismatch``: the key was used with another body."""
    result: Any = None


class PostgresIdempotencyStore:
    """One row per (owner, scope, key): the body's fingerprint, then the JSON result.

    A request that claims a key inserts a ``running`` row; success stores its result, failure
    deletes the row so that a retry runs again. A duplicate that arrives while the first is
    running (on any process) polls until the row is done or gone. A ``running`` row older
    than ``stale_s`` belongs to a process that died mid-request and is taken over.

    Args:
        pool: A psycopg ``AsyncConnectionPool`` of autocommit connections.
        ttl_s: Seconds a result is remembered.
        stale_s: Seconds after which a still-running claim is considered abandoned.
        poll_s: Seconds between looks at a key another process is running.
    """

    def __init__(
        self, pool: Any, *, ttl_s: float, stale_s: float = 900.0, poll_s: float = 0.1
    ) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self.poll_s = poll_s
        self._next_sweep = 0.0

    async def setup(self) -> None:
        """Create the table if it does not exist (safe from several processes at once)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
            await conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {TABLE} (
                    owner TEXT NOT NULL,
                    scope TEXT NOT NULL,
                    key TEXT NOT NULL,
                    fingerprint TEXT NOT NULL,
                    thread_id TEXT,
                    result JSONB,
                    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    expires_at TIMESTAMPTZ NOT NULL,
                    PRIMARY KEY (owner, scope, key)
                )
                """
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_at)"
            )

    async def claim(
        self,
        slot: tuple[str, str, str],
        fingerprint: str,
        *,
        thread: str | None = None,
        timeout_s: float | None = None,
    ) -> KeyState:
        """Take the key, or find its result, waiting while another process runs it.

        Args:
            slot: (owner, scope, key).
            fingerprint: The request body's hash.
            thread: The thread the request belongs to (``forget_thread`` deletes its keys).
            timeout_s: Longest wait for a running duplicate (``stale_s`` when None).

        Returns:
            The key's state for this caller.
        """
        await self._sweep()
        deadline = time.monotonic() + (self.stale_s if timeout_s is None else timeout_s)
        while True:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    f"""
                    INSERT INTO {TABLE} AS t
                        (owner, scope, key, fingerprint, thread_id, expires_at)
                    VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))
                    ON CONFLICT (owner, scope, key) DO UPDATE
                        SET fingerprint = EXCLUDED.fingerprint, result = NULL,
                            thread_id = EXCLUDED.thread_id,
                            claimed_at = now(), expires_at = EXCLUDED.expires_at
                        WHERE t.expires_at < now()
                           OR (t.result IS NULL
                               AND t.claimed_at < now() - make_interval(secs => %s))
                    RETURNING 1
                    """,
                    (*slot, fingerprint, thread, self.ttl_s, self.stale_s),
                )
                if await cur.fetchone():
                    return KeyState("run")
                cur = await conn.execute(
                    f"SELECT fingerprint, result FROM {TABLE} "
                    "WHERE owner = %s AND scope = %s AND key = %s",
                    slot,
                )
                row = await cur.fetchone()
            if row is not None:
                found, result = _pair(row)
                if found != fingerprint:
                    return KeyState("mismatch")
                if result is not None:
                    return KeyState("done", result)
            # Running elsewhere (or just released): look again shortly.
            if time.monotonic() >= deadline:
                return KeyState("run")
            await asyncio.sleep(self.poll_s)

    async def finish(self, slot: tuple[str, str, str], result: Any) -> None:
        """Store the result of a claimed key (JSON-able)."""
        from psycopg.types.json import Jsonb

        async with self.pool.connection() as conn:
            await conn.execute(
                f"UPDATE {TABLE} SET result = %s, expires_at = now() + make_interval(secs => %s) "
                "WHERE owner = %s AND scope = %s AND key = %s",
                (Jsonb(result), self.ttl_s, *slot),
            )

    async def release(self, slot: tuple[str, str, str]) -> None:
        """Forget a claimed key whose request failed (a retry runs again)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                f"DELETE FROM {TABLE} WHERE owner = %s AND scope = %s AND key = %s "
                "AND result IS NULL",
                slot,
            )

    async def forget_thread(self, owner: str, thread_id: str) -> None:
        """Delete the keys of the owner's thread (their results hold its text)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                f"DELETE FROM {TABLE} WHERE owner = %s AND thread_id = %s", (owner, thread_id)
            )

    async def count(self) -> int:
        """Keys remembered now (expired ones included until swept)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {TABLE}")
            row = await cur.fetchone()
        return int(_pair(row)[0]) if row else 0

    async def _sweep(self) -> None:
        """Delete expired keys, at most once a minute per process."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        async with self.pool.connection() as conn:
            await conn.execute(f"DELETE FROM {TABLE} WHERE expires_at < now()")


def _pair(row: Any) -> tuple[Any, Any]:
    values = list(row.values()) if isinstance(row, dict) else list(row)
    return values[0], values[1] if len(values) > 1 else None


@asynccontextmanager
async def open_idempotency_store(
    url: str, *, ttl_s: float = 24 * 3600.0, max_connections: int = 4
) -> AsyncIterator[PostgresIdempotencyStore]:
    """Open the shared Idempotency-Key table of a PostgreSQL database (created if needed).

    Args:
        url: A ``postgresql://`` URL (the checkpointer's database).
        ttl_s: Seconds a result is remembered.
        max_connections: Upper bound of its pool.

    Yields:
        The ready store.
    """
    from store.checkpointer import _postgres_pool

    async with _postgres_pool(
        url, max_connections=max_connections, connect_timeout=10.0, autocommit=True
    ) as pool:
        keys = PostgresIdempotencyStore(pool, ttl_s=ttl_s)
        await keys.setup()
        yield keys
