"""retrieve_memory node: recall earlier turns and facts relevant to the user's turn."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.dates import resolve_relative_dates
from nodes.memory import MemoryHit, MemoryStore
from nodes.state import ChatState, Snippet
from nodes.text import message_text, terms

__all__ = ["make_retrieve_memory", "window_start_turn"]

logger = logging.getLogger(__name__)

RetrieveMemoryNode = Callable[[ChatState, Runtime[Context], RunnableConfig], dict[str, Any]]


def window_start_turn(messages: Sequence[AnyMessage]) -> int | None:
    """The oldest turn still in the verbatim window.

    Args:
        messages: The verbatim window; ``begin_turn`` stamps each message's
            ``additional_kwargs["turn"]``.

    Returns:
        The smallest stamped turn number, or ``None`` when no message carries one.
    """
    turns = [
        turn
        for message in messages
        if isinstance(turn := message.additional_kwargs.get("turn"), int)
        and not isinstance(turn, bool)
    ]
    return min(turns) if turns else None


def _snippet(hit: MemoryHit) -> Snippet:
    record = hit.record
    return Snippet(
        id=record.id,
        text=record.text,
        thread_id=record.thread_id,
        turn=record.turn,
        role=record.role,
        timestamp=record.timestamp,
        # Rounded down: a shown score used as a floor keeps the memory it came from.
        score=math.floor(float(hit.score) * 10_000) / 10_000,
    )


def _top_memories(hits: Sequence[MemoryHit], k: int) -> list[MemoryHit]:
    """The first ``k`` memories with the neighbours that follow each (as ``search`` counts)."""
    kept: list[MemoryHit] = []
    anchors = 0
    for hit in hits:
        if "neighbour_of" not in hit.record.extra:
            if anchors == k:
                break
            anchors += 1
        kept.append(hit)
    return kept


def _groups(hits: Sequence[MemoryHit]) -> list[list[MemoryHit]]:
    """Hits as search returns them, grouped: each memory followed by its neighbours."""
    groups: list[list[MemoryHit]] = []
    for hit in hits:
        if "neighbour_of" in hit.record.extra and groups:
            groups[-1].append(hit)
        else:
            groups.append([hit])
    return groups


def _diverse(hits: Sequence[MemoryHit], k: int, weight: float) -> list[MemoryHit]:
    """The ``k`` memories (with their neighbours) picked by maximal marginal relevance.

    Each pick maximises ``score / best score - weight * max_overlap``, the overlap the Jaccard
    similarity of its terms with a memory already picked: a second memory that says what the
    first said gives way to one that says something else.
    """
    groups = _groups(hits)
    words = [frozenset(t for h in g for t in terms(h.record.text)) for g in groups]
    top = max((g[0].score for g in groups), default=0.0) or 1.0
    picked: list[int] = []
    left = list(range(len(groups)))
    while left and len(picked) < k:

        def value(i: int) -> float:
            overlap = max(
                (len(words[i] & words[j]) / (len(words[i] | words[j]) or 1) for j in picked),
                default=0.0,
            )
            return groups[i][0].score / top - weight * overlap

        best = max(left, key=value)
        picked.append(best)
        left.remove(best)
    return [h for i in sorted(picked) for h in groups[i]]


def make_retrieve_memory(memory: MemoryStore) -> RetrieveMemoryNode:
    """Build the ``retrieve_memory`` node over a memory store.

    Args:
        memory: The vector memory (``ChromaMemory`` or a fake).

    Returns:
        A sync node ``(state, runtime, config) -> {"recalled": [Snippet, ...]}``.
    """

    def retrieve_memory(
        state: ChatState, runtime: Runtime[Context], config: RunnableConfig
    ) -> dict[str, Any]:
        """Recall up to ``ctx.top_k`` memories for the last user message.

        The query is the last user message. With ``ctx.memory_diversity`` (the default) the
        memories are picked by maximal marginal relevance from twice as many candidates.
        Memories come from this thread (from all of the
        user's threads when ``ctx.cross_thread_memory``), leave out the turns still in the
        verbatim window, and score at least ``ctx.score_floor``. A memory failure is logged
        and recalls nothing: the turn goes on without memories.

        Args:
            state: The thread's state.
            runtime: Carries the per-run :class:`~nodes.context.Context`.
            config: The run config; ``configurable.thread_id`` names the thread.

        Returns:
            ``{"recalled": snippets}``, best first.
        """
        ctx = runtime.context or Context()
        messages = state.get("messages", [])
        user = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        query = message_text(user).strip() if user is not None else ""
        if user is not None:
            # Resolved as the turn's own record will be ("yesterday (7 May 2023)"): the dates
            # then match remembered turns, and the store reuses this query's embedding.
            query = resolve_relative_dates(query, user.additional_kwargs.get("timestamp"))
        thread_id = (config.get("configurable") or {}).get("thread_id")
        thread_id = str(thread_id) if thread_id is not None else None
        if not query or ctx.top_k <= 0 or (thread_id is None and not ctx.cross_thread_memory):
            return {"recalled": []}
        window_start = window_start_turn(messages)

        def search(text: str, k: int) -> list[MemoryHit]:
            if ctx.cross_thread_memory:
                # The store's turn filter applies to one thread; across threads, the window
                # turns of this thread are dropped here, so ask for that many more.
                extra = 0
                if thread_id is not None and window_start is not None:
                    current = max(int(state.get("turn") or 0), window_start)
                    extra = 3 * (current - window_start + 1)
                found = memory.search(
                    text,
                    thread_id=None,
                    user_id=ctx.user_id,
                    k=k + extra,
                    min_score=ctx.score_floor,
                    neighbours=ctx.memory_neighbours,
                    neighbours_before=ctx.memory_neighbours_before,
                )
                return _top_memories(
                    [
                        h
                        for h in found
                        if not (
                            h.record.thread_id == thread_id
                            and window_start is not None
                            and h.record.turn >= window_start
                        )
                    ],
                    k,
                )
            return memory.search(
                text,
                thread_id=thread_id,
                user_id=None,
                k=k,
                min_score=ctx.score_floor,
                exclude_turns_from=window_start,
                neighbours=ctx.memory_neighbours,
                neighbours_before=ctx.memory_neighbours_before,
            )

        try:
            if ctx.memory_diversity > 0:
                # Picked from twice as many candidates, so that a memory that repeats a
                # better one gives way to one that adds something.
                hits = _diverse(search(query, 2 * ctx.top_k), ctx.top_k, ctx.memory_diversity)
            else:
                hits = search(query, ctx.top_k)
        except Exception:
            logger.exception(
                "memory search failed for thread %s; replying without memories", thread_id
            )
            return {"recalled": []}
        return {"recalled": [_snippet(h) for h in hits]}

    return retrieve_memory
