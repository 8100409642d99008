"""Thread registry (owner, title, metadata, turns, tombstones) in memory, SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import builtins
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite

from nodes.errors import ThreadDeletedError
from store.checkpointer import _postgres_pool, _prepare_sqlite_path, parse_store_url

__all__ = [
    "InMemoryThreadRegistry",
    "PostgresThreadRegistry",
    "SqliteThreadRegistry",
    "ThreadExistsError",
    "ThreadRecord",
    "ThreadRegistry",
    "UnknownThreadError",
    "open_thread_registry",
]

TABLE = "steadychat_threads"


class ThreadExistsError(ValueError):
    """The id belongs to a live thread, or to a deleted one (ids are never reused)."""


class UnknownThreadError(LookupError):
    """No thread with this id was ever registered."""


@dataclass(frozen=True, kw_only=True)
class ThreadRecord:
    """One row of the registry. Datetimes are timezone-aware UTC."""

    thread_id: str
    owner: str
    """The tenant / API key id the thread belongs to."""
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    turns: int = 0
    deleted_at: datetime | None = None
    """When the thread was deleted (tombstone); such records are hidden from get and list."""

    @property
    def is_deleted(self) -> bool:
        """Whether the thread carries a tombstone."""
        return self.deleted_at is not None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_id(thread_id: str) -> None:
    if not isinstance(thread_id, str) or not thread_id.strip():
        raise ValueError("thread_id must be a non-empty string")


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not owner.strip():
        raise ValueError("owner must be a non-empty string")


def _check_title(title: str | None) -> None:
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a string or None, not {type(title).__name__}")


def _check_turns(turns: int) -> None:
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
        raise ValueError(f"turns must be a non-negative integer, got {turns!r}")


def _normalise_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round trip: what is stored is exactly what comes back, on every back end."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a mapping, not {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    normalised: dict[str, Any] = json.loads(text)
    return normalised


class ThreadRegistry(ABC):
    """The threads a deployment knows: who owns each, its title, metadata, turns and tombstone.

    All methods are async. The rules (validation, tombstones, timestamps) live here; each back
    end only reads and writes rows inside a transaction that locks the row it reads.

    Args:
        clock: Returns the current time as an aware datetime (tests pass a fake one).
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utcnow
        self._last_stamp: datetime | None = None

    # -- back-end primitives -----------------------------------------------------------------
    @abstractmethod
    async def setup(self) -> None:
        """Create the table and indexes if they do not exist (idempotent)."""

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Any]:
        """A write transaction; yields a handle for ``_read``/``_insert``/``_update``."""

    @abstractmethod
    async def _read(self, tx: Any, thread_id: str) -> ThreadRecord | None:
        """The row (tombstoned or not), locked for the rest of the transaction."""

    @abstractmethod
    async def _insert(self, tx: Any, record: ThreadRecord) -> bool:
        """Insert unless the id exists; False when it did."""

    @abstractmethod
    async def _update(self, tx: Any, record: ThreadRecord) -> None:
        """Overwrite the row of ``record.thread_id``."""

    @abstractmethod
    async def _get(self, thread_id: str) -> ThreadRecord | None:
        """The row (tombstoned or not), outside any transaction."""

    @abstractmethod
    async def _page(
        self, owner: str | None, limit: int, offset: int
    ) -> tuple[builtins.list[ThreadRecord], int]:
        """Live rows newest-updated first (ties: newest created, then id), and their count."""

    @abstractmethod
    async def _idle(self, before: datetime, limit: int) -> builtins.list[str]:
        """Ids of live rows last updated before ``before``, least recently updated first."""

    @abstractmethod
    async def _tombstoned(self, thread_ids: builtins.list[str]) -> set[str]:
        """Which of these ids carry a tombstone, in one read."""

    @abstractmethod
    async def _after(self, thread_id: str | None, limit: int) -> builtins.list[ThreadRecord]:
        """Rows (tombstones included) whose id sorts after ``thread_id``, in id order."""

    # -- the API -----------------------------------------------------------------------------
    def _now(self) -> datetime:
        """The clock in UTC, made strictly increasing so that "newest first" has no ties."""
        now = self._clock().astimezone(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return now

    async def create(
        self,
        thread_id: str,
        owner: str,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ThreadRecord:
        """Register a new thread.

        Args:
            thread_id: Its id (the LangGraph ``thread_id``).
            owner: The tenant / API key id it belongs to.
            title: A human-readable title.
            metadata: JSON-serialisable data kept with it.

        Returns:
            The stored record (``turns`` 0, ``created_at == updated_at``).

        Raises:
            ThreadExistsError: The id belongs to a live thread or to a deleted one.
            ValueError: An empty id or owner, a non-string title or metadata that is not JSON.
        """
        _check_id(thread_id)
        _check_owner(owner)
        _check_title(title)
        meta = _normalise_metadata(metadata)
        now = self._now()
        record = ThreadRecord(
            thread_id=thread_id,
            owner=owner,
            title=title,
            metadata=meta,
            created_at=now,
            updated_at=now,
        )
        async with self._transaction() as tx:
            if await self._insert(tx, record):
                return record
            existing = await self._read(tx, thread_id)
        if existing is not None and existing.is_deleted:
            raise ThreadExistsError(
                f"thread id {thread_id!r} belonged to a deleted thread; ids are not reused"
            )
        raise ThreadExistsError(f"thread {thread_id!r} already exists")

    async def get(self, thread_id: str) -> ThreadRecord | None:
        """The thread's record.

        Args:
            thread_id: Its id.

        Returns:
            The record, or None when absent or deleted.
        """
        _check_id(thread_id)
        record = await self._get(thread_id)
        if record is None or record.is_deleted:
            return None
        return record

    async def list(
        self, owner: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[builtins.list[ThreadRecord], int]:
        """Live threads, newest-updated first.

        Args:
            owner: Only this owner's threads; all owners when None.
            limit: Page size (0 returns no items, only the total).
            offset: Items to skip.

        Returns:
            The page and the total number of matching threads.

        Raises:
            ValueError: A negative limit or offset.
        """
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return await self._page(owner, limit, offset)

    async def idle_since(self, before: datetime, *, limit: int = 100) -> builtins.list[str]:
        """Live threads whose last activity (``updated_at``) is older than ``before``.

        Args:
            before: An aware datetime.
            limit: At most this many ids, least recently updated first.

        Returns:
            Their ids.
        """
        if before.tzinfo is None:
            raise ValueError("before must be timezone-aware")
        return await self._idle(before.astimezone(UTC), limit)

    async def touch(self, thread_id: str, turns: int | None = None) -> ThreadRecord:
        """Record activity: ``updated_at`` becomes now, and ``turns`` when given.

        Raises:
            UnknownThreadError: No such thread.
            ThreadDeletedError: The thread was deleted (a late write).
            ValueError: A negative ``turns``.
        """
        _check_id(thread_id)
        if turns is not None:
            _check_turns(turns)
        async with self._transaction() as tx:
            record = await self._read(tx, thread_id)
            if record is None:
                raise UnknownThreadError(f"thread {thread_id!r} not found")
            if record.is_deleted:
                raise ThreadDeletedError(f"thread {thread_id!r} has been deleted")
            updated = replace(
                record, updated_at=self._now(), turns=record.turns if turns is None else turns
            )
            await self._update(tx, updated)
            return updated

    async def mark_deleted(self, thread_id: str) -> bool:
        """Tombstone the thread: hidden from now on, late writes refused, id never reused.

        The tombstone keeps the id, the owner and the dates; the title and metadata are
        erased.

        An id never registered gets a tombstone too (owner ""), so a thread that only ever had
        checkpoints is also protected from late writes.

        Returns:
            True when a live thread was deleted now; False when it was already deleted or
            unknown.
        """
        _check_id(thread_id)
        async with self._transaction() as tx:
            record = await self._read(tx, thread_id)
            now = self._now()
            if record is None:
                tombstone = ThreadRecord(
                    thread_id=thread_id, owner="", created_at=now, updated_at=now, deleted_at=now
                )
                await self._insert(tx, tombstone)
                return False
            if record.is_deleted:
                return False
            # The tombstone keeps the id and owner only: title and metadata are forgotten.
            tombstone = replace(record, title=None, metadata={}, deleted_at=now, updated_at=now)
            await self._update(tx, tombstone)
            return True

    async def is_deleted(self, thread_id: str) -> bool:
        """Whether the id carries a tombstone (False for ids never registered)."""
        _check_id(thread_id)
        record = await self._get(thread_id)
        return record is not None and record.is_deleted

    async def deleted_among(self, thread_ids: Iterable[str]) -> set[str]:
        """The ids among ``thread_ids`` that carry a tombstone, in one read of the primary key.

        This is what a process running turns asks, a few times a second, to learn that another
        process deleted one of their threads.

        Args:
            thread_ids: Thread ids (duplicates are fine).

        Returns:
            The deleted ones (ids never registered are not).
        """
        ids = sorted(set(thread_ids))
        for thread_id in ids:
            _check_id(thread_id)
        if not ids:
            return set()
        return await self._tombstoned(ids)

    async def read(self, thread_id: str) -> ThreadRecord | None:
        """The thread's record as stored, tombstone included (None for ids never registered)."""
        _check_id(thread_id)
        return await self._get(thread_id)

    async def records(self, *, batch: int = 500) -> AsyncIterator[ThreadRecord]:
        """Every record, tombstones included, in id order (to copy a registry elsewhere).

        Args:
            batch: Rows read per query.

        Yields:
            The records.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        last: str | None = None
        while True:
            page = await self._after(last, batch)
            for record in page:
                yield record
            if len(page) < batch:
                return
            last = page[-1].thread_id

    async def put_record(self, record: ThreadRecord) -> bool:
        """Store a record exactly as given (a copy from another registry), dates included.

        A row of the same id is overwritten. Unlike ``create``, nothing is stamped: the
        record's own dates, turns and tombstone are kept.

        Args:
            record: The record; a tombstone may have the empty owner of an id that was never
                registered.

        Returns:
            False when the stored row was already equal to ``record``.

        Raises:
            ValueError: An empty id, an empty owner on a live record, naive datetimes, a
                non-string title, negative turns or metadata that is not JSON.
        """
        _check_id(record.thread_id)
        if not record.is_deleted:
            _check_owner(record.owner)
        _check_title(record.title)
        _check_turns(record.turns)
        stamps = [record.created_at, record.updated_at, record.deleted_at]
        if any(stamp is not None and stamp.tzinfo is None for stamp in stamps):
            raise ValueError("record datetimes must be timezone-aware")
        record = replace(
            record,
            metadata=_normalise_metadata(record.metadata),
            created_at=record.created_at.astimezone(UTC),
            updated_at=record.updated_at.astimezone(UTC),
            deleted_at=record.deleted_at.astimezone(UTC) if record.deleted_at else None,
        )
        async with self._transaction() as tx:
            existing = await self._read(tx, record.thread_id)
            if existing == record:
                return False
            if existing is None:
                await self._insert(tx, record)
            else:
                await self._update(tx, record)
            return True


# -- in memory --------------------------------------------------------------------------------


class InMemoryThreadRegistry(ThreadRegistry):
    """A registry in a dict: for tests and single-process demos."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(clock=clock)
        self._rows: dict[str, ThreadRecord] = {}
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        """Nothing to create."""

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            yield None

    async def _read(self, tx: Any, thread_id: str) -> ThreadRecord | None:
        return self._rows.get(thread_id)

    async def _insert(self, tx: Any, record: ThreadRecord) -> bool:
        if record.thread_id in self._rows:
            return False
        self._rows[record.thread_id] = record
        return True

    async def _update(self, tx: Any, record: ThreadRecord) -> None:
        self._rows[record.thread_id] = record

    async def _get(self, thread_id: str) -> ThreadRecord | None:
        return self._rows.get(thread_id)

    async def _page(
        self, owner: str | None, limit: int, offset: int
    ) -> tuple[builtins.list[ThreadRecord], int]:
        live = [
            r
            for r in self._rows.values()
            if not r.is_deleted and (owner is None or r.owner == owner)
        ]
        live.sort(key=lambda r: r.thread_id)
        live.sort(key=lambda r: (r.updated_at, r.created_at), reverse=True)
        return live[offset : offset + limit], len(live)

    async def _idle(self, before: datetime, limit: int) -> builtins.list[str]:
        idle = [r for r in self._rows.values() if not r.is_deleted and r.updated_at < before]
        idle.sort(key=lambda r: (r.updated_at, r.thread_id))
        return [r.thread_id for r in idle[:limit]]

    async def _tombstoned(self, thread_ids: builtins.list[str]) -> set[str]:
        return {t for t in thread_ids if (r := self._rows.get(t)) is not None and r.is_deleted}

    async def _after(self, thread_id: str | None, limit: int) -> builtins.list[ThreadRecord]:
        ids = sorted(i for i in self._rows if thread_id is None or i > thread_id)
        return [self._rows[i] for i in ids[:limit]]


# -- SQL back ends ----------------------------------------------------------------------------

_COLUMNS = "thread_id, owner, title, metadata, created_at, updated_at, turns, deleted_at"
_ORDER = "ORDER BY updated_at DESC, created_at DESC, thread_id"


def _live_rows(owner: str | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """The condition of live rows (of one owner when given) and its parameters."""
    if owner is None:
        return "deleted_at IS NULL", ()
    return f"deleted_at IS NULL AND owner = {mark}", (owner,)


class SqliteThreadRegistry(ThreadRegistry):
    """A registry table in a SQLite file (the checkpoints' file or one beside it).

    Timestamps are stored as ISO-8601 UTC text (fixed width, so they sort as text).

    Args:
        conn: An open aiosqlite connection this registry may use on its own.
        clock: See ``ThreadRegistry``.
    """

    def __init__(
        self, conn: aiosqlite.Connection, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(clock=clock)
        self.conn = conn
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        """Create the table and its index if they do not exist."""
        async with self._lock:
            await self.conn.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS {TABLE} (
                    thread_id TEXT PRIMARY KEY,
                    owner TEXT NOT NULL,
                    title TEXT,
                    metadata TEXT NOT NULL DEFAULT '{{}}',
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    turns INTEGER NOT NULL DEFAULT 0,
                    deleted_at TEXT
                );
                CREATE INDEX IF NOT EXISTS {TABLE}_owner_updated
                    ON {TABLE} (owner, updated_at DESC);
                """
            )
            await self.conn.commit()

    @staticmethod
    def _time(value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    @staticmethod
    def _record(row: Any) -> ThreadRecord:
        thread_id, owner, title, metadata, created, updated, turns, deleted = row
        return ThreadRecord(
            thread_id=thread_id,
            owner=owner,
            title=title,
            metadata=json.loads(metadata) if metadata else {},
            created_at=datetime.fromisoformat(created),
            updated_at=datetime.fromisoformat(updated),
            turns=int(turns),
            deleted_at=datetime.fromisoformat(deleted) if deleted else None,
        )

    def _params(self, record: ThreadRecord) -> tuple[Any, ...]:
        return (
            record.thread_id,
            record.owner,
            record.title,
            json.dumps(record.metadata),
            self._time(record.created_at),
            self._time(record.updated_at),
            record.turns,
            self._time(record.deleted_at) if record.deleted_at else None,
        )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            # IMMEDIATE takes the write lock up front: a read-then-write cannot interleave
            # with another process writing the same file.
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.rollback()
                raise
            await self.conn.commit()

    async def _read(self, tx: aiosqlite.Connection, thread_id: str) -> ThreadRecord | None:
        async with tx.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id = ?", (thread_id,)
        ) as cur:
            row = await cur.fetchone()
        return self._record(row) if row else None

    async def _insert(self, tx: aiosqlite.Connection, record: ThreadRecord) -> bool:
        async with tx.execute(
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (thread_id) DO NOTHING",
            self._params(record),
        ) as cur:
            return cur.rowcount == 1

    async def _update(self, tx: aiosqlite.Connection, record: ThreadRecord) -> None:
        thread_id, *rest = self._params(record)
        await tx.execute(
            f"UPDATE {TABLE} SET owner = ?, title = ?, metadata = ?, created_at = ?, "
            "updated_at = ?, turns = ?, deleted_at = ? WHERE thread_id = ?",
            (*rest, thread_id),
        )

    async def _get(self, thread_id: str) -> ThreadRecord | None:
        async with (
            self._lock,
            self.conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id = ?", (thread_id,)
            ) as cur,
        ):
            row = await cur.fetchone()
        return self._record(row) if row else None

    async def _page(
        self, owner: str | None, limit: int, offset: int
    ) -> tuple[builtins.list[ThreadRecord], int]:
        where, params = _live_rows(owner, "?")
        async with self._lock:
            async with self.conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE {where} {_ORDER} LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ) as cur:
                rows = await cur.fetchall()
            async with self.conn.execute(
                f"SELECT COUNT(*) FROM {TABLE} WHERE {where}", params
            ) as cur:
                count_row = await cur.fetchone()
        return [self._record(r) for r in rows], int(count_row[0]) if count_row else 0

    async def _idle(self, before: datetime, limit: int) -> builtins.list[str]:
        async with (
            self._lock,
            self.conn.execute(
                f"SELECT thread_id FROM {TABLE} WHERE deleted_at IS NULL AND updated_at < ? "
                "ORDER BY updated_at, thread_id LIMIT ?",
                (self._time(before), limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def _tombstoned(self, thread_ids: builtins.list[str]) -> set[str]:
        marks = ", ".join("?" for _ in thread_ids)
        async with (
            self._lock,
            self.conn.execute(
                f"SELECT thread_id FROM {TABLE} "
                f"WHERE thread_id IN ({marks}) AND deleted_at IS NOT NULL",
                thread_ids,
            ) as cur,
        ):
            rows = await cur.fetchall()
        return {str(r[0]) for r in rows}

    async def _after(self, thread_id: str | None, limit: int) -> builtins.list[ThreadRecord]:
        async with (
            self._lock,
            self.conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id > ? ORDER BY thread_id LIMIT ?",
                (thread_id or "", limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [self._record(r) for r in rows]


class PostgresThreadRegistry(ThreadRegistry):
    """A registry table in PostgreSQL (the checkpoints' database), for several processes.

    Args:
        pool: A psycopg ``AsyncConnectionPool`` of autocommit connections (the checkpointer's
            pool qualifies).
        clock: See ``ThreadRegistry``.
    """

    def __init__(self, pool: Any, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(clock=clock)
        self.pool = pool

    async def setup(self) -> None:
        """Create the table and its index if they do not exist (safe from several processes)."""
        async with self.pool.connection() as conn, conn.transaction():
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
            await conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {TABLE} (
                    thread_id TEXT PRIMARY KEY,
                    owner TEXT NOT NULL,
                    title TEXT,
                    metadata JSONB NOT NULL DEFAULT '{{}}',
                    created_at TIMESTAMPTZ NOT NULL,
                    updated_at TIMESTAMPTZ NOT NULL,
                    turns INTEGER NOT NULL DEFAULT 0,
                    deleted_at TIMESTAMPTZ
                )
                """
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {TABLE}_owner_updated "
                f"ON {TABLE} (owner, updated_at DESC)"
            )

    @staticmethod
    def _record(row: Mapping[str, Any]) -> ThreadRecord:
        deleted = row["deleted_at"]
        return ThreadRecord(
            thread_id=row["thread_id"],
            owner=row["owner"],
            title=row["title"],
            metadata=dict(row["metadata"] or {}),
            created_at=row["created_at"].astimezone(UTC),
            updated_at=row["updated_at"].astimezone(UTC),
            turns=int(row["turns"]),
            deleted_at=deleted.astimezone(UTC) if deleted is not None else None,
        )

    @staticmethod
    def _params(record: ThreadRecord) -> tuple[Any, ...]:
        from psycopg.types.json import Jsonb

        return (
            record.thread_id,
            record.owner,
            record.title,
            Jsonb(record.metadata),
            record.created_at,
            record.updated_at,
            record.turns,
            record.deleted_at,
        )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        from psycopg.rows import dict_row

        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            yield cur

    async def _read(self, tx: Any, thread_id: str) -> ThreadRecord | None:
        await tx.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id = %s FOR UPDATE", (thread_id,)
        )
        row = await tx.fetchone()
        return self._record(row) if row else None

    async def _insert(self, tx: Any, record: ThreadRecord) -> bool:
        await tx.execute(
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (thread_id) DO NOTHING",
            self._params(record),
        )
        return bool(tx.rowcount == 1)

    async def _update(self, tx: Any, record: ThreadRecord) -> None:
        thread_id, *rest = self._params(record)
        await tx.execute(
            f"UPDATE {TABLE} SET owner = %s, title = %s, metadata = %s, created_at = %s, "
            "updated_at = %s, turns = %s, deleted_at = %s WHERE thread_id = %s",
            (*rest, thread_id),
        )

    async def _get(self, thread_id: str) -> ThreadRecord | None:
        from psycopg.rows import dict_row

        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id = %s", (thread_id,))
            row = await cur.fetchone()
        return self._record(row) if row else None

    async def _page(
        self, owner: str | None, limit: int, offset: int
    ) -> tuple[builtins.list[ThreadRecord], int]:
        from psycopg.rows import dict_row

        where, params = _live_rows(owner, "%s")
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS}, COUNT(*) OVER () AS total FROM {TABLE} "
                f"WHERE {where} {_ORDER} LIMIT %s OFFSET %s",
                (*params, limit, offset),
            )
            rows = await cur.fetchall()
            if rows:
                total = int(rows[0]["total"])
            else:
                await cur.execute(f"SELECT COUNT(*) AS total FROM {TABLE} WHERE {where}", params)
                count = await cur.fetchone()
                total = int(count["total"]) if count else 0
        return [self._record(r) for r in rows], total

    async def _idle(self, before: datetime, limit: int) -> builtins.list[str]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT thread_id FROM {TABLE} WHERE deleted_at IS NULL AND updated_at < %s "
                "ORDER BY updated_at, thread_id LIMIT %s",
                (before, limit),
            )
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def _tombstoned(self, thread_ids: builtins.list[str]) -> set[str]:
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT thread_id FROM {TABLE} "
                "WHERE thread_id = ANY(%s) AND deleted_at IS NOT NULL",
                (thread_ids,),
            )
            rows = await cur.fetchall()
        return {str(r[0]) for r in rows}

    async def _after(self, thread_id: str | None, limit: int) -> builtins.list[ThreadRecord]:
        from psycopg.rows import dict_row

        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            # COLLATE "C": byte order, the order SQLite and Python sort ids in.
            await cur.execute(
                f'SELECT {_COLUMNS} FROM {TABLE} WHERE thread_id COLLATE "C" > %s '
                'ORDER BY thread_id COLLATE "C" LIMIT %s',
                (thread_id or "", limit),
            )
            rows = await cur.fetchall()
        return [self._record(r) for r in rows]


