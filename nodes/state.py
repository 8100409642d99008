"""The checkpointed state of one thread: verbatim window, slots, summaries, tracking, account."""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

# typing_extensions: pydantic (hence LangGraph Studio's schemas) needs it before Python 3.12.
from typing_extensions import TypedDict


class SlotChange(TypedDict):
    """A value a slot held before it was replaced (or cleared)."""

    value: str | None
    turn: int
    """Turn the value came from."""
    source: str
    """Who set it: "rule:<name>", "model", "user" (REST correction)."""
    replaced_at: int
    """Turn at which it was replaced."""


class Slot(TypedDict):
    """A typed fact about the user or the conversation, with provenance and history."""

    value: str | None
    """Current value; None when the slot was cleared."""
    turn: int
    """Turn the current value came from."""
    source: str
    """"rule:<name>", "model" or "user"."""
    evidence: str
    """The piece of user text the value was read from ("" for corrections)."""
    history: list[SlotChange]
    """Earlier values, oldest first."""


class SummaryChunk(TypedDict):
    """One L1 line: a one-sentence summary of a folded range of turns."""

    first_turn: int
    last_turn: int
    text: str
    method: str
    """"model" or "extractive"."""


class LongSummary(TypedDict):
    """L2: the long-range structured summary of everything folded out of L1."""

    first_turn: int
    last_turn: int
    topics: list[str]
    facts: list[str]
    """Pinned facts (slot values and key statements) that must survive."""
    resolved: list[str]
    open_questions: list[str]
    narrative: str
    method: str


class PendingQuestion(TypedDict):
    """A user question the assistant has not answered yet."""

    text: str
    turn: int


class Snippet(TypedDict):
    """A recalled memory shown to the model this turn."""

    id: str
    text: str
    thread_id: str
    turn: int
    role: str
    timestamp: str | None
    score: float


class ContextAccount(TypedDict, total=False):
    """What the model saw this turn, counted in the model's own tokens."""

    turn: int
    budget: int
    """context_window - max_new_tokens."""
    sections: dict[str, int]
    """Tokens per section: system, state, summary_l2, summary_l1, memories, window, user."""
    total: int
    dropped: list[str]
    """Sections (or items) left out to fit the budget, lowest priority first."""
    recalled: list[Snippet]
    compaction: dict[str, Any]
    """{"ran": bool, "folded_turns": [first, last], "method": ..., "l2_folded": bool}."""
    profile: str
    usage: dict[str, int]
    """prompt_tokens, completion_tokens, total_tokens of the reply."""


def merge_slots(
    left: dict[str, Slot] | None, right: dict[str, Slot | None] | None
) -> dict[str, Slot]:
    """Reducer for ``slots``: later entries replace earlier ones; ``None`` deletes a slot.

    Nodes compute the full new ``Slot`` (history included) with ``nodes.slots.apply_slot_value``;
    the reducer only merges dictionaries so that updates from several places compose.
    """
    merged = dict(left or {})
    for name, slot in (right or {}).items():
        if slot is None:
            merged.pop(name, None)
        else:
            merged[name] = slot
    return merged


class ChatState(TypedDict, total=False):
    """State checkpointed per thread. Everything is JSON-serialisable and readable in Studio."""

    messages: Annotated[list[AnyMessage], add_messages]
    """The verbatim window only: folded turns leave state through ``RemoveMessage``.
    Each message carries ``additional_kwargs`` {"turn": int, "timestamp": ISO-8601 str}."""
    window_tokens: int
    """Tokens of the verbatim window (user turn included), counted when the turn began."""
    turn: int
    """Number of user turns taken so far (the current turn while a turn runs)."""
    slots: Annotated[dict[str, Slot], merge_slots]
    """Typed facts keyed by slot name (name, email, phone, order_id, language, ...)."""
    summary_l1: list[SummaryChunk]
    """Mid-range one-line summaries, oldest first."""
    summary_l2: LongSummary | None
    """Long-range structured summary."""
    topic: str | None
    entities: list[str]
    """Entities mentioned, most recent last, bounded."""
    pending_questions: list[PendingQuestion]
    recalled: list[Snippet]
    """Snippets recalled for the current turn."""
    context_account: ContextAccount
    """The last turn's account."""
    compaction: dict[str, Any]
    """What compact_summary did this turn (copied into the account)."""
