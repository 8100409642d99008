"""Moving an embedded deployment (SQLite checkpoints, local Chroma) to PostgreSQL + a Chroma server.

Checkpoints go through LangGraph's own savers (``alist`` from the SQLite saver, ``aput`` and
``aput_writes`` into the PostgreSQL one), so every checkpoint of a thread's history arrives
with its pending writes, in the target's own format. Registry records, tombstones included,
are copied as they are; Chroma records with their stored embeddings (nothing is embedded
again). Every write is an upsert, so a run that stopped half-way is resumed by running it
again, and a second run over a complete copy changes nothing.

A run has three passes: a plan (read both sides, find what is new, resumed, unchanged or in
conflict; nothing is written when something conflicts), the copy, and a verification that reads
the target again and compares it with the source.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Where
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from store.checkpointer import open_checkpointer, parse_store_url
from store.scrub import CHROMA_FILE
from store.threads import TABLE as REGISTRY_TABLE
from store.threads import SqliteThreadRegistry, ThreadRecord, ThreadRegistry, open_thread_registry
from store.vector_memory import (
    JOURNAL_SUFFIX,
    TOMBSTONES_SUFFIX,
    http_client,
    journal_deletion,
    local_client,
)

__all__ = [
    "CHECKPOINTS_FILE",
    "CHROMA_FOLDER",
    "ConflictError",
    "MigrationError",
    "MigrationReport",
    "Source",
    "SourceError",
    "TargetError",
    "VerificationError",
    "migrate",
    "redact_url",
]

CHECKPOINTS_FILE = "checkpoints.sqlite"
"""The SQLite file of an embedded deployment, in its data dir (checkpoints and registry)."""
CHROMA_FOLDER = "chroma"
"""The local Chroma store of an embedded deployment, in its data dir."""

Progress = Callable[[str], None]


class MigrationError(RuntimeError):
    """A migration that cannot go on; the message is one line for the user."""


class SourceError(MigrationError):
    """The source is missing, is not an embedded deployment, or is in use."""


class TargetError(MigrationError):
    """The target cannot be reached or is not a PostgreSQL database and a Chroma server."""


class ConflictError(MigrationError):
    """The target already holds threads or records whose content differs from the source's.

    Attributes:
        conflicts: One line per thread or collection in conflict.
    """

    def __init__(self, message: str, conflicts: Sequence[str]) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts)


class VerificationError(MigrationError):
    """After the copy, the target does not hold what the source holds."""


@dataclass(frozen=True)
class Source:
    """Where an embedded deployment keeps its data."""

    checkpoints: Path
    """The SQLite file of checkpoints and the thread registry."""
    chroma: Path
    """The folder of the local Chroma store."""

    @classmethod
    def of_data_dir(
        cls, data_dir: Path, *, checkpoints: Path | None = None, chroma: Path | None = None
    ) -> Source:
        """The files of a data dir (``checkpoints.sqlite`` and ``chroma/`` unless given)."""
        return cls(
            checkpoints=checkpoints or data_dir / CHECKPOINTS_FILE,
            chroma=chroma or data_dir / CHROMA_FOLDER,
        )


@dataclass
class MigrationReport:
    """What a run found and did. Counts are of the source unless named otherwise."""

    dry_run: bool = False
    threads: int = 0
    """Threads of the source: registered (live or deleted) or only checkpointed."""
    deleted_threads: int = 0
    """Tombstones among them (copied as tombstones, with nothing else)."""
    threads_copied: int = 0
    threads_unchanged: int = 0
    threads_overwritten: int = 0
    checkpoints: int = 0
    """Checkpoints of the live threads (every one of each history)."""
    pending_writes: int = 0
    vectors: dict[str, int] = field(default_factory=dict)
    """Records per Chroma collection that belong in the target."""
    vectors_copied: int = 0
    vectors_unchanged: int = 0
    vectors_removed: int = 0
    """Target records of overwritten threads that the source does not have."""
    vectors_left_behind: int = 0
    """Records of deleted threads found in the source and not copied."""
    embedder: str | None = None
    """The embedder that made the vectors (from the memory collection's metadata)."""
    target_checked: list[str] = field(default_factory=list)
    """A dry run's target parts that answered ("PostgreSQL", "Chroma")."""
    verified: bool = False

    def summary(self) -> list[str]:
        """The final count summary, a few lines."""
        live = self.threads - self.deleted_threads
        vectors = sum(self.vectors.values())
        per_collection = ", ".join(f"{name} {n}" for name, n in sorted(self.vectors.items()))
        lines = [
            f"threads: {self.threads} ({live} live, {self.deleted_threads} deleted)",
            f"checkpoints: {self.checkpoints} (pending writes: {self.pending_writes})",
            f"vectors: {vectors}" + (f" ({per_collection})" if per_collection else ""),
        ]
        if self.dry_run:
            if self.target_checked:
                lines.append(f"target: {' and '.join(self.target_checked)} answer")
            lines.append("dry run: nothing was written")
            return lines
        lines.append(
            f"copied: {self.threads_copied} thread(s), {self.vectors_copied} vector(s); "
            f"unchanged: {self.threads_unchanged} thread(s), {self.vectors_unchanged} vector(s); "
            f"overwritten: {self.threads_overwritten} thread(s)"
            + (f", {self.vectors_removed} vector(s) removed" if self.vectors_removed else "")
        )
        if self.vectors_left_behind:
            lines.append(f"left behind: {self.vectors_left_behind} vector(s) of deleted threads")
        if self.embedder:
            lines.append(
                f"vectors made by the embedder {self.embedder!r}: every worker must use the "
                "same one (STEADYCHAT_EMBEDDER)"
            )
        if self.verified:
            lines.append("verified: the target holds every thread, checkpoint and vector")
        return lines


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- the source --------------------------------------------------------------------------------


@dataclass
class _SourceStore:
    saver: AsyncSqliteSaver
    registry: SqliteThreadRegistry | None
    chroma: ClientAPI
    checkpointed: list[str]
    """Ids of the threads that have checkpoints."""


@asynccontextmanager
async def _open_source(source: Source) -> AsyncIterator[_SourceStore]:
    """Open the source for reading, holding its checkpoints file for the whole run.

    The file is locked exclusively: a running server holds it open (each of its connections
    keeps a shared lock in WAL mode), so taking the lock fails while one runs, and no server
    can start on it until the migration ends.
    """
    path = source.checkpoints
    if not path.is_file():
        raise SourceError(f"no checkpoints file at {path} (give the data dir with --from)")
    async with aiosqlite.connect(str(path), timeout=0.0) as conn:
        try:
            await conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            await conn.execute("BEGIN EXCLUSIVE")
            async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
                tables = {str(row[0]) for row in await cur.fetchall()}
            await conn.commit()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise SourceError(
                    f"{path} is in use by another process: stop the steadychat server (or "
                    "any other program) using this data dir first"
                ) from None
            raise SourceError(f"cannot read {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"{path} is not a SQLite database ({exc})") from None
        if not {"checkpoints", "writes"} <= tables:
            raise SourceError(f"{path} holds no LangGraph checkpoints (not a steadychat data dir)")
        if not (source.chroma / CHROMA_FILE).is_file():
            raise SourceError(
                f"no Chroma store at {source.chroma} (give its folder with --from-chroma-path)"
            )
        registry = SqliteThreadRegistry(conn) if REGISTRY_TABLE in tables else None
        async with conn.execute("SELECT DISTINCT thread_id FROM checkpoints") as cur:
            checkpointed = sorted(str(row[0]) for row in await cur.fetchall())
        try:
            chroma = await asyncio.to_thread(local_client, source.chroma)
        except Exception as exc:
            raise SourceError(f"cannot open the Chroma store at {source.chroma}: {exc}") from None
        yield _SourceStore(
            saver=AsyncSqliteSaver(conn),
            registry=registry,
            chroma=chroma,
            checkpointed=checkpointed,
        )


# -- the target --------------------------------------------------------------------------------


@dataclass
class _TargetStore:
    saver: BaseCheckpointSaver[Any]
    registry: ThreadRegistry
    chroma: ClientAPI


def _check_target_urls(checkpointer_url: str | None, chroma_url: str | None) -> None:
    if checkpointer_url is not None:
        try:
            kind = parse_store_url(checkpointer_url).kind
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        if kind != "postgres":
            raise TargetError(
                f"the target checkpointer must be a postgresql:// URL, got "
                f"{redact_url(checkpointer_url)!r}"
            )
    if chroma_url is not None:
        parts = urlsplit(chroma_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetError(
                f"the target Chroma URL must look like http://host:port, got {chroma_url!r}"
            )


async def _reach_postgres(url: str, wait_s: float) -> None:
    try:
        import psycopg
    except ImportError as exc:
        raise TargetError(
            f"PostgreSQL support needs the postgres extra: pip install 'steadychat[postgres]' "
            f"({exc})"
        ) from None
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(wait_s)))
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TargetError(f"cannot reach PostgreSQL at {redact_url(url)}: {reason}") from None
    await conn.close()


async def _reach_chroma(url: str) -> ClientAPI:
    try:
        return await asyncio.to_thread(http_client, url)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TargetError(f"cannot reach the Chroma server at {url}: {reason}") from None


@asynccontextmanager
async def _open_target(
    checkpointer_url: str, chroma_url: str, wait_s: float
) -> AsyncIterator[_TargetStore]:
    await _reach_postgres(checkpointer_url, wait_s)
    chroma = await _reach_chroma(chroma_url)
    # The tables are created if needed, as the workers' first start does.
    async with (
        open_checkpointer(checkpointer_url, connect_timeout=wait_s) as saver,
        open_thread_registry(checkpointer_url) as registry,
    ):
        yield _TargetStore(saver=saver, registry=registry, chroma=chroma)


# -- threads -----------------------------------------------------------------------------------


ThreadAction = Literal["copy", "unchanged", "overwrite"]


@dataclass
class _ThreadPlan:
    thread_id: str
    action: ThreadAction
    record: ThreadRecord | None
    checkpoints: int
    writes: int

    @property
    def deleted(self) -> bool:
        return self.record is not None and self.record.is_deleted


def _config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id}}


