"""remember node: write the finished exchange and this turn's new facts to vector memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from nodes.context import Context, cancel_event_of
from nodes.dates import resolve_relative_dates
from nodes.errors import ThreadDeletedError, TurnCancelled
from nodes.memory import MemoryRecord, MemoryStore
from nodes.slot_rules import is_question
from nodes.state import ChatState, Slot
from nodes.text import CONTENT_STOPWORDS, message_text, split_sentences, terms

__all__ = [
    "LOW_INFORMATION_WEIGHT",
    "exchange_records",
    "fact_id",
    "fact_record",
    "information_weight",
    "make_remember",
    "slot_memory_changes",
]

logger = logging.getLogger(__name__)

RememberNode = Callable[[ChatState, Runtime[Context], RunnableConfig], dict[str, Any]]


def _last_exchange(
    messages: Sequence[AnyMessage],
) -> tuple[HumanMessage | None, AIMessage | None]:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, HumanMessage):
            reply = next(
                (m for m in reversed(messages[index + 1 :]) if isinstance(m, AIMessage)), None
            )
            return message, reply
    return None, None


LOW_INFORMATION_WEIGHT = 0.5
"""Recall weight of a remembered turn that tells nothing new (see ``information_weight``)."""

# What an assistant says when it has nothing to add: "I'm not sure, could you remind me?".
_GENERIC_WORDS = """
    ask asked asking remember recall remind note noted sure unsure understand sorry afraid
    information info detail details share happy glad assist certain idea mention mentioned
    clarify confirm provide check look help wow great awesome amazing cool nice
    记得 提醒 抱歉 不好意思 信息 了解 确定 帮助 告诉 提供 确认 详细 问题 请问
"""
_GENERIC = frozenset(_GENERIC_WORDS.split())
_GENERIC_TERMS = (
    frozenset(t for word in _GENERIC for t in terms(word, stopwords=CONTENT_STOPWORDS)) | _GENERIC
)


def _content(text: str) -> set[str]:
    return set(terms(text, stopwords=CONTENT_STOPWORDS))


def information_weight(text: str, *, answering: str | None = None) -> float:
    """How much a remembered turn weighs in recall: less when it tells nothing new.

    A user turn made only of questions (and content-free words) asks instead of telling; a
    reply that only restates what it answers, or says it does not know, adds nothing
    either. Such turns stay in memory, recallable, but weigh ``LOW_INFORMATION_WEIGHT``, so
    that earlier questions and generic replies do not crowd out the turns that hold facts.

    Args:
        text: The turn's text.
        answering: For a reply, the user turn it answers.

    Returns:
        1.0, or ``LOW_INFORMATION_WEIGHT``.
    """
    telling = [
        s for s in split_sentences(text) if not is_question(s) and _content(s) - _GENERIC_TERMS
    ]
    if not telling:
        return LOW_INFORMATION_WEIGHT
    if answering is not None and not (_content(text) - _content(answering) - _GENERIC_TERMS):
        return LOW_INFORMATION_WEIGHT
    return 1.0


def _stamp(message: AnyMessage, key: str) -> Any:
    return message.additional_kwargs.get(key)


def fact_id(thread_id: str, slot_name: str) -> str:
    """The memory id of a slot's fact: one record per slot, so a new value replaces the old."""
    return f"{thread_id}:fact:{slot_name}"


def fact_record(
    thread_id: str,
    user_id: str,
    name: str,
    slot: Slot,
    *,
    turn: int,
    timestamp: str | None,
) -> MemoryRecord:
    """The ``"fact"`` record of a slot's current value."""
    return MemoryRecord(
        id=fact_id(thread_id, name),
        text=f"{name.replace('_', ' ')}: {slot['value']}",
        thread_id=thread_id,
        user_id=user_id,
        turn=turn,
        role="fact",
        timestamp=timestamp,
        extra={"slot": name, "source": str(slot.get("source", ""))},
    )


def slot_memory_changes(
    thread_id: str, user_id: str, slots: Mapping[str, Slot], *, turn: int, timestamp: str | None
) -> tuple[list[MemoryRecord], list[str]]:
    """What memory must change when slots change outside a turn (a user's correction).

    Args:
        thread_id: The thread.
        user_id: The thread's owner.
        slots: The changed slots.
        turn: The thread's current turn.
        timestamp: When the change was made (ISO-8601).

    Returns:
        The fact records of the slots that hold a value, and the fact ids of cleared slots,
        so that recall no longer offers a cleared value.
    """
    facts = [
        fact_record(thread_id, user_id, name, slot, turn=turn, timestamp=timestamp)
        for name, slot in sorted(slots.items())
        if slot.get("value") not in (None, "")
    ]
    cleared = [fact_id(thread_id, name) for name, slot in slots.items() if not slot.get("value")]
    return facts, cleared


