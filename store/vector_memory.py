"""Vector memory over Chroma with hybrid retrieval (BM25 + dense) and thread tombstones."""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import chromadb
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Where
from chromadb.config import Settings

from nodes.errors import ThreadDeletedError
from nodes.memory import Embedder, MemoryHit, MemoryRecord
from nodes.text import terms, word_key
from store.lexical import KeywordIndex, tokenize_doc

__all__ = [
    "DEFAULT_COLLECTION",
    "JOURNAL_SUFFIX",
    "TOMBSTONES_SUFFIX",
    "ChromaMemory",
    "http_client",
    "journal_deletion",
    "local_client",
    "stamp_text",
]

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "steadychat_memory"
TOMBSTONES_SUFFIX = "_deleted"
"""``<collection>_deleted`` holds one record per deleted thread (its id is the thread id)."""
JOURNAL_SUFFIX = "_journal"
"""``<collection>_journal`` lists recent deletions for the keyword indexes of other processes."""
_RESERVED = frozenset(
    {"thread_id", "user_id", "turn", "role", "timestamp", "written_at", "write_id"}
)
_MARGIN_S = 30.0
"""How late a write may become visible after it was stamped and still be picked up: a search
re-reads what was stamped since its previous refresh began, minus this."""
_JOURNAL_KEEP_S = 3600.0
"""Deletion journal entries older than this are removed; an index not refreshed for half of it
is rebuilt instead of caught up."""
_INDEXES = 256
"""Keyword indexes (one per thread or user searched) kept in memory, least recently used out."""
_QUERY_VECTORS = 64
"""Recent query embeddings kept for the write that follows (the user turn's own record)."""
_ROLE_ORDER = {"user": 0, "assistant": 1}


def stamp_text(text: str, timestamp: str | None) -> str:
    """Return the text as it is indexed: prefixed with its date when it has one.

    Temporal questions ("when did I ...?") can only be answered from a remembered turn that
    carries its own date, so every record is indexed (embedded and keyword-indexed) with it.

    Args:
        text: The record's text.
        timestamp: ISO-8601 timestamp, or ``None``.

    Returns:
        ``"[8 May 2023] text"``, or the text unchanged without a timestamp.

    Raises:
        ValueError: The timestamp is not ISO-8601.
    """
    if not timestamp:
        return text
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError as exc:
        raise ValueError(f"timestamp {timestamp!r} is not ISO-8601") from exc
    return f"[{moment.day} {moment:%B} {moment.year}] {text}"


def _settings() -> Settings:
    # Telemetry would try to reach the network (and wait) on every client start.
    return Settings(anonymized_telemetry=False)


def local_client(path: str | Path) -> ClientAPI:
    """A Chroma client over a local folder (``PersistentClient``; one writer process).

    Args:
        path: Folder of the Chroma database (created if missing).

    Returns:
        The client.
    """
    return chromadb.PersistentClient(path=str(path), settings=_settings())