async def _history(saver: BaseCheckpointSaver[Any], thread_id: str) -> list[CheckpointTuple]:
    """Every checkpoint of the thread (all namespaces), newest first."""
    return [t async for t in saver.alist(_config(thread_id))]


def _key(t: CheckpointTuple) -> tuple[str, str]:
    conf = t.config["configurable"]
    return str(conf.get("checkpoint_ns", "")), str(conf["checkpoint_id"])


def _dumps(serde: Any, value: Any) -> tuple[str, bytes]:
    kind, data = serde.dumps_typed(value)
    return str(kind), bytes(data)


def _checkpoint_print(t: CheckpointTuple, serde: Any) -> tuple[Any, ...]:
    """What must be equal for two checkpoints to be the same (writes apart)."""
    cp = t.checkpoint
    values = tuple(sorted((k, _dumps(serde, v)) for k, v in cp["channel_values"].items()))
    versions = tuple(sorted((k, str(v)) for k, v in cp["channel_versions"].items()))
    seen = json.dumps(cp.get("versions_seen", {}), sort_keys=True, default=str)
    metadata = dict(t.metadata or {})
    metadata.pop("writes", None)  # never stored by the savers
    parent = t.parent_config["configurable"].get("checkpoint_id") if t.parent_config else None
    return (
        cp["id"],
        cp.get("ts"),
        parent,
        values,
        versions,
        seen,
        json.dumps(metadata, sort_keys=True, default=str),
    )


