"""What the service hands its callers: thread records, readable state, turn results and events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from graph.errors import ServiceError
from nodes.state import ContextAccount, LongSummary, PendingQuestion, Slot, SummaryChunk
from nodes.text import message_text
from store.threads import ThreadRecord

__all__ = [
    "CheckpointView",
    "ThreadRecord",
    "ThreadView",
    "TurnEvent",
    "TurnResult",
    "WindowMessage",
    "window_messages",
]


@dataclass(kw_only=True)
class WindowMessage:
    role: Literal["user", "assistant"]
    content: str
    turn: int
    timestamp: str | None


@dataclass(kw_only=True)
class ThreadView:
    """What a client may read of a thread's state."""

    info: ThreadRecord
    slots: dict[str, Slot]
    summary_l1: list[SummaryChunk]
    summary_l2: LongSummary | None
    topic: str | None
    entities: list[str]
    pending_questions: list[PendingQuestion]
    window: list[WindowMessage]
    context_account: ContextAccount | None


@dataclass(kw_only=True)
class CheckpointView:
    checkpoint_id: str
    created_at: str
    step: int
    source: str
    turn: int
    next: list[str]
    messages: int


@dataclass(kw_only=True)
class TurnResult:
    thread_id: str
    turn: int
    reply: str
    finish_reason: str
    """"stop" or "length"."""
    usage: dict[str, int]
    """prompt_tokens, completion_tokens, total_tokens."""
    context_account: ContextAccount


@dataclass(kw_only=True)
class TurnEvent:
    """One event of a streamed turn: tokens as they come, then exactly one "done" or "error"."""

    type: Literal["token", "done", "error"]
    text: str = ""
    result: TurnResult | None = None
    error: ServiceError | None = None


def window_messages(values: dict[str, Any]) -> list[WindowMessage]:
    """The verbatim window of a thread's state values, as clients read it."""
    out: list[WindowMessage] = []
    for m in values.get("messages") or []:
        if m.type not in ("human", "ai"):
            continue
        out.append(
            WindowMessage(
                role="user" if m.type == "human" else "assistant",
                content=message_text(m),
                turn=int(m.additional_kwargs.get("turn", 0)),
                timestamp=m.additional_kwargs.get("timestamp"),
            )
        )
    return out