def http_client(url: str, *, headers: dict[str, str] | None = None) -> ClientAPI:
    """A client of a Chroma server (``chroma run``).

    Args:
        url: ``http://host:port`` or ``https://host:port``.
        headers: Extra HTTP headers (authentication).

    Returns:
        The client (connecting checks the server's heartbeat).

    Raises:
        ValueError: The URL is not http(s) with a host, or no server answers there.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Chroma URL must look like http://host:port, got {url!r}")
    ssl = parts.scheme == "https"
    return chromadb.HttpClient(
        host=parts.hostname,
        port=parts.port or (443 if ssl else 8000),
        ssl=ssl,
        headers=headers,
        settings=_settings(),
    )


def journal_deletion(journal: Collection, ids: Sequence[str], metadatas: Sequence[Any]) -> None:
    """Record deleted records in a deletion journal, so other processes' indexes drop them.

    Args:
        journal: The ``<collection>_journal`` collection.
        ids: The deleted records' ids.
        metadatas: Their metadata (``thread_id`` and ``user_id`` name the indexes).
    """
    by_key: dict[str, list[str]] = {}
    for doc_id, meta in zip(ids, metadatas, strict=True):
        meta = meta or {}
        for key in (f"thread:{meta.get('thread_id')}", f"user:{meta.get('user_id')}"):
            by_key.setdefault(key, []).append(doc_id)
    if not by_key:
        return
    now = time.time()
    keys = sorted(by_key)
    journal.upsert(
        ids=[f"{key}:{uuid.uuid4().hex}" for key in keys],
        embeddings=np.ones((len(keys), 1), dtype=np.float32),
        metadatas=[{"key": key, "at": now, "ids": json.dumps(by_key[key])} for key in keys],
    )
    journal.delete(where=cast(Where, {"at": {"$lt": now - _JOURNAL_KEEP_S}}))


def _all_of(conditions: list[Where]) -> Where:
    # Chroma rejects "$and" with a single operand.
    return conditions[0] if len(conditions) == 1 else cast(Where, {"$and": conditions})


@dataclass(slots=True)
class _Entry:
    """One record as a keyword index holds it."""

    text: str
    meta: dict[str, Any]
    written_at: float

    @property
    def thread(self) -> str:
        return str(self.meta.get("thread_id"))

    @property
    def turn(self) -> int:
        return int(self.meta.get("turn", 0))

    def order_key(self, doc_id: str) -> tuple[int, int, str]:
        return (self.turn, _ROLE_ORDER.get(str(self.meta.get("role", "")), 2), doc_id)


@dataclass
class _FilterIndex:
    """The records of one thread (or one user) with their keyword postings, kept current.

    ``by_turn`` lists each thread's records by turn (for leaving the window out) and
    ``conversation`` its turns in conversation order, facts left out (for neighbours).
    """

    keywords: KeywordIndex = field(default_factory=KeywordIndex)
    entries: dict[str, _Entry] = field(default_factory=dict)
    by_turn: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    conversation: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    refreshed_at: float = 0.0
    recent_writes: dict[str, float] = field(default_factory=dict)
    """Writes (``write_id`` -> ``written_at``) within the margin, already read."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, doc_id: str, text: str, meta: dict[str, Any]) -> None:
        self.remove(doc_id)
        entry = _Entry(text, meta, float(meta.get("written_at", 0.0)))
        if meta.get("write_id"):
            self.recent_writes[str(meta["write_id"])] = entry.written_at
        self.entries[doc_id] = entry
        self.keywords.put(doc_id, tokenize_doc(_indexed_text(text, meta)))
        bisect.insort(self.by_turn.setdefault(entry.thread, []), (entry.turn, doc_id))
        if meta.get("role") != "fact":
            bisect.insort(self.conversation.setdefault(entry.thread, []), entry.order_key(doc_id))

    def remove(self, doc_id: str) -> None:
        entry = self.entries.pop(doc_id, None)
        if entry is None:
            return
        self.keywords.remove(doc_id)
        _discard(self.by_turn.get(entry.thread), (entry.turn, doc_id))
        _discard(self.conversation.get(entry.thread), entry.order_key(doc_id))

    def from_turn(self, thread: str, turn: int) -> list[str]:
        """Ids of the thread's records whose turn is ``turn`` or later."""
        rows = self.by_turn.get(thread, [])
        return [doc_id for _, doc_id in rows[bisect.bisect_left(rows, (turn, "")) :]]

    def after(self, doc_id: str) -> Iterable[str]:
        """Ids of the records after this one in its thread's conversation order."""
        entry = self.entries[doc_id]
        rows = self.conversation.get(entry.thread, [])
        start = bisect.bisect_right(rows, entry.order_key(doc_id))
        return [row[2] for row in rows[start : start + 64]]

    def before(self, doc_id: str) -> Iterable[str]:
        """Ids of the records before this one in its thread's conversation order, nearest first."""
        entry = self.entries[doc_id]
        rows = self.conversation.get(entry.thread, [])
        end = bisect.bisect_left(rows, entry.order_key(doc_id))
        return [row[2] for row in reversed(rows[max(0, end - 64) : end])]


def _discard(rows: list[Any] | None, row: Any) -> None:
    if rows is None:
        return
    at = bisect.bisect_left(rows, row)
    if at < len(rows) and rows[at] == row:
        del rows[at]


def _weight(meta: dict[str, Any]) -> float:
    # A record's own weight in (0, 1] (``extra["weight"]``) scales its score: a turn that
    # tells nothing new (an earlier question, a generic reply) ranks below one that does.
    weight = meta.get("weight")
    if isinstance(weight, int | float) and not isinstance(weight, bool) and 0.0 < weight <= 1.0:
        return float(weight)
    return 1.0


def _indexed_text(text: str, meta: dict[str, Any]) -> str:
    return stamp_text(text, _str_or_none(meta.get("timestamp")))