def _writes_print(t: CheckpointTuple, serde: Any) -> set[tuple[str, str, tuple[str, bytes]]]:
    return {(task, channel, _dumps(serde, v)) for task, channel, v in t.pending_writes or []}


def _compare_thread(
    record: ThreadRecord | None,
    source: list[CheckpointTuple],
    target_record: ThreadRecord | None,
    target: list[CheckpointTuple],
    serde: Any,
) -> tuple[Literal["new", "resume", "unchanged", "conflict"], str]:
    """How the target's copy of a thread relates to the source's, and why when it conflicts.

    A target that holds part of the source's checkpoints (and of their writes) and nothing
    else is an earlier run that stopped: it is resumed. Anything the source does not have,
    or has otherwise, is a conflict.
    """
    if target_record is None and not target:
        return "new", ""
    if target_record is not None and target_record != record:
        if record is None:
            return "conflict", "the target registers it, the source does not"
        if target_record.is_deleted != record.is_deleted:
            where = "target" if target_record.is_deleted else "source"
            return "conflict", f"it is deleted in the {where} only"
        return "conflict", "its registry record differs (title, metadata, turns or dates)"
    mine = {_key(t): t for t in source}
    theirs = {_key(t): t for t in target}
    extra = theirs.keys() - mine.keys()
    if extra:
        return "conflict", f"the target has {len(extra)} checkpoint(s) the source does not"
    for key, t in theirs.items():
        if _checkpoint_print(t, serde) != _checkpoint_print(mine[key], serde):
            return "conflict", f"checkpoint {key[1]} differs"
        if not _writes_print(t, serde) <= _writes_print(mine[key], serde):
            return "conflict", f"the pending writes of checkpoint {key[1]} differ"
    complete = theirs.keys() == mine.keys() and all(
        _writes_print(t, serde) == _writes_print(mine[key], serde) for key, t in theirs.items()
    )
    if complete and target_record == record:
        return "unchanged", ""
    return "resume", ""


