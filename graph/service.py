"""ChatService: the one facade the API, the CLI and embedding backends use to run turns.

It owns the compiled graph, the checkpointer, the vector memory, the thread registry and the
per-thread locks, so that every client gets the same guarantees: one turn at a time per thread,
no partial turn saved on failure or cancellation, deleted threads refuse late writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    HumanMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from graph.builder import Deps, compile_graph
from graph.context import Context
from graph.settings import Settings
from graph.state import (
    ChatState,
    ContextAccount,
    LongSummary,
    PendingQuestion,
    Slot,
    SummaryChunk,
)
from nodes.budget import ContextOverflowError
from nodes.generate_reply import TurnCancelled
from nodes.postprocess import postprocess_reply
from nodes.remember import fact_id, fact_record
from nodes.slots import apply_slot_value, clear_slot
from store.checkpointer import open_checkpointer, prune_checkpoints
from store.threads import ThreadRegistry, open_thread_registry
from store.types import Embedder, MemoryRecord, MemoryStore, ThreadDeletedError

log = logging.getLogger(__name__)


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


class TurnFailedError(ServiceError):
    """The turn failed inside the service (model or store error); nothing was saved.

    The message is generic on purpose; the cause is chained and logged, never shown to clients.
    """


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


_SEED_RANGE = 2**32


def _model_seed(generation: dict[str, Any]) -> dict[str, Any]:
    """``generation`` with its ``seed`` folded into the range the model's RNG accepts.

    Clients may send any integer (OpenAI's ``seed`` is unbounded, negative included), while
    transformers' ``set_seed`` takes only 0 to 2**32 - 1: an out-of-range seed would fail the
    turn with a 500. Folding keeps every seed deterministic.
    """
    seed = generation.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < _SEED_RANGE:
        return {**generation, "seed": seed % _SEED_RANGE}
    return generation


def valid_thread_id(thread_id: object) -> bool:
    """Whether ``thread_id`` can name a thread: 1-128 printable characters, not all blank."""
    return (
        isinstance(thread_id, str)
        and 0 < len(thread_id) <= 128
        and thread_id.isprintable()
        and bool(thread_id.strip())
    )


class _ThreadLocks:
    """One asyncio lock per thread, dropped when nobody holds or waits for it.

    ``enter`` registers a user synchronously (no await), so a check-then-enter on the event
    loop is atomic: two requests arriving together cannot both see a thread as free.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, thread_id: str) -> bool:
        """Whether a turn holds or waits for the thread."""
        return thread_id in self._locks

    @property
    def waiting(self) -> int:
        """Turns queued behind another turn of the same thread."""
        return sum(max(0, users - 1) for _, users in self._locks.values())

    def enter(self, thread_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(thread_id, (asyncio.Lock(), 0))
        self._locks[thread_id] = (lock, users + 1)
        return lock

    def leave(self, thread_id: str) -> None:
        lock, users = self._locks[thread_id]
        if users <= 1:
            del self._locks[thread_id]
        else:
            self._locks[thread_id] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        lock = self.enter(thread_id)
        try:
            async with lock:
                yield
        finally:
            self.leave(thread_id)


def _window(values: dict[str, Any]) -> list[WindowMessage]:
    out: list[WindowMessage] = []
    for m in values.get("messages") or []:
        if m.type not in ("human", "ai"):
            continue
        out.append(
            WindowMessage(
                role="user" if m.type == "human" else "assistant",
                content=str(m.content),
                turn=int(m.additional_kwargs.get("turn", 0)),
                timestamp=m.additional_kwargs.get("timestamp"),
            )
        )
    return out


class ChatService:
    """Runs turns on threads with the guarantees every client relies on.

    Args:
        graph: The turn graph compiled with ``checkpointer``.
        chat_model: The model (stateless completions go straight to it).
        checkpointer: The saver the graph was compiled with.
        registry: The thread registry (owners, titles, tombstones).
        memory: Vector memory, or None.
        defaults: The context every turn starts from (settings-derived).
        keep_checkpoints: Checkpoints kept per thread after each turn (0 keeps all).
    """

    def __init__(
        self,
        *,
        graph: CompiledStateGraph[ChatState, Context, ChatState, ChatState],
        chat_model: BaseChatModel,
        checkpointer: BaseCheckpointSaver,
        registry: ThreadRegistry,
        memory: MemoryStore | None = None,
        defaults: Context | None = None,
        keep_checkpoints: int = 20,
    ) -> None:
        self.graph = graph
        self.chat_model = chat_model
        self.checkpointer = checkpointer
        self.registry = registry
        self.memory = memory
        self.defaults = defaults or Context()
        self.keep_checkpoints = keep_checkpoints
        self._locks = _ThreadLocks()
        self._running: dict[str, threading.Event] = {}

    # -- helpers -----------------------------------------------------------------------------
    @property
    def waiting_turns(self) -> int:
        """Turns waiting for their thread's lock (the queue depth metric)."""
        return self._locks.waiting

    def context(self, **overrides: Any) -> Context:
        """The default context with per-run overrides (unknown names raise TypeError)."""
        return replace(self.defaults, **overrides)

    @staticmethod
    def _config(thread_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id}}

    async def _info(self, thread_id: str, owner: str | None) -> ThreadInfo:
        if not valid_thread_id(thread_id):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        record = await self.registry.get(thread_id)
        if record is None or (owner is not None and record.owner != owner):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        return _to_info(record)

    # -- threads -----------------------------------------------------------------------------
    async def create_thread(
        self,
        *,
        owner: str = "anonymous",
        thread_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadInfo:
        """Register a thread (id generated when not given; an existing id raises ServiceError)."""
        thread_id = thread_id or uuid.uuid4().hex
        if not valid_thread_id(thread_id):
            raise ServiceError("a thread id is 1 to 128 printable characters, not only white space")
        if await self.registry.is_deleted(thread_id):
            raise ServiceError(f"thread id {thread_id!r} belonged to a deleted thread")
        try:
            record = await self.registry.create(
                thread_id, owner=owner, title=title, metadata=metadata or {}
            )
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        return _to_info(record)

    async def ensure_thread(self, thread_id: str, *, owner: str = "anonymous") -> ThreadInfo:
        """The thread, created for ``owner`` if it does not exist yet."""
        if not valid_thread_id(thread_id):
            raise ServiceError("a thread id is 1 to 128 printable characters, not only white space")
        record = await self.registry.get(thread_id)
        if record is None:
            if await self.registry.is_deleted(thread_id):
                raise ThreadNotFoundError(f"thread {thread_id!r} not found")
            return await self.create_thread(owner=owner, thread_id=thread_id)
        if record.owner != owner:
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        return _to_info(record)

    async def get_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadView:
        """The thread's readable state; ThreadNotFoundError if unknown/deleted/other owner."""
        info = await self._info(thread_id, owner)
        snapshot = await self.graph.aget_state(self._config(thread_id))
        values: dict[str, Any] = dict(snapshot.values or {})
        return ThreadView(
            info=info,
            slots=dict(values.get("slots") or {}),
            summary_l1=list(values.get("summary_l1") or []),
            summary_l2=values.get("summary_l2"),
            topic=values.get("topic"),
            entities=list(values.get("entities") or []),
            pending_questions=list(values.get("pending_questions") or []),
            window=_window(values),
            context_account=values.get("context_account"),
        )

    async def list_threads(
        self, *, owner: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[ThreadInfo], int]:
        """Threads newest-updated first, and the total count."""
        records, total = await self.registry.list(owner=owner, limit=limit, offset=offset)
        return [_to_info(r) for r in records], total

    async def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        """Delete checkpoints, vectors and slots; later writes to it raise ThreadNotFoundError."""
        await self._info(thread_id, owner)
        # Tombstone first so that nothing new starts, then stop a running turn, then wipe.
        await self.registry.mark_deleted(thread_id)
        running = self._running.get(thread_id)
        if running is not None:
            running.set()
        async with self._locks.hold(thread_id):
            await self.checkpointer.adelete_thread(thread_id)
            if self.memory is not None:
                await asyncio.to_thread(self.memory.delete_thread, thread_id)

    async def reset_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadInfo:
        """Clear the thread's state, vectors and slots but keep the thread (same id, title)."""
        await self._info(thread_id, owner)
        async with self._locks.hold(thread_id):
            await self.checkpointer.adelete_thread(thread_id)
            if self.memory is not None:
                await asyncio.to_thread(self.memory.delete_thread, thread_id)
                await asyncio.to_thread(self.memory.forget_thread_tombstone, thread_id)
            await self.registry.touch(thread_id, turns=0)
        return await self._info(thread_id, owner)

    async def history(
        self, thread_id: str, *, owner: str | None = None, limit: int = 50
    ) -> list[CheckpointView]:
        """Checkpoints of the thread, newest first."""
        await self._info(thread_id, owner)
        out: list[CheckpointView] = []
        async for snap in self.graph.aget_state_history(self._config(thread_id), limit=limit):
            values = snap.values or {}
            out.append(
                CheckpointView(
                    checkpoint_id=str(snap.config["configurable"]["checkpoint_id"]),
                    created_at=str(snap.created_at),
                    step=int((snap.metadata or {}).get("step", 0)),
                    source=str((snap.metadata or {}).get("source", "")),
                    turn=int(values.get("turn", 0)),
                    next=list(snap.next),
                    messages=len(values.get("messages") or []),
                )
            )
        return out

    async def update_slots(
        self, thread_id: str, changes: dict[str, str | None], *, owner: str | None = None
    ) -> dict[str, Slot]:
        """Correct (str) or clear (None) slots; the old value goes to the slot's history.

        A corrected value also replaces the slot's fact in vector memory, as a correction made
        in conversation does, and a cleared slot's fact is deleted, so that recall no longer
        offers the old value.
        """
        info = await self._info(thread_id, owner)
        async with self._locks.hold(thread_id):
            config = self._config(thread_id)
            snapshot = await self.graph.aget_state(config)
            values = snapshot.values or {}
            current: dict[str, Slot] = dict(values.get("slots") or {})
            turn = int(values.get("turn") or 0)
            updates: dict[str, Slot] = {}
            for name, value in changes.items():
                if value is None:
                    if name not in current:
                        raise ServiceError(f"slot {name!r} does not exist")
                    cleared = clear_slot(current[name], turn=turn)
                    if cleared is not None:
                        updates[name] = cleared
                else:
                    slot = apply_slot_value(
                        current.get(name), value, turn=turn, source="user", evidence=""
                    )
                    if slot is not None:
                        updates[name] = slot
            if updates:
                await self.graph.aupdate_state(config, {"slots": updates}, as_node="remember")
                facts = _fact_records(thread_id, info.owner, updates, turn=turn)
                cleared_ids = [
                    fact_id(thread_id, name)
                    for name, slot in updates.items()
                    if slot.get("value") in (None, "")
                ]
                if self.memory is not None and facts:
                    await asyncio.to_thread(self.memory.add, facts)
                if self.memory is not None and cleared_ids:
                    await asyncio.to_thread(self.memory.delete_records, cleared_ids)
                await self.registry.touch(thread_id)
                await self._prune(thread_id)
            current.update(updates)
            return current

    # -- turns -------------------------------------------------------------------------------
    async def run_turn(
        self,
        thread_id: str,
        text: str,
        *,
        owner: str | None = None,
        context: Context | None = None,
        timestamp: datetime | None = None,
        wait: bool = True,
    ) -> TurnResult:
        """Run one turn to completion. ``wait=False`` raises ThreadBusyError instead of queueing."""
        result: TurnResult | None = None
        async for event in self.stream_turn(
            thread_id, text, owner=owner, context=context, timestamp=timestamp, wait=wait
        ):
            if event.type == "error" and event.error is not None:
                raise event.error
            if event.type == "done":
                result = event.result
        assert result is not None
        return result

    async def stream_turn(
        self,
        thread_id: str,
        text: str,
        *,
        owner: str | None = None,
        context: Context | None = None,
        timestamp: datetime | None = None,
        wait: bool = True,
    ) -> AsyncIterator[TurnEvent]:
        """Like run_turn, yielding tokens. Closing the iterator early cancels the turn and
        saves nothing of it. Errors before the first token are raised, later ones yielded."""
        if not isinstance(text, str) or not text.strip():
            raise ServiceError("the message is empty")
        await self._info(thread_id, owner)
        base = context or self.defaults
        ctx = replace(
            base, cancel_event=threading.Event(), generation=_model_seed(dict(base.generation))
        )
        if not wait and self._locks.busy(thread_id):
            raise ThreadBusyError(f"a turn is already running on thread {thread_id!r}")
        lock = self._locks.enter(thread_id)  # no await since the check: atomic on the loop
        queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        task = asyncio.create_task(
            self._turn_task(thread_id, lock, text, owner, ctx, timestamp, queue)
        )
        finished = False
        try:
            while True:
                event = await queue.get()
                if event is None:
                    finished = True
                    break
                yield event
        finally:
            if not finished:
                assert ctx.cancel_event is not None
                ctx.cancel_event.set()
            # The task rolls back and releases the lock itself; wait so the caller knows the
            # thread is consistent when the iterator is closed.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _turn_task(
        self,
        thread_id: str,
        lock: asyncio.Lock,
        text: str,
        owner: str | None,
        ctx: Context,
        timestamp: datetime | None,
        queue: asyncio.Queue[TurnEvent | None],
    ) -> None:
        cancel_event = ctx.cancel_event
        assert cancel_event is not None
        try:
            async with lock:
                record = await self.registry.get(thread_id)
                if record is None or (owner is not None and record.owner != owner):
                    raise ThreadNotFoundError(f"thread {thread_id!r} not found")
                if cancel_event.is_set():
                    # The caller left while this turn waited for the thread: run nothing.
                    raise TurnCancelledError("the turn was cancelled")
                if owner is not None and ctx.user_id == Context().user_id:
                    ctx = replace(ctx, user_id=owner)
                self._running[thread_id] = cancel_event
                try:
                    result = await self._run_locked(thread_id, text, ctx, timestamp, queue)
                finally:
                    self._running.pop(thread_id, None)
                await queue.put(TurnEvent(type="done", result=result))
        except ServiceError as exc:
            await queue.put(TurnEvent(type="error", error=exc))
        except Exception as exc:
            log.exception("turn failed on thread %s", thread_id)
            failed = TurnFailedError("the turn failed")
            failed.__cause__ = exc
            await queue.put(TurnEvent(type="error", error=failed))
        finally:
            self._locks.leave(thread_id)
            await queue.put(None)

    async def _run_locked(
        self,
        thread_id: str,
        text: str,
        ctx: Context,
        timestamp: datetime | None,
        queue: asyncio.Queue[TurnEvent | None],
    ) -> TurnResult:
        assert ctx.cancel_event is not None
        config = self._config(thread_id)
        before = await self.graph.aget_state(config)
        before_id = before.config["configurable"].get("checkpoint_id") if before.values else None
        kwargs: dict[str, Any] = {}
        if timestamp is not None:
            stamp = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
            kwargs["timestamp"] = stamp.isoformat()
        user = HumanMessage(content=text, additional_kwargs=kwargs)
        try:
            # aclosing: LangGraph writes its exit checkpoint when the stream closes, so it must
            # be closed before a rollback, never after it.
            events = cast(
                AsyncGenerator[tuple[BaseMessageChunk, dict[str, Any]], None],
                self.graph.astream(
                    {"messages": [user]},
                    config,
                    context=ctx,
                    stream_mode="messages",
                    durability="exit",
                ),
            )
            async with contextlib.aclosing(events) as stream:
                async for chunk, meta in stream:
                    if ctx.cancel_event.is_set():
                        raise TurnCancelledError("the turn was cancelled")
                    if (
                        meta.get("langgraph_node") == "generate_reply"
                        and isinstance(chunk, AIMessageChunk)
                        and chunk.content
                    ):
                        await queue.put(TurnEvent(type="token", text=str(chunk.content)))
            if ctx.cancel_event.is_set():
                raise TurnCancelledError("the turn was cancelled")
        except BaseException as exc:
            await self._rollback(thread_id, before if before_id else None)
            cancelled = isinstance(exc, TurnCancelledError | TurnCancelled)
            if cancelled and await self.registry.is_deleted(thread_id):
                # Cancelled because the thread was deleted under it: for the client the thread
                # is gone, not busy.
                raise ThreadNotFoundError(f"thread {thread_id!r} was deleted") from exc
            if isinstance(exc, ServiceError):
                raise
            if isinstance(exc, ContextOverflowError):
                raise ContextLengthError(str(exc)) from exc
            if isinstance(exc, TurnCancelled):
                raise TurnCancelledError(str(exc)) from exc
            if isinstance(exc, ThreadDeletedError):
                raise ThreadNotFoundError(f"thread {thread_id!r} was deleted") from exc
            raise
        after = await self.graph.aget_state(config)
        values = after.values or {}
        turn = int(values.get("turn") or 0)
        account = cast(ContextAccount, values.get("context_account") or {})
        last = (values.get("messages") or [None])[-1]
        reply = str(last.content) if last is not None and last.type == "ai" else ""
        finish = (last.response_metadata or {}).get("finish_reason", "stop") if last else "stop"
        usage = dict(account.get("usage") or {})
        usage.setdefault("prompt_tokens", int(account.get("total", 0)))
        usage.setdefault("completion_tokens", 0)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        await self.registry.touch(thread_id, turns=turn)
        await self._prune(thread_id)
        return TurnResult(
            thread_id=thread_id,
            turn=turn,
            reply=reply,
            finish_reason=finish,
            usage=usage,
            context_account=account,
        )

    async def _prune(self, thread_id: str) -> None:
        """Keep the thread's last ``keep_checkpoints`` checkpoints (every write adds one)."""
        if self.keep_checkpoints > 0:
            try:
                await prune_checkpoints(self.checkpointer, thread_id, keep=self.keep_checkpoints)
            except Exception:  # pruning is housekeeping; the write is saved either way
                log.warning("could not prune checkpoints of %s", thread_id, exc_info=True)

    async def _rollback(self, thread_id: str, before: StateSnapshot | None) -> None:
        """Make the pre-turn checkpoint the latest again (or remove a first, failed turn)."""
        try:
            if before is None:
                await self.checkpointer.adelete_thread(thread_id)
            else:
                latest = await self.graph.aget_state(self._config(thread_id))
                if latest.config["configurable"].get("checkpoint_id") != before.config[
                    "configurable"
                ].get("checkpoint_id"):
                    await self.graph.aupdate_state(before.config, None, as_node="__copy__")
        except Exception:
            log.exception("could not roll back thread %s", thread_id)

    # -- stateless ---------------------------------------------------------------------------
    async def complete(self, messages: list[BaseMessage], **generation: Any) -> AIMessage:
        """Stateless completion over the given messages (OpenAI API without a thread)."""
        reply = await self.chat_model.ainvoke(messages, **_model_seed(generation))
        return AIMessage(
            content=postprocess_reply(str(reply.content)),
            usage_metadata=getattr(reply, "usage_metadata", None),
            response_metadata=reply.response_metadata,
        )

    async def stream_complete(
        self, messages: list[BaseMessage], **generation: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Stateless streaming completion; closing the iterator stops generation."""
        cancel = threading.Event()
        stream = cast(
            AsyncGenerator[BaseMessageChunk, None],
            self.chat_model.astream(messages, cancel_event=cancel, **_model_seed(generation)),
        )
        try:
            async for chunk in stream:
                yield cast(AIMessageChunk, chunk)
        finally:
            cancel.set()
            await stream.aclose()

    async def ready(self) -> dict[str, bool]:
        """Readiness of the parts: model loaded, checkpointer and memory reachable."""
        checks = {"model": self.chat_model is not None}
        try:
            await self.registry.list(owner=None, limit=1, offset=0)
            checks["checkpointer"] = True
        except Exception:
            checks["checkpointer"] = False
        if self.memory is not None:
            try:
                await asyncio.to_thread(self.memory.count)
                checks["memory"] = True
            except Exception:
                checks["memory"] = False
        return checks


def _fact_records(
    thread_id: str, user_id: str, slots: dict[str, Slot], *, turn: int
) -> list[MemoryRecord]:
    """The memory facts of corrected slots, as ``remember`` writes them."""
    stamp = datetime.now(UTC).isoformat()
    return [
        fact_record(thread_id, user_id, name, slot, turn=turn, timestamp=stamp)
        for name, slot in sorted(slots.items())
        if slot.get("value") not in (None, "")
    ]


def _to_info(record: Any) -> ThreadInfo:
    return ThreadInfo(
        thread_id=record.thread_id,
        owner=record.owner,
        created_at=record.created_at,
        updated_at=record.updated_at,
        turns=record.turns,
        title=record.title,
        metadata=dict(record.metadata or {}),
    )


def default_context(settings: Settings) -> Context:
    """The per-run defaults a deployment's settings imply."""
    return Context(
        profile=settings.default_profile,
        context_window=settings.context_window,
        max_new_tokens=settings.max_new_tokens,
        window_tokens=settings.window_tokens,
        top_k=settings.top_k,
        cross_thread_memory=settings.cross_thread_memory,
    )


def memory_from_settings(settings: Settings, embedder: Embedder) -> MemoryStore:
    """Chroma at ``settings.chroma_url`` (a server) or in the local folder of the settings."""
    from store.vector_memory import ChromaMemory

    if settings.chroma_url:
        return ChromaMemory.from_url(settings.chroma_url, embedder)
    return ChromaMemory.persistent(settings.resolved_chroma_path(), embedder)


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings | None = None,
    *,
    chat_model: BaseChatModel | None = None,
    embedder: Embedder | str | None = None,
    memory: MemoryStore | None = None,
) -> AsyncIterator[ChatService]:
    """Open everything a service needs from settings; parts given as arguments are used as is.

    Args:
        settings: Deployment settings (built from the environment when None).
        chat_model: A ready chat model; loaded from ``settings.model`` when None.
        embedder: An embedder or a name for ``load_embedder``; ``settings.embedder`` when None.
        memory: A ready vector memory; a Chroma store from settings when None.
    """
    from graph.loading import load_chat_model
    from store.embeddings import load_embedder

    settings = settings or Settings()
    if chat_model is None:
        chat_model = await asyncio.to_thread(load_chat_model, settings)
    if memory is None:
        if embedder is None or isinstance(embedder, str):
            embedder = await asyncio.to_thread(load_embedder, embedder or settings.embedder)
        memory = await asyncio.to_thread(memory_from_settings, settings, embedder)
    url = settings.resolved_checkpointer_url()
    async with open_checkpointer(url) as saver, open_thread_registry(url) as registry:
        graph = compile_graph(Deps(chat_model=chat_model, memory=memory), checkpointer=saver)
        yield ChatService(
            graph=graph,
            chat_model=chat_model,
            checkpointer=saver,
            registry=registry,
            memory=memory,
            defaults=default_context(settings),
            keep_checkpoints=settings.keep_checkpoints,
        )