class ChromaMemory:
    """:class:`~nodes.memory.MemoryStore` over a Chroma collection, searched by hybrid retrieval.

    Each record is one Chroma document (the raw text) with metadata ``thread_id``,
    ``user_id``, ``turn``, ``role``, ``timestamp`` (when known) and the record's ``extra``
    keys; the id is the record id, and writes are upserts, so a retried turn overwrites.
    Embeddings are always computed here (Chroma's default embedding function would download
    a model), one batch per write.

    **Search** fuses two rankings of the records that pass the thread/user filter:

    * dense: cosine similarity from Chroma's vector index (``query`` with the filter);
    * keyword: BM25 over the same records (English words stemmed, Chinese as character
      bigrams; see :mod:`store.lexical`), from an in-process index per thread (or user) that
      is caught up, not rebuilt, on each search: it reads only what was written since its
      previous search (every record carries ``written_at``) and what a deletion journal (a
      second collection, ``<name>_journal``) says was deleted since. So another process
      sharing a Chroma server, a restart or a reset never leaves it stale, and a search reads
      a few records, not the whole thread. Chroma's own sparse (BM25) index would do this
      server-side, but chromadb 1.5 refuses it outside Chroma Cloud ("Sparse vector indexing
      is not enabled in local"), for a local folder and a ``chroma run`` server alike.

    The dense side embeds the record's text as it is; the date stamp (:func:`stamp_text`)
    goes to the keyword side only, so the user turn's record is the very text its turn
    searched for, and the query's embedding is reused for it instead of being computed again.

    **Score** (what ``min_score`` is compared with): ``w * max(cosine, 0) + (1 - w) * bm25``
    where ``bm25`` is normalized to [0, 1) by its upper bound for the query, and
    ``w = dense_weight`` (0.4 by default), times the record's own weight (``extra["weight"]``,
    in (0, 1], 1 when absent: ``nodes.remember`` lowers it for turns that tell nothing new).
    So the score lies in [0, 1). Measured with
    all-MiniLM-L6-v2: unrelated memories score up to about 0.13, paraphrases that share no
    word with the query 0.1-0.2, memories sharing the query's key words 0.25-0.6. A floor
    of 0.1 drops most noise; above about 0.15 it starts dropping paraphrases. The default
    floor (``Context.score_floor``) is 0: keep the top ``k``.
    With ``ranking="rrf"`` hits are ordered by reciprocal rank fusion (k=60) of the two
    rankings instead, and the same fused score is reported and floored.

    Deleting a thread writes a tombstone (a second collection, so it persists with the data
    and is seen by every process of a shared server); later writes to the thread raise
    :class:`~nodes.errors.ThreadDeletedError`. :meth:`clear_thread` deletes the records but
    keeps the thread writable.
    """

    def __init__(
        self,
        client: ClientAPI,
        embedder: Embedder,
        *,
        collection: str = DEFAULT_COLLECTION,
        dense_weight: float = 0.4,
        ranking: Literal["score", "rrf"] = "score",
        candidates: int = 64,
        duplicate_threshold: float = 0.9,
        max_records_per_thread: int | None = None,
    ) -> None:
        """Open (or create) the collection.

        Args:
            client: Any Chroma client (persistent, HTTP or ephemeral).
            embedder: Embeds records and queries; must match the collection's dimension.
            collection: Collection name; tombstones live in ``<name>_deleted``.
            dense_weight: Weight of cosine similarity in the fused score (0..1); 0.4 did best
                on LoCoMo between 0.2 and 0.7 (bench/README.md).
            ranking: ``"score"`` orders hits by the fused score, ``"rrf"`` by reciprocal
                rank fusion of the dense and keyword rankings.
            candidates: Minimum candidates taken from each ranking before fusion.
            duplicate_threshold: Hits whose term sets overlap this much (Jaccard) with a
                better hit are dropped as near-duplicates.
            max_records_per_thread: A thread keeps at most this many records; a write beyond
                it forgets the oldest (lowest turn, then earliest written) first. None: no cap.

        Raises:
            ValueError: Bad option, or the collection was built with a different embedding
                dimension.
        """
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be within [0, 1], got {dense_weight}")
        if ranking not in ("score", "rrf"):
            raise ValueError(f"ranking must be 'score' or 'rrf', got {ranking!r}")
        if candidates < 1:
            raise ValueError(f"candidates must be positive, got {candidates}")
        if max_records_per_thread is not None and max_records_per_thread < 1:
            raise ValueError(
                f"max_records_per_thread must be positive, got {max_records_per_thread}"
            )
        self._max_per_thread = max_records_per_thread
        self._embedder = embedder
        self._dense_weight = dense_weight
        self._ranking = ranking
        self._candidates = candidates
        self._duplicate_threshold = duplicate_threshold
        dimension = int(embedder.dimension)
        self._collection: Collection = client.get_or_create_collection(
            collection,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"dimension": dimension, "embedder": getattr(embedder, "name", "custom")},
            embedding_function=None,
        )
        stored = (self._collection.metadata or {}).get("dimension")
        if stored is not None and int(stored) != dimension:
            raise ValueError(
                f"collection {collection!r} holds {stored}-dimensional embeddings but the "
                f"embedder makes {dimension}; use the same embedder or another collection"
            )
        self._tombstones: Collection = client.get_or_create_collection(
            f"{collection}{TOMBSTONES_SUFFIX}", embedding_function=None
        )
        self._journal: Collection = client.get_or_create_collection(
            f"{collection}{JOURNAL_SUFFIX}", embedding_function=None
        )
        self._indexes: OrderedDict[str, _FilterIndex] = OrderedDict()
        self._indexes_lock = threading.Lock()
        self._query_vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._vectors_lock = threading.Lock()
        self._local_folder: Path | None = None
        """The folder of a local store, whose file ``scrub`` rewrites; None for a server."""
        self._scrub_lock = threading.Lock()

    @classmethod
    def persistent(cls, path: str | Path, embedder: Embedder, **options: Any) -> ChromaMemory:
        """Open a store in a local folder (Chroma ``PersistentClient``; one writer process).

        Args:
            path: Folder of the Chroma database (created if missing).
            embedder: The embedder.
            **options: Keyword options of the constructor.

        Returns:
            The store.
        """
        memory = cls(local_client(path), embedder, **options)
        memory._local_folder = Path(path)
        return memory

    @classmethod
    def from_url(
        cls,
        url: str,
        embedder: Embedder,
        *,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> ChromaMemory:
        """Connect to a Chroma server (``chroma run``), shared by several processes.

        Args:
            url: ``http://host:port`` or ``https://host:port``.
            embedder: The embedder.
            headers: Extra HTTP headers (authentication).
            **options: Keyword options of the constructor.

        Returns:
            The store.

        Raises:
            ValueError: The URL is not http(s) with a host.
        """
        return cls(http_client(url, headers=headers), embedder, **options)

    @classmethod
    def ephemeral(
        cls, embedder: Embedder, *, collection: str | None = None, **options: Any
    ) -> ChromaMemory:
        """An in-memory store (tests, demos); gone when the process ends.

        Args:
            embedder: The embedder.
            collection: Collection name; a fresh unique one by default, because Chroma's
                in-memory clients of one process share their data.
            **options: Keyword options of the constructor.

        Returns:
            The store.
        """
        client = chromadb.EphemeralClient(settings=_settings())
        name = collection or f"steadychat_{uuid.uuid4().hex[:12]}"
        return cls(client, embedder, collection=name, **options)

    # -- writes ---------------------------------------------------------------------------

    def add(self, records: Sequence[MemoryRecord]) -> None:
        """Insert or overwrite records (by id).

        Args:
            records: The records; ids must be unique within the call.

        Raises:
            ThreadDeletedError: A record belongs to a deleted thread (nothing of the call is
                kept for that thread).
            ValueError: Empty text or thread id, duplicate ids, a reserved ``extra`` key, or a
                timestamp that is not ISO-8601.
        """
        if not records:
            return
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("record ids must be unique within one add() call")
        for record in records:
            if not record.id or not record.thread_id:
                raise ValueError(f"record {record.id!r} needs an id and a thread_id")
            if not record.text.strip():
                raise ValueError(f"record {record.id!r} has no text")
            clash = _RESERVED & record.extra.keys()
            if clash:
                raise ValueError(f"record {record.id!r}: extra keys {sorted(clash)} are reserved")
            stamp_text(record.text, record.timestamp)  # a timestamp that is not ISO-8601 raises
        threads = sorted({r.thread_id for r in records})
        self._refuse_deleted(threads)
        embeddings = self._embed([r.text for r in records])
        # Stamped last, just before the write lands: a search that began earlier reads it on
        # its next refresh (see _MARGIN_S).
        stamp: dict[str, Any] = {"written_at": time.time(), "write_id": uuid.uuid4().hex}
        self._collection.upsert(
            ids=ids,
            embeddings=np.asarray(embeddings, dtype=np.float32),
            documents=[r.text for r in records],
            metadatas=[{**self._metadata(r), **stamp} for r in records],
        )
        # A delete may have landed between the check and the write (another thread or
        # process): look again after writing and take back what reached a deleted thread.
        late = self._deleted(threads)
        if late:
            taken_back = [r for r in records if r.thread_id in late]
            self._forget([r.id for r in taken_back], [self._metadata(r) for r in taken_back])
            raise ThreadDeletedError(f"thread {sorted(late)[0]!r} has been deleted")
        if self._max_per_thread is not None:
            for thread in threads:
                self._evict_oldest(thread, keep=self._max_per_thread, written=set(ids))

    def _evict_oldest(self, thread_id: str, *, keep: int, written: set[str]) -> int:
        """Forget the thread's oldest records beyond ``keep`` (never the ones just written)."""
        where: Where = {"thread_id": thread_id}
        stored = self._collection.get(where=where, include=["metadatas"])
        if len(stored["ids"]) <= keep:
            return 0
        metas: list[dict[str, Any]] = [dict(m or {}) for m in stored["metadatas"] or []]
        rows = sorted(
            zip(stored["ids"], metas, strict=True),
            key=lambda row: (
                int(row[1].get("turn", 0)),
                float(row[1].get("written_at", 0.0)),
                row[0],
            ),
        )
        excess = [row for row in rows if row[0] not in written][: len(rows) - keep]
        # A cap is housekeeping on every write: the file is scrubbed by the next deletion.
        self._forget([r[0] for r in excess], [r[1] for r in excess], scrub=False)
        return len(excess)

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed texts in one batch, reusing the vectors of texts just searched for."""
        with self._vectors_lock:
            known = {t: self._query_vectors[t] for t in texts if t in self._query_vectors}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known.update(zip(missing, self._embedder.embed_documents(missing), strict=True))
        return [known[t] for t in texts]

    def _remember_query(self, text: str, vector: list[float]) -> None:
        with self._vectors_lock:
            self._query_vectors[text] = vector
            self._query_vectors.move_to_end(text)
            while len(self._query_vectors) > _QUERY_VECTORS:
                self._query_vectors.popitem(last=False)

    @staticmethod
    def _metadata(record: MemoryRecord) -> dict[str, Any]:
        meta: dict[str, Any] = dict(record.extra)
        meta.update(
            thread_id=record.thread_id,
            user_id=record.user_id,
            turn=int(record.turn),
            role=record.role,
        )
        if record.timestamp:
            meta["timestamp"] = record.timestamp
        return meta

    def delete_thread(self, thread_id: str) -> int:
        """Delete every record of the thread and refuse later writes to it.

        Args:
            thread_id: The thread.

        Returns:
            How many records were deleted.
        """
        if not thread_id:
            raise ValueError("thread_id is empty")
        # Tombstone first: a concurrent add() that slips past its first check sees it on its
        # second check, or wrote before this delete and is removed by it.
        self._tombstones.upsert(
            ids=[thread_id],
            embeddings=np.ones((1, 1), dtype=np.float32),
            metadatas=[{"deleted_at": datetime.now(UTC).isoformat()}],
        )
        where: Where = {"thread_id": thread_id}
        stored = self._collection.get(where=where, include=["metadatas"])
        self._forget(stored["ids"], stored["metadatas"] or [], where=where)
        return len(stored["ids"])

    def delete_records(self, ids: Sequence[str]) -> int:
        """Delete the records with these ids (e.g. the fact of a cleared slot).

        Args:
            ids: Record ids; ids that are not stored are ignored.

        Returns:
            How many records were deleted.
        """
        wanted = [i for i in dict.fromkeys(ids) if i]
        if not wanted:
            return 0
        present = self._collection.get(ids=wanted, include=["metadatas"])
        if present["ids"]:
            self._forget(present["ids"], present["metadatas"] or [])
        return len(present["ids"])

    def clear_thread(self, thread_id: str) -> int:
        """Delete the thread's records but keep accepting writes to it (thread reset).

        Args:
            thread_id: The thread.

        Returns:
            How many records were deleted.
        """
        count = self.delete_thread(thread_id)
        self._tombstones.delete(ids=[thread_id])
        return count

    def _forget(
        self,
        ids: Sequence[str],
        metadatas: Sequence[Any],
        *,
        where: Where | None = None,
        scrub: bool = True,
    ) -> None:
        """Delete records: journal the deletion, delete them, and scrub a local store's file.

        Every deletion goes through here (a thread, a reset, single records, any cap on a
        thread's size): an index of another process learns of it only from the journal.
        Journalled first, so that no search can see the records gone from Chroma but still in
        its index. In a local folder the file is then scrubbed (``store.scrub``) so that no
        byte of the deleted documents and metadata remains on disk.

        Args:
            ids: The records' ids.
            metadatas: Their metadata (``thread_id`` and ``user_id`` name the indexes).
            where: Also delete what matches this filter (records written meanwhile).
            scrub: Scrub the local file now (an eviction leaves it to the next scrub).
        """
        if ids:
            self._journal_deletion(ids, metadatas)
            self._collection.delete(ids=list(ids))
        if where is not None:
            self._collection.delete(where=where)
        if scrub and (ids or where is not None):
            self.scrub()

    def scrub(self) -> int:
        """Remove the bytes of deleted records from a local store's file (no-op on a server).

        Returns:
            How many queued writes of deleted records were blanked.
        """
        if self._local_folder is None:
            return 0
        from store.scrub import ScrubError, scrub_chroma_in_child

        with self._scrub_lock:
            try:
                return scrub_chroma_in_child(self._local_folder)
            except ScrubError:
                logger.warning("could not scrub %s; run steadychat scrub", self._local_folder)
                return 0

    def _journal_deletion(self, ids: Sequence[str], metadatas: Sequence[Any]) -> None:
        journal_deletion(self._journal, ids, metadatas)

    def _deleted(self, threads: Sequence[str]) -> set[str]:
        return set(self._tombstones.get(ids=list(threads), include=[])["ids"])

    def _refuse_deleted(self, threads: Sequence[str]) -> None:
        deleted = self._deleted(threads)
        if deleted:
            raise ThreadDeletedError(f"thread {sorted(deleted)[0]!r} has been deleted")

    # -- reads ----------------------------------------------------------------------------

    def count(self, *, thread_id: str | None = None) -> int:
        """Number of records, of one thread or of the whole store.

        Args:
            thread_id: The thread, or ``None`` for all.

        Returns:
            The count.
        """
        if thread_id is None:
            return self._collection.count()
        where: Where = {"thread_id": thread_id}
        return len(self._collection.get(where=where, include=[])["ids"])

    def search(
        self,
        query: str,
        *,
        thread_id: str | None,
        user_id: str | None,
        k: int,
        min_score: float = 0.0,
        exclude_turns_from: int | None = None,
        neighbours: int = 0,
        neighbours_before: int = 0,
    ) -> list[MemoryHit]:
        """Best ``k`` records for the query, by hybrid retrieval (see the class docstring).

        Args:
            query: What to look for (the user's turn).
            thread_id: Only this thread's records; ``None`` searches all of ``user_id``'s.
            user_id: Only this user's records (``None``: any user of the thread).
            k: How many hits at most.
            min_score: Hits with a fused score below it are dropped.
            exclude_turns_from: Leave out this thread's records whose turn is >= it (still
                in the verbatim window). Needs ``thread_id``.
            neighbours: After each hit, also return the next this many records of its
                thread in conversation order (turn, then user before assistant; facts are
                not neighbours), e.g. the reply to a recalled question. They carry the hit's
                score and ``extra["neighbour_of"]``, obey the same filters, and do not count
                towards ``k``.
            neighbours_before: Likewise, the records just before each hit (nearest first),
                e.g. the question a recalled answer answers, or the statement a reply
                reacts to.

        Returns:
            Hits, best first (each followed by its neighbours), without duplicates (same or
            near-same text).

        Raises:
            ValueError: Neither a thread nor a user, ``exclude_turns_from`` without a thread,
                or negative ``neighbours``.
        """
        if thread_id is None and user_id is None:
            raise ValueError("search needs a thread_id or a user_id")
        if thread_id is None and exclude_turns_from is not None:
            raise ValueError("exclude_turns_from applies to one thread: pass thread_id")
        if neighbours < 0 or neighbours_before < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}, {neighbours_before}")
        if k <= 0 or not query.strip():
            return []
        conditions: list[Where] = []
        if thread_id is not None:
            conditions.append({"thread_id": thread_id})
        if user_id is not None:
            conditions.append({"user_id": user_id})
        if exclude_turns_from is not None:
            conditions.append(cast(Where, {"turn": {"$lt": int(exclude_turns_from)}}))
        where = _all_of(conditions)

        key = f"thread:{thread_id}" if thread_id is not None else f"user:{user_id}"
        index = self._fresh_index(key)
        with index.lock:
            left_out: set[str] = set()
            if thread_id is not None and exclude_turns_from is not None:
                left_out.update(index.from_turn(thread_id, int(exclude_turns_from)))
            if thread_id is not None and user_id is not None:
                left_out.update(
                    d for d, e in index.entries.items() if e.meta.get("user_id") != user_id
                )
            available = len(index.entries) - len(left_out)
            if available <= 0:
                return []
            lexical = index.keywords.scores(terms(query), exclude=left_out)

        depth = min(available, max(self._candidates, 4 * k))
        query_vector = self._embedder.embed_query(query)
        self._remember_query(query, query_vector)
        result = self._collection.query(
            query_embeddings=np.asarray([query_vector], dtype=np.float32),
            n_results=depth,
            where=where,
            include=["distances"],
        )
        dense: dict[str, float] = {}
        for doc_id, distance in zip(
            result["ids"][0], (result["distances"] or [[]])[0], strict=True
        ):
            dense[doc_id] = 1.0 - float(distance)

        lexical_top = sorted(lexical, key=lambda d: -lexical[d])[:depth]
        missing = [doc_id for doc_id in lexical_top if doc_id not in dense]
        if missing:
            dense.update(self._cosines(query_vector, missing))

        # Only now do hits and their neighbours come out of the index, for the few taken.
        with index.lock:
            return self._hits(
                index,
                dense,
                lexical,
                lexical_top,
                left_out,
                k,
                min_score,
                neighbours,
                neighbours_before,
            )

    def _hits(
        self,
        index: _FilterIndex,
        dense: dict[str, float],
        lexical: dict[str, float],
        lexical_top: list[str],
        left_out: set[str],
        k: int,
        min_score: float,
        neighbours: int,
        neighbours_before: int,
    ) -> list[MemoryHit]:
        entries = index.entries
        fused: dict[str, float] = {}
        for doc_id, cosine in dense.items():
            if doc_id in entries and doc_id not in left_out:
                fused[doc_id] = _weight(entries[doc_id].meta) * (
                    self._dense_weight * max(cosine, 0.0)
                    + (1.0 - self._dense_weight) * lexical.get(doc_id, 0.0)
                )
        if self._ranking == "rrf":
            rrf: dict[str, float] = {}
            dense_rank = sorted(dense, key=lambda d: -dense[d])
            for ranking in (dense_rank, lexical_top):
                for rank, doc_id in enumerate(ranking):
                    rrf[doc_id] = rrf.get(doc_id, 0.0) + 1.0 / (60 + rank + 1)
            order = sorted(fused, key=lambda d: -rrf.get(d, 0.0))
        else:
            order = sorted(fused, key=lambda d: -fused[d])

        hits: list[MemoryHit] = []
        taken: set[str] = set()
        seen = _NearDuplicates(self._duplicate_threshold)
        anchors = 0
        for doc_id in order:
            score = fused[doc_id]
            if score < min_score:
                continue
            # A record already returned as a neighbour is a hit in its own right too: it is
            # not repeated, but its own neighbours follow.
            if doc_id not in taken:
                entry = entries[doc_id]
                if seen.check_and_add(entry.text):
                    continue
                taken.add(doc_id)
                hits.append(MemoryHit(record=_record(doc_id, entry.text, entry.meta), score=score))
            around: list[str] = []
            if neighbours_before > 0:
                around += [n for n in index.before(doc_id) if n not in left_out][:neighbours_before]
            if neighbours > 0:
                around += [n for n in index.after(doc_id) if n not in left_out][:neighbours]
            for other in around:
                entry = entries[other]
                if other in taken or seen.check_and_add(entry.text):
                    continue
                taken.add(other)
                record = _record(other, entry.text, entry.meta, neighbour_of=doc_id)
                hits.append(MemoryHit(record=record, score=score))
            anchors += 1
            if anchors >= k:
                break
        return hits

    # -- the keyword indexes --------------------------------------------------------------

    def _fresh_index(self, key: str) -> _FilterIndex:
        """The keyword index of a thread (``thread:<id>``) or user (``user:<id>``), caught up."""
        with self._indexes_lock:
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = _FilterIndex()
            self._indexes.move_to_end(key)
            while len(self._indexes) > _INDEXES:
                self._indexes.popitem(last=False)
        kind, _, value = key.partition(":")
        where: Where = {"thread_id": value} if kind == "thread" else {"user_id": value}
        with index.lock:
            started = time.time()
            if started - index.refreshed_at > _JOURNAL_KEEP_S / 2:
                # New, or idle for so long that the journal may have lost deletions: rebuild.
                stored = self._collection.get(where=where, include=["documents", "metadatas"])
                fresh = _FilterIndex(lock=index.lock)
                for doc_id, doc, meta in zip(
                    stored["ids"],
                    stored["documents"] or [],
                    stored["metadatas"] or [],
                    strict=True,
                ):
                    fresh.put(doc_id, doc or "", dict(meta or {}))
                index.keywords, index.entries = fresh.keywords, fresh.entries
                index.by_turn, index.conversation = fresh.by_turn, fresh.conversation
                index.recent_writes = fresh.recent_writes
            else:
                since = index.refreshed_at - _MARGIN_S
                # Writes already read are not read again: only those that landed since.
                conditions = [where, cast(Where, {"written_at": {"$gte": since}})]
                if index.recent_writes:
                    conditions.append(
                        cast(Where, {"write_id": {"$nin": sorted(index.recent_writes)}})
                    )
                recent = _all_of(conditions)
                stored = self._collection.get(where=recent, include=["documents", "metadatas"])
                for doc_id, doc, meta in zip(
                    stored["ids"],
                    stored["documents"] or [],
                    stored["metadatas"] or [],
                    strict=True,
                ):
                    index.put(doc_id, doc or "", dict(meta or {}))
                journal = self._journal.get(
                    where=_all_of(
                        [
                            cast(Where, {"key": key}),
                            cast(Where, {"at": {"$gte": since}}),
                        ]
                    ),
                    include=["metadatas"],
                )
                for entry in journal["metadatas"] or []:
                    at = float(cast(float, entry.get("at", 0.0)))
                    for doc_id in json.loads(str(entry.get("ids", "[]"))):
                        known = index.entries.get(doc_id)
                        # A record written again after its deletion stays.
                        if known is not None and known.written_at <= at:
                            index.remove(doc_id)
            horizon = started - _MARGIN_S
            index.recent_writes = {w: t for w, t in index.recent_writes.items() if t >= horizon}
            index.refreshed_at = started
        return index

    def _cosines(self, query_vector: Sequence[float], ids: list[str]) -> dict[str, float]:
        got = self._collection.get(ids=ids, include=["embeddings"])
        if got["embeddings"] is None or not len(got["ids"]):
            return {}
        matrix = np.asarray(got["embeddings"], dtype=np.float64)
        query = np.asarray(query_vector, dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
        cosines = matrix @ query / np.where(norms > 0, norms, 1.0)
        return dict(zip(got["ids"], (float(c) for c in cosines), strict=True))


class _NearDuplicates:
    """Texts seen so far; tells whether a new one is the same or nearly the same (Jaccard).

    Prefix filtering keeps this near linear: two term sets with Jaccard >= t share at least
    one of their first ``|x| - ceil(t * |x|) + 1`` terms in any fixed order, so only texts
    indexed under those terms need comparing.
    """

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._keys: set[str] = set()
        self._by_prefix: dict[str, list[frozenset[str]]] = {}

    def _prefix(self, words: frozenset[str]) -> list[str]:
        size = len(words) - math.ceil(self._threshold * len(words) - 1e-9) + 1
        return sorted(words)[: max(size, 1)]

    def check_and_add(self, text: str) -> bool:
        key = word_key(text)
        if key in self._keys:
            return True
        words = frozenset(tokenize_doc(text).terms)
        prefix = self._prefix(words) if words else []
        for term in prefix:
            for other in self._by_prefix.get(term, ()):
                if len(words & other) / len(words | other) >= self._threshold:
                    return True
        self._keys.add(key)
        for term in prefix:
            self._by_prefix.setdefault(term, []).append(words)
        return False


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _record(
    doc_id: str, text: str, meta: dict[str, Any] | Any, *, neighbour_of: str | None = None
) -> MemoryRecord:
    extra = {key: value for key, value in meta.items() if key not in _RESERVED}
    if neighbour_of is not None:
        extra["neighbour_of"] = neighbour_of
    return MemoryRecord(
        id=doc_id,
        text=text,
        thread_id=str(meta["thread_id"]),
        user_id=str(meta.get("user_id", "")),
        turn=int(meta.get("turn", 0)),
        role=str(meta.get("role", "")),
        timestamp=_str_or_none(meta.get("timestamp")),
        extra=extra,
    )