async def _put_checkpoint(saver: BaseCheckpointSaver[Any], t: CheckpointTuple) -> int:
    """Save one checkpoint and its pending writes through the saver's API; the writes' count."""
    ns, _ = _key(t)
    configurable: dict[str, Any] = {
        "thread_id": t.config["configurable"]["thread_id"],
        "checkpoint_ns": ns,
    }
    if t.parent_config is not None:
        configurable["checkpoint_id"] = t.parent_config["configurable"]["checkpoint_id"]
    # Every channel's version is "new" here: the target has none of this checkpoint's blobs.
    saved = await saver.aput(
        {"configurable": configurable},
        t.checkpoint,
        t.metadata,
        dict(t.checkpoint["channel_versions"]),
    )
    by_task: dict[str, list[tuple[str, Any]]] = {}
    for task_id, channel, value in t.pending_writes or []:
        by_task.setdefault(task_id, []).append((channel, value))
    for task_id, writes in by_task.items():
        await saver.aput_writes(saved, writes, task_id)
    return sum(len(w) for w in by_task.values())


# -- vectors -----------------------------------------------------------------------------------


@dataclass
class _CollectionPlan:
    name: str
    configuration: dict[str, Any]
    metadata: dict[str, Any] | None
    records: int = 0
    left_behind: int = 0
    to_write: list[str] = field(default_factory=list)
    unchanged: int = 0
    conflicts: list[str] = field(default_factory=list)
    stale: dict[str, Any] = field(default_factory=dict)
    """Target records (id -> metadata) of overwritten threads that the source does not have."""

    @property
    def is_tombstones(self) -> bool:
        return self.name.endswith(TOMBSTONES_SUFFIX)


_INCLUDE: Any = ["documents", "metadatas", "embeddings"]


def _rows(got: Any) -> Iterator[tuple[str, str | None, dict[str, Any] | None, Any]]:
    ids = got["ids"]
    docs = got.get("documents")
    metas = got.get("metadatas")
    vectors = got.get("embeddings")
    for i, doc_id in enumerate(ids):
        yield (
            str(doc_id),
            docs[i] if docs is not None else None,
            dict(metas[i]) if metas is not None and metas[i] is not None else None,
            vectors[i] if vectors is not None else None,
        )


