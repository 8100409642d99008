"""ChatService: the one facade the API, the CLI and embedding backends use to run turns.

It owns the compiled graph, the checkpointer, the vector memory, the thread registry and the
per-thread locks, so that every client gets the same guarantees: one turn at a time per thread,
no partial turn saved on failure or cancellation, deleted threads refuse late writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from graph.context import Context
from graph.state import ContextAccount, LongSummary, PendingQuestion, Slot, SummaryChunk


class ServiceError(Exception):
    """Base class of the errors the service raises on purpose (the API maps them to 4xx)."""


class ThreadNotFoundError(ServiceError):
    """Unknown thread, a deleted one, or one owned by another tenant."""


class ThreadBusyError(ServiceError):
    """A turn is already running on this thread and the caller asked not to wait."""


class ContextLengthError(ServiceError):
    """The prompt cannot fit the model's context window even after dropping optional parts."""


class TurnCancelledError(ServiceError):
    """The caller cancelled the turn (client disconnect); nothing was saved."""


@dataclass(kw_only=True)
class ThreadInfo:
    thread_id: str
    owner: str
    created_at: datetime
    updated_at: datetime
    turns: int = 0
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class WindowMessage:
    role: Literal["user", "assistant"]
    content: str
    turn: int
    timestamp: str | None


@dataclass(kw_only=True)
class ThreadView:
    """What a client may read of a thread's state."""

    info: ThreadInfo
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


# The methods below are the contract; see each docstring. Implementations land in this module.
class ChatService:  # pragma: no cover - contract placeholder, replaced by the implementation
    async def create_thread(
        self, *, owner: str = "anonymous", thread_id: str | None = None, title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadInfo:
        """Register a thread (id generated when not given; an existing id raises ServiceError)."""
        raise NotImplementedError

    async def get_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadView:
        """The thread's readable state; ThreadNotFoundError if unknown/deleted/other owner."""
        raise NotImplementedError

    async def list_threads(
        self, *, owner: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[ThreadInfo], int]:
        """Threads newest-updated first, and the total count."""
        raise NotImplementedError

    async def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        """Delete checkpoints, vectors and slots; later writes to it raise ThreadNotFoundError."""
        raise NotImplementedError

    async def reset_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadInfo:
        """Clear the thread's state, vectors and slots but keep the thread (same id, title)."""
        raise NotImplementedError

    async def history(
        self, thread_id: str, *, owner: str | None = None, limit: int = 50
    ) -> list[CheckpointView]:
        """Checkpoints of the thread, newest first."""
        raise NotImplementedError

    async def update_slots(
        self, thread_id: str, changes: dict[str, str | None], *, owner: str | None = None
    ) -> dict[str, Slot]:
        """Correct (str) or clear (None) slots; the old value goes to the slot's history."""
        raise NotImplementedError

    async def run_turn(
        self, thread_id: str, text: str, *, owner: str | None = None,
        context: Context | None = None, timestamp: datetime | None = None, wait: bool = True,
    ) -> TurnResult:
        """Run one turn to completion. ``wait=False`` raises ThreadBusyError instead of queueing."""
        raise NotImplementedError

    def stream_turn(
        self, thread_id: str, text: str, *, owner: str | None = None,
        context: Context | None = None, timestamp: datetime | None = None, wait: bool = True,
    ) -> AsyncIterator[TurnEvent]:
        """Like run_turn, yielding tokens. Closing the iterator early cancels the turn and
        saves nothing of it."""
        raise NotImplementedError

    async def complete(self, messages: list[BaseMessage], **generation: Any) -> AIMessage:
        """Stateless completion over the given messages (OpenAI API without a thread)."""
        raise NotImplementedError

    def stream_complete(
        self, messages: list[BaseMessage], **generation: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Stateless streaming completion; closing the iterator stops generation."""
        raise NotImplementedError
