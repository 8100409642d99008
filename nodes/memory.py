"""Interfaces the graph depends on for memory: records, hits, the store and the embedder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, kw_only=True)
class MemoryRecord:
    """One remembered item: a user or assistant turn, or an extracted fact."""

    id: str
    """Deterministic (thread, turn, role, kind): a retried turn overwrites, never duplicates."""
    text: str
    thread_id: str
    user_id: str
    turn: int
    role: str
    """"user", "assistant" or "fact"."""
    timestamp: str | None = None
    """ISO-8601; stamped into the indexed text so temporal questions can be answered."""
    extra: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MemoryHit:
    record: MemoryRecord
    score: float
    """Higher is better; comparable with the score floor of the same store."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors (sentence-transformers in production, a fake in tests)."""

    dimension: int

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


@runtime_checkable
class MemoryStore(Protocol):
    """Vector memory filtered by thread and user. Every method is sync and thread-safe."""

    def add(self, records: Sequence[MemoryRecord]) -> None:
        """Insert or overwrite (by id). Raises ``ThreadDeletedError`` for a deleted thread."""
        ...

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
        """Best ``k`` hits for ``query``; ``thread_id=None`` searches all of ``user_id``'s threads.

        ``exclude_turns_from``: leave out records of this thread whose turn is >= it
        (they are still in the verbatim window). ``neighbours``: after each hit, the next this
        many records of its thread in conversation order (e.g. the reply to a recalled
        question); ``neighbours_before``: the ones just before it (the question a recalled
        answer answers). They follow their hit and do not count towards ``k``.
        """
        ...

    def delete_thread(self, thread_id: str) -> int:
        """Delete every record of the thread and refuse later writes to it; returns the count."""
        ...

    def delete_records(self, ids: Sequence[str]) -> int:
        """Delete the records with these ids (absent ids are ignored); returns the count."""
        ...

    def clear_thread(self, thread_id: str) -> int:
        """Delete every record of the thread but keep it writable (a reset); returns the count."""
        ...

    def count(self, *, thread_id: str | None = None) -> int: ...