@asynccontextmanager
async def open_thread_registry(
    url: str, *, clock: Callable[[], datetime] | None = None, max_connections: int = 4
) -> AsyncIterator[ThreadRegistry]:
    """Open the registry that goes with the checkpointer of the same URL; close it at exit.

    ``memory`` gives an ``InMemoryThreadRegistry``; a SQLite path a ``SqliteThreadRegistry``
    in the same file (its own connection, WAL mode); a PostgreSQL URL a
    ``PostgresThreadRegistry`` in the same database over its own small pool. The table is
    created if needed.

    Args:
        url: See ``store.checkpointer.parse_store_url``.
        clock: See ``ThreadRegistry``.
        max_connections: Upper bound of the PostgreSQL pool.

    Yields:
        The ready registry.

    Raises:
        ValueError: The URL has an unsupported scheme.
    """
    target = parse_store_url(url)
    registry: ThreadRegistry
    if target.kind == "memory":
        registry = InMemoryThreadRegistry(clock=clock)
        yield registry
        return
    if target.kind == "sqlite":
        path = _prepare_sqlite_path(target.location)
        async with aiosqlite.connect(path) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA secure_delete = ON")
            registry = SqliteThreadRegistry(conn, clock=clock)
            await registry.setup()
            yield registry
        return
    async with _postgres_pool(
        target.location, max_connections=max_connections, connect_timeout=10.0, autocommit=True
    ) as pool:
        registry = PostgresThreadRegistry(pool, clock=clock)
        await registry.setup()
        yield registry