def _same_record(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    _, doc_a, meta_a, vec_a = a
    _, doc_b, meta_b, vec_b = b
    if doc_a != doc_b or (meta_a or {}) != (meta_b or {}):
        return False
    if vec_a is None or vec_b is None:
        return vec_a is None and vec_b is None
    first, second = np.asarray(vec_a, dtype=np.float64), np.asarray(vec_b, dtype=np.float64)
    # A cosine collection stores unit vectors: a copy may differ in the last float32 bit.
    return first.shape == second.shape and bool(np.allclose(first, second, rtol=0, atol=1e-6))


def _configuration(collection: Collection) -> dict[str, Any]:
    config = dict(collection.configuration or {})
    kept = {k: dict(v) for k in ("hnsw", "spann") if isinstance(v := config.get(k), dict)}
    return kept


def _space(config: dict[str, Any]) -> Any:
    for key in ("hnsw", "spann"):
        if isinstance(config.get(key), dict) and "space" in config[key]:
            return config[key]["space"]
    return None


def _plan_collection(
    source: Collection,
    target_client: ClientAPI | None,
    *,
    deleted: set[str],
    overwritten: set[str],
    overwrite: bool,
    batch_size: int,
    progress: Progress,
) -> _CollectionPlan:
    """Compare one source collection with the target's of the same name, in batches."""
    plan = _CollectionPlan(
        source.name,
        _configuration(source),
        dict(source.metadata) if source.metadata else None,
    )
    target: Collection | None = None
    if target_client is not None:
        names = {c.name for c in target_client.list_collections()}
        if source.name in names:
            target = target_client.get_collection(source.name, embedding_function=None)
            theirs_meta = dict(target.metadata) if target.metadata else None
            if theirs_meta != plan.metadata:
                plan.conflicts.append(
                    f"collection {source.name}: the target's was made with {theirs_meta}, the "
                    f"source's with {plan.metadata} (vectors of different embedders do not mix)"
                )
                return plan
            if _space(_configuration(target)) != _space(plan.configuration):
                plan.conflicts.append(
                    f"collection {source.name}: the target's distance is "
                    f"{_space(_configuration(target))}, the source's {_space(plan.configuration)}"
                )
                return plan
    total = source.count()
    offset = 0
    kept_of_overwritten: set[str] = set()
    while True:
        got = source.get(limit=batch_size, offset=offset, include=_INCLUDE)
        if not got["ids"]:
            break
        offset += len(got["ids"])
        rows = []
        for row in _rows(got):
            thread = (row[2] or {}).get("thread_id")
            if thread is not None and str(thread) in deleted:
                plan.left_behind += 1  # forgotten text stays forgotten
                continue
            rows.append(row)
            owner = row[0] if plan.is_tombstones else str((row[2] or {}).get("thread_id"))
            if owner in overwritten:
                kept_of_overwritten.add(row[0])
        plan.records += len(rows)
        existing: dict[str, tuple[Any, ...]] = {}
        if target is not None and rows:
            theirs = target.get(ids=[r[0] for r in rows], include=_INCLUDE)
            existing = {r[0]: r for r in _rows(theirs)}
        for row in rows:
            found = existing.get(row[0])
            if found is None:
                plan.to_write.append(row[0])
            elif _same_record(found, row):
                plan.unchanged += 1
            else:
                thread = str((row[2] or {}).get("thread_id", row[0]))
                if not (overwrite or thread in overwritten):
                    plan.conflicts.append(
                        f"collection {source.name}: record {row[0]} has other content"
                    )
                plan.to_write.append(row[0])
        progress(f"vectors {source.name}: {offset}/{total} compared")
    if target is not None and overwritten:
        for thread in sorted(overwritten):
            present: dict[str, dict[str, Any] | None]
            if plan.is_tombstones:
                found_ids = target.get(ids=[thread], include=[])["ids"]
                present = {str(i): None for i in found_ids}
            else:
                where = cast(Where, {"thread_id": thread})
                got = target.get(where=where, include=["metadatas"])
                present = {str(r[0]): r[2] for r in _rows(got)}
            for doc_id, meta in present.items():
                if doc_id not in kept_of_overwritten:
                    plan.stale[doc_id] = meta
    return plan


def _write_collection(
    source: Collection,
    target_client: ClientAPI,
    plan: _CollectionPlan,
    *,
    batch_size: int,
    progress: Progress,
) -> int:
    """Upsert the planned records with their stored embeddings; delete stale ones."""
    options: dict[str, Any] = {"embedding_function": None}
    if plan.configuration:
        options["configuration"] = plan.configuration
    if plan.metadata:
        options["metadata"] = plan.metadata
    target = target_client.get_or_create_collection(plan.name, **options)
    written = 0
    for start in range(0, len(plan.to_write), batch_size):
        batch = plan.to_write[start : start + batch_size]
        got = source.get(ids=batch, include=_INCLUDE)
        # Chroma takes documents and metadatas for all records of a call or for none.
        groups: dict[tuple[bool, bool], list[tuple[Any, ...]]] = {}
        for row in _rows(got):
            groups.setdefault((row[1] is not None, row[2] is not None), []).append(row)
        for (has_doc, has_meta), rows in groups.items():
            args: dict[str, Any] = {
                "ids": [r[0] for r in rows],
                "embeddings": np.asarray([r[3] for r in rows], dtype=np.float32),
            }
            if has_doc:
                args["documents"] = [r[1] for r in rows]
            if has_meta:
                args["metadatas"] = [r[2] for r in rows]
            target.upsert(**args)
            written += len(rows)
        progress(f"vectors {plan.name}: {written}/{len(plan.to_write)} copied")
    if plan.stale:
        ids = sorted(plan.stale)
        if not plan.is_tombstones:
            # As ChromaMemory deletes: journal first, so that the workers' indexes drop them.
            journal = target_client.get_or_create_collection(
                f"{plan.name}{JOURNAL_SUFFIX}", embedding_function=None
            )
            journal_deletion(journal, ids, [plan.stale[i] for i in ids])
        target.delete(ids=ids)
    return written


def _source_collections(client: ClientAPI) -> list[Collection]:
    """The collections to copy: all but the deletion journals.

    A journal only tells running processes what was deleted lately; the target's processes
    build their keyword indexes from the records themselves when they start.
    """
    names = sorted(c.name for c in client.list_collections())
    return [
        client.get_collection(name, embedding_function=None)
        for name in names
        if not name.endswith(JOURNAL_SUFFIX)
    ]


# -- the run -----------------------------------------------------------------------------------


def _every(total: int) -> int:
    """How often a pass over ``total`` threads reports: about ten times, at most every 100."""
    return max(1, min(100, total // 10))


@dataclass
class _Plan:
    threads: list[_ThreadPlan]
    collections: list[_CollectionPlan]
    conflicts: list[str]


async def _plan(
    source: _SourceStore,
    target: _TargetStore | None,
    *,
    overwrite: bool,
    batch_size: int,
    progress: Progress,
) -> _Plan:
    records: dict[str, ThreadRecord] = {}
    if source.registry is not None:
        records = {r.thread_id: r async for r in source.registry.records()}
    ids = sorted(set(records) | set(source.checkpointed))
    serde = source.saver.serde
    threads: list[_ThreadPlan] = []
    conflicts: list[str] = []
    for i, thread_id in enumerate(ids, start=1):
        record = records.get(thread_id)
        deleted = record is not None and record.is_deleted
        # A deleted thread's checkpoints (left by a crash) are not copied: it stays forgotten.
        history = [] if deleted else await _history(source.saver, thread_id)
        action: ThreadAction = "copy"
        if target is not None:
            theirs = await _history(target.saver, thread_id)
            status, why = _compare_thread(
                record, history, await target.registry.read(thread_id), theirs, serde
            )
            if status == "unchanged":
                action = "unchanged"
            elif status == "conflict":
                action = "overwrite"
                conflicts.append(f"thread {thread_id}: {why}")
        threads.append(
            _ThreadPlan(
                thread_id,
                action,
                record,
                checkpoints=len(history),
                writes=sum(len(t.pending_writes or []) for t in history),
            )
        )
        if i % _every(len(ids)) == 0 or i == len(ids):
            progress(f"threads: {i}/{len(ids)} compared")
    deleted_ids = {t.thread_id for t in threads if t.deleted}
    overwritten = {t.thread_id for t in threads if t.action == "overwrite"} if overwrite else set()
    collections = []
    for collection in await asyncio.to_thread(_source_collections, source.chroma):
        plan = await asyncio.to_thread(
            _plan_collection,
            collection,
            target.chroma if target is not None else None,
            deleted=deleted_ids,
            overwritten=overwritten,
            overwrite=overwrite,
            batch_size=batch_size,
            progress=progress,
        )
        conflicts.extend(plan.conflicts)
        collections.append(plan)
    return _Plan(threads, collections, conflicts)


def _count(report: MigrationReport, plan: _Plan) -> None:
    report.threads = len(plan.threads)
    report.deleted_threads = sum(t.deleted for t in plan.threads)
    report.checkpoints = sum(t.checkpoints for t in plan.threads)
    report.pending_writes = sum(t.writes for t in plan.threads)
    report.vectors = {c.name: c.records for c in plan.collections}
    report.vectors_left_behind = sum(c.left_behind for c in plan.collections)
    for c in plan.collections:
        if c.metadata and not c.is_tombstones and "embedder" in c.metadata:
            report.embedder = str(c.metadata["embedder"])


async def migrate(
    source: Source,
    *,
    checkpointer_url: str | None,
    chroma_url: str | None,
    overwrite: bool = False,
    dry_run: bool = False,
    batch_size: int = 500,
    connect_timeout: float = 10.0,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy an embedded deployment into PostgreSQL and a Chroma server, then verify the copy.

    Run it with the source's server stopped (a server holding the checkpoints file is
    detected and refused). The target may be empty or hold an earlier (possibly interrupted)
    copy; threads already there unchanged are skipped.

    Args:
        source: The embedded deployment's files.
        checkpointer_url: The target PostgreSQL (``postgresql://...``); tables are created
            if needed. Optional for a dry run.
        chroma_url: The target Chroma server (``http://host:port``). Optional for a dry run.
        overwrite: Replace threads and records whose content differs in the target
            (otherwise such a conflict stops the run before anything is written).
        dry_run: Only count the source (and check that the target answers, when given).
        batch_size: Chroma records read and written per call.
        connect_timeout: Seconds to wait for PostgreSQL.
        progress: Called with a line of progress now and then.

    Returns:
        What was found and done.

    Raises:
        SourceError: The source is missing, invalid or in use.
        TargetError: The target is not given, not valid or cannot be reached.
        ConflictError: The target holds other content for some threads (without ``overwrite``).
        VerificationError: The target does not match the source after the copy.
    """
    say: Progress = progress or (lambda _line: None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    _check_target_urls(checkpointer_url, chroma_url)
    if not dry_run and (checkpointer_url is None or chroma_url is None):
        raise TargetError("a migration needs both a target PostgreSQL URL and a Chroma URL")
    report = MigrationReport(dry_run=dry_run)
    async with _open_source(source) as src:
        if dry_run:
            if checkpointer_url is not None:
                await _reach_postgres(checkpointer_url, connect_timeout)
                report.target_checked.append("PostgreSQL")
            if chroma_url is not None:
                await _reach_chroma(chroma_url)
                report.target_checked.append("Chroma")
            plan = await _plan(src, None, overwrite=False, batch_size=batch_size, progress=say)
            _count(report, plan)
            return report
        assert checkpointer_url is not None and chroma_url is not None
        async with _open_target(checkpointer_url, chroma_url, connect_timeout) as target:
            say("comparing the source with the target")
            plan = await _plan(
                src, target, overwrite=overwrite, batch_size=batch_size, progress=say
            )
            _count(report, plan)
            if plan.conflicts and not overwrite:
                shown = "; ".join(plan.conflicts[:3])
                more = f" and {len(plan.conflicts) - 3} more" if len(plan.conflicts) > 3 else ""
                raise ConflictError(
                    f"the target already holds other content ({shown}{more}); nothing was "
                    "written. Rerun with --overwrite to replace it with the source's",
                    plan.conflicts,
                )
            await _copy(src, target, plan, report, batch_size=batch_size, progress=say)
            say("verifying the target")
            check = await _plan(src, target, overwrite=False, batch_size=batch_size, progress=say)
            _verify(check)
            report.verified = True
    return report


async def _copy(
    source: _SourceStore,
    target: _TargetStore,
    plan: _Plan,
    report: MigrationReport,
    *,
    batch_size: int,
    progress: Progress,
) -> None:
    todo = [t for t in plan.threads if t.action != "unchanged"]
    report.threads_unchanged = len(plan.threads) - len(todo)
    for i, thread in enumerate(todo, start=1):
        if thread.action == "overwrite":
            await target.saver.adelete_thread(thread.thread_id)
            report.threads_overwritten += 1
        else:
            report.threads_copied += 1
        if not thread.deleted:
            # Oldest first: a checkpoint's parent is in place before it, as when it was made.
            for t in reversed(await _history(source.saver, thread.thread_id)):
                await _put_checkpoint(target.saver, t)
        # The record last: a run that stops before it resumes this thread next time.
        if thread.record is not None:
            await target.registry.put_record(thread.record)
        if i % _every(len(todo)) == 0 or i == len(todo):
            progress(f"threads: {i}/{len(todo)} copied")
    collections = {c.name: c for c in await asyncio.to_thread(_source_collections, source.chroma)}
    for cplan in plan.collections:
        report.vectors_unchanged += cplan.unchanged
        report.vectors_removed += len(cplan.stale)
        if not cplan.to_write and not cplan.stale and cplan.unchanged:
            continue
        report.vectors_copied += await asyncio.to_thread(
            _write_collection,
            collections[cplan.name],
            target.chroma,
            cplan,
            batch_size=batch_size,
            progress=progress,
        )


def _verify(check: _Plan) -> None:
    differ = [t.thread_id for t in check.threads if t.action != "unchanged"]
    missing = {c.name: len(c.to_write) for c in check.collections if c.to_write}
    if differ or missing or check.conflicts:
        parts = []
        if differ:
            parts.append(f"{len(differ)} thread(s) differ ({', '.join(differ[:3])})")
        if missing:
            parts.append(
                "vectors missing or different: "
                + ", ".join(f"{name} {n}" for name, n in sorted(missing.items()))
            )
        parts.extend(check.conflicts[:3])
        raise VerificationError("after the copy the target does not match: " + "; ".join(parts))