def exchange_records(state: ChatState, *, thread_id: str, user_id: str) -> list[MemoryRecord]:
    """The records one finished turn adds to memory.

    The user turn and the assistant reply are separate records (ids
    ``"{thread}:{turn}:user"`` and ``"{thread}:{turn}:assistant"``), their relative dates
    resolved against their own timestamps (``nodes.dates.resolve_relative_dates``); every
    slot whose value was set this turn becomes a ``"fact"`` record with id
    ``"{thread}:fact:{slot}"``, so a corrected value replaces the old one in memory (the old
    one stays in the slot's history).
    Ids are deterministic, so a retried turn overwrites instead of duplicating.

    Args:
        state: The thread's state after the reply.
        thread_id: The thread.
        user_id: The thread's owner.

    Returns:
        The records (empty when there is no user turn).
    """
    human, reply = _last_exchange(state.get("messages", []))
    if human is None:
        return []
    turn = _stamp(human, "turn")
    if not isinstance(turn, int) or isinstance(turn, bool):
        turn = int(state.get("turn", 0))
    timestamp = _stamp(human, "timestamp")
    timestamp = str(timestamp) if timestamp else None
    records: list[MemoryRecord] = []
    human_text, reply_text = message_text(human), message_text(reply) if reply else ""
    reply_time = _stamp(reply, "timestamp") if reply is not None else None
    reply_time = str(reply_time) if reply_time else timestamp
    # What a turn says relative to its day ("yesterday", "上周") is remembered with the date it
    # meant: recalled weeks later, it would otherwise point at the wrong day.
    human_text = resolve_relative_dates(human_text, timestamp)
    reply_text = resolve_relative_dates(reply_text, reply_time)
    if human_text.strip():
        records.append(
            MemoryRecord(
                id=f"{thread_id}:{turn}:user",
                text=human_text,
                thread_id=thread_id,
                user_id=user_id,
                turn=turn,
                role="user",
                timestamp=timestamp,
                extra=_weight(information_weight(human_text)),
            )
        )
    if reply is not None and reply_text.strip():
        records.append(
            MemoryRecord(
                id=f"{thread_id}:{turn}:assistant",
                text=reply_text,
                thread_id=thread_id,
                user_id=user_id,
                turn=turn,
                role="assistant",
                timestamp=reply_time,
                extra=_weight(information_weight(reply_text, answering=human_text)),
            )
        )
    slots: dict[str, Slot] = state.get("slots") or {}
    for name, slot in sorted(slots.items()):
        if slot.get("turn") != turn or slot.get("value") in (None, ""):
            continue
        records.append(fact_record(thread_id, user_id, name, slot, turn=turn, timestamp=timestamp))
    return records


def _weight(weight: float) -> dict[str, str | int | float | bool]:
    # Only a lowered weight is written: a record without one weighs 1.
    return {} if weight >= 1.0 else {"weight": weight}


def make_remember(memory: MemoryStore) -> RememberNode:
    """Build the ``remember`` node over a memory store.

    Args:
        memory: The vector memory (``ChromaMemory`` or a fake).

    Returns:
        A sync node ``(state, runtime, config) -> {}``.
    """

    def remember(
        state: ChatState, runtime: Runtime[Context], config: RunnableConfig
    ) -> dict[str, Any]:
        """Write the last exchange and this turn's new slot values to memory.

        A failed write is logged and the turn still succeeds (the reply was given), except a
        write to a deleted thread: ``ThreadDeletedError`` propagates so the late turn is
        refused.

        Args:
            state: The thread's state after the reply.
            runtime: Carries the per-run :class:`~nodes.context.Context` (``user_id``).
            config: The run config; ``configurable.thread_id`` names the thread.

        Returns:
            ``{}``: memory lives outside the checkpointed state.

        Raises:
            ThreadDeletedError: The thread was deleted while the turn ran.
            TurnCancelled: The turn was cancelled (it is being rolled back).
        """
        ctx = runtime.context or Context()
        thread_id = (config.get("configurable") or {}).get("thread_id")
        if thread_id is None:
            # A stateless call (no thread) has nothing to remember into.
            return {}
        records = exchange_records(state, thread_id=str(thread_id), user_id=ctx.user_id)
        if not records:
            return {}
        cancel_event = cancel_event_of(config)
        if cancel_event is not None and cancel_event.is_set():
            # The caller is rolling this turn back: memory must not keep what the thread won't.
            raise TurnCancelled("the turn was cancelled before it was remembered")
        try:
            memory.add(records)
        except ThreadDeletedError:
            raise
        except Exception:
            logger.exception(
                "memory write failed for thread %s turn %s; the reply stands",
                thread_id,
                records[0].turn,
            )
        return {}

    return remember
