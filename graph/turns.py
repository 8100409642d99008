"""The turn runner: one turn at a time per thread, streamed, and rolled back unless it finishes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from langchain_core.messages import HumanMessage
from langgraph.types import StateSnapshot

from graph.core import ServiceCore
from graph.errors import (
    ContextLengthError,
    ServiceError,
    ThreadBusyError,
    ThreadNotFoundError,
    TurnCancelledError,
    TurnFailedError,
)
from graph.locks import ThreadBusy
from graph.views import TurnEvent, TurnResult
from nodes.context import Context, with_cancel_event
from nodes.errors import ContextOverflowError, ThreadDeletedError, TurnCancelled
from nodes.generate_reply import REPLY_DELTA
from nodes.state import ContextAccount
from nodes.text import message_text

__all__ = ["TurnRunner"]

log = logging.getLogger(__name__)


class TurnRunner(ServiceCore):
    """Runs turns with the guarantees every client relies on: one at a time per thread, nothing
    saved of a turn that fails or is cancelled, no turn on a deleted thread."""

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
        await self._record(thread_id, owner)
        base = context or self.defaults
        ctx = base
        cancel_event = threading.Event()
        queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        task = asyncio.create_task(
            self._turn_task(thread_id, wait, text, owner, ctx, cancel_event, timestamp, queue)
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
                cancel_event.set()
            # The task rolls back and releases the lock itself; wait so the caller knows the
            # thread is consistent when the iterator is closed.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _turn_task(
        self,
        thread_id: str,
        wait: bool,
        text: str,
        owner: str | None,
        ctx: Context,
        cancel_event: threading.Event,
        timestamp: datetime | None,
        queue: asyncio.Queue[TurnEvent | None],
    ) -> None:
        try:
            async with self._locks.hold(thread_id, wait=wait):
                record = await self.registry.get(thread_id)
                if record is None or (owner is not None and record.owner != owner):
                    raise ThreadNotFoundError(f"thread {thread_id!r} not found")
                if cancel_event.is_set():
                    # The caller left while this turn waited for the thread: run nothing.
                    raise TurnCancelledError("the turn was cancelled")
                if owner is not None and ctx.user_id == Context().user_id:
                    ctx = replace(ctx, user_id=owner)
                with self._running.running(thread_id, cancel_event):
                    result = await self._run_locked(
                        thread_id, text, ctx, cancel_event, timestamp, queue
                    )
                await queue.put(TurnEvent(type="done", result=result))
        except ThreadBusy:
            busy = ThreadBusyError(f"a turn is already running on thread {thread_id!r}")
            await queue.put(TurnEvent(type="error", error=busy))
        except ServiceError as exc:
            await queue.put(TurnEvent(type="error", error=exc))
        except Exception as exc:
            log.exception("turn failed on thread %s", thread_id)
            failed = TurnFailedError("the turn failed")
            failed.__cause__ = exc
            await queue.put(TurnEvent(type="error", error=failed))
        finally:
            await queue.put(None)

    async def _run_locked(
        self,
        thread_id: str,
        text: str,
        ctx: Context,
        cancel_event: threading.Event,
        timestamp: datetime | None,
        queue: asyncio.Queue[TurnEvent | None],
    ) -> TurnResult:
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
                AsyncGenerator[Any, None],
                self.graph.astream(
                    {"messages": [user]},
                    with_cancel_event(config, cancel_event),
                    context=ctx,
                    stream_mode="custom",
                    durability="exit",
                ),
            )
            async with contextlib.aclosing(events) as stream:
                async for item in stream:
                    if cancel_event.is_set():
                        raise TurnCancelledError("the turn was cancelled")
                    # generate_reply writes the post-processed reply piece by piece: what is
                    # streamed is exactly what the turn saves.
                    if isinstance(item, dict) and item.get(REPLY_DELTA):
                        await queue.put(TurnEvent(type="token", text=str(item[REPLY_DELTA])))
            if cancel_event.is_set():
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
        reply = message_text(last) if last is not None and last.type == "ai" else ""
        finish = (last.response_metadata or {}).get("finish_reason", "stop") if last else "stop"
        usage = dict(account.get("usage") or {})
        usage.setdefault("prompt_tokens", int(account.get("total", 0)))
        usage.setdefault("completion_tokens", 0)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        try:
            await self.registry.touch(thread_id, turns=turn)
        except ThreadDeletedError as exc:
            # Deleted (by another process) after the turn's last token: as for a deletion
            # during it, nothing of the turn stays, and the deletion wipes the rest once this
            # turn gives the lock back.
            await self._rollback(thread_id, before if before_id else None)
            raise ThreadNotFoundError(f"thread {thread_id!r} was deleted") from exc
        await self._prune(thread_id)
        return TurnResult(
            thread_id=thread_id,
            turn=turn,
            reply=reply,
            finish_reason=finish,
            usage=usage,
            context_account=account,
        )

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
