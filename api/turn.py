"""One turn as a route serves it: timer, idempotency claim, replay, stream lifecycle, errors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import Annotated, Any, Protocol, TypeVar

import anyio
from fastapi import Depends, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from api.auth import ANONYMOUS, OwnerDep
from api.deps import MetricsDep
from api.errors import ApiError, ClientDisconnected, stream_error_body
from api.idempotency import REPLAY_HEADER, Claim, claim_for_request
from api.metrics import Metrics, TurnTimer
from api.schemas import Usage
from graph.errors import ServiceError
from graph.service import ChatService
from graph.views import TurnEvent, TurnResult
from nodes.context import Context

__all__ = [
    "Answer",
    "EventWriter",
    "TurnDep",
    "TurnScope",
    "close_stream",
    "turn_context",
    "turn_pieces",
]

PING_S = 15
"""Seconds between keep-alive comments on an idle stream (proxies close silent ones)."""

REPLAYED = {REPLAY_HEADER: "true"}


class Answer(Protocol):
    """A finished turn or completion, as a route answers it and a retry gets it again."""

    @property
    def reply(self) -> str:
        """The reply's text."""
        ...

    @property
    def usage(self) -> Usage:
        """Its tokens."""
        ...


A = TypeVar("A", bound=Answer)
A_contra = TypeVar("A_contra", bound=Answer, contravariant=True)


class EventWriter(Protocol[A_contra]):
    """How one API frames a streamed answer as server-sent events."""

    @property
    def sep(self) -> str | None:
        """Line separator of the events (None: sse-starlette's ``\\r\\n``)."""
        ...

    def opening(self) -> Iterable[ServerSentEvent]:
        """Events sent before the first token."""
        ...

    def token(self, text: str) -> Iterable[ServerSentEvent]:
        """Events carrying one piece of the reply."""
        ...

    def finish(self, answer: A_contra) -> Iterable[ServerSentEvent]:
        """Events closing a reply that completed."""
        ...

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        """The event telling the client the reply failed (an error body in OpenAI's shape)."""
        ...

    def closing(self) -> Iterable[ServerSentEvent]:
        """Events sent last, after the answer or the error."""
        ...


Pieces = AsyncGenerator[str | A, None]
"""A reply as a route streams it: its text in pieces, then the finished answer."""


class TurnScope:
    """Everything around one turn (or stateless completion) that every route does the same way.

    A route parses its request, calls ``claim`` with what makes it unique, then ``run`` (answer
    once finished) or ``stream`` (answer as server-sent events). The scope presents the
    Idempotency-Key and replays a remembered answer instead of running again, times the turn
    for the metrics, waits for the first piece of a stream so that errors before any token get
    their own status code, closes the service's stream when the client leaves (which cancels
    the turn), and sends a failure after the first token as an error event.

    Args:
        request: The request being served.
        response: FastAPI's response for headers (``Idempotent-Replayed``).
        owner: The caller's owner id.
        metrics: The app's metrics.
    """

    def __init__(
        self, request: Request, response: Response, *, owner: str, metrics: Metrics
    ) -> None:
        self._request = request
        self._response = response
        self._owner = owner
        self._metrics = metrics
        self._claim: Claim | None = None
        self._mode = "json"

    async def claim(self, payload: Any, *, stream: bool) -> None:
        """Present the request's Idempotency-Key, if it has one.

        Args:
            payload: The JSON-able request that the key must match on a retry.
            stream: Whether the client asked for a stream (the metrics' mode).

        Raises:
            ApiError: 422 when the key was used with another payload, 400 for a bad key.
        """
        self._mode = "stream" if stream else "json"
        self._claim = await claim_for_request(self._request, owner=self._owner, payload=payload)

    @property
    def replayed(self) -> bool:
        """Whether this request is a retry that gets a remembered answer."""
        return self._claimed().replayed

    async def run(
        self,
        work: Callable[[], Awaitable[A]],
        *,
        cancel: threading.Event | None = None,
        stop_when_client_leaves: bool = True,
    ) -> A:
        """Run ``work`` to its answer, or return the answer remembered for this key.

        Args:
            work: Starts the turn; called only when there is nothing to replay.
            cancel: Set when the client leaves, for generation running in a worker thread.
            stop_when_client_leaves: Cancel the work if the client disconnects first.

        Returns:
            The answer.

        Raises:
            ClientDisconnected: The client left before the answer (answered with 499).
        """
        claim = self._claimed()
        if claim.replayed:
            self._response.headers.update(REPLAYED)
            replayed: A = claim.result
            return replayed
        timer = TurnTimer(self._metrics, mode=self._mode)
        try:
            if stop_when_client_leaves:
                answer = await _unless_disconnected(self._request, work(), cancel)
            else:
                answer = await work()
        except BaseException as exc:
            await self._failed(timer, exc)
            raise
        timer.finish("ok", answer.usage.model_dump())
        await claim.finish(answer)
        return answer

    async def stream(
        self, pieces: Callable[[], Pieces[A]], writer: EventWriter[A]
    ) -> EventSourceResponse:
        """Stream a reply as server-sent events, or the answer remembered for this key.

        The first piece is awaited before answering, so that a failure before any token (an
        unknown thread, a busy one) is a plain error response with its own status code.

        Args:
            pieces: Starts the turn; called only when there is nothing to replay.
            writer: Frames the events.

        Returns:
            The streaming response.
        """
        claim = self._claimed()
        if claim.replayed:
            return self.answer_stream(claim.result, writer)
        timer = TurnTimer(self._metrics, mode=self._mode)
        source = pieces()
        try:
            first = await anext(source, None)
            if first is None:
                raise _ended_early()
        except BaseException as exc:
            await self._failed(timer, exc)
            await close_stream(source)
            raise
        # The background task closes the service stream even if the response never starts.
        return EventSourceResponse(
            self._events(first, source, writer, timer),
            ping=PING_S,
            sep=writer.sep,
            background=BackgroundTask(self._abandon, source, timer),
        )

    def answer_stream(self, answer: A, writer: EventWriter[A]) -> EventSourceResponse:
        """A finished answer as a stream of one piece (a replay, or a reply checked in full).

        Args:
            answer: The answer.
            writer: Frames the events.

        Returns:
            The streaming response.
        """

        async def events() -> AsyncIterator[ServerSentEvent]:
            for batch in (
                writer.opening(),
                writer.token(answer.reply),
                writer.finish(answer),
                writer.closing(),
            ):
                for event in batch:
                    yield event

        headers = REPLAYED if self.replayed else None
        return EventSourceResponse(events(), ping=PING_S, sep=writer.sep, headers=headers)

    async def _events(
        self, first: str | A, source: Pieces[A], writer: EventWriter[A], timer: TurnTimer
    ) -> AsyncIterator[ServerSentEvent]:
        claim = self._claimed()
        try:
            for event in writer.opening():
                yield event
            try:
                piece: str | A | None = first
                while isinstance(piece, str):
                    if piece:
                        timer.first_token()
                    for event in writer.token(piece):
                        yield event
                    piece = await anext(source, None)
                if piece is None:
                    raise _ended_early()
                timer.finish("ok", piece.usage.model_dump())
                await claim.finish(piece)
                for event in writer.finish(piece):
                    yield event
            except Exception as exc:  # any failure reaches the client as an error event
                timer.finish("error")
                yield writer.error(stream_error_body(exc))
            for event in writer.closing():
                yield event
        finally:
            await self._abandon(source, timer)

    async def _abandon(self, source: Pieces[A], timer: TurnTimer) -> None:
        # No-ops once the turn has finished; otherwise the client left mid-stream, and a retry
        # of the unfinished turn must run again.
        timer.finish("cancelled")
        with anyio.CancelScope(shield=True):
            await self._claimed().release()
        await close_stream(source)

    async def _failed(self, timer: TurnTimer, exc: BaseException) -> None:
        left = isinstance(exc, ClientDisconnected) or not isinstance(exc, Exception)
        timer.finish("cancelled" if left else "error")
        with anyio.CancelScope(shield=True):
            await self._claimed().release()

    def _claimed(self) -> Claim:
        if self._claim is None:
            raise RuntimeError("TurnScope.claim must come before run or stream")
        return self._claim


def get_turn(
    request: Request, response: Response, owner: OwnerDep, metrics: MetricsDep
) -> TurnScope:
    """A fresh turn scope for the request (FastAPI dependency)."""
    return TurnScope(request, response, owner=owner, metrics=metrics)


TurnDep = Annotated[TurnScope, Depends(get_turn)]


def _ended_early() -> ApiError:
    return ApiError(
        500, "The turn ended without a reply.", type="server_error", code="internal_error"
    )


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close a stream of the service, which cancels its turn if it has not finished.

    Shielded: on a client disconnect this runs inside a cancelled scope, and the service needs
    its awaits to cancel the turn and release the thread's lock.

    Args:
        stream: An async generator (the service types its streams as iterators).
    """
    if isinstance(stream, AsyncGenerator):
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def turn_pieces(
    events: AsyncIterator[TurnEvent], answer: Callable[[TurnResult], A]
) -> Pieces[A]:
    """A streamed turn as pieces: its tokens as they come, then its answer.

    Args:
        events: The service's ``stream_turn``.
        answer: Makes the route's answer of the turn's result.

    Yields:
        Token texts, then the answer.

    Raises:
        ServiceError: The turn failed (an ``error`` event).
    """
    try:
        async for event in events:
            if event.type == "token":
                yield event.text
            elif event.type == "done" and event.result is not None:
                yield answer(event.result)
                return
            else:
                raise event.error or ServiceError("The turn failed.")
    finally:
        await close_stream(events)


def turn_context(
    service: ChatService,
    *,
    owner: str,
    user: str | None,
    profile: str | None,
    max_tokens: int | None,
    generation: dict[str, Any],
    system_prompt: str | None = None,
) -> Context:
    """The service's default context with what one request sets on top.

    Args:
        service: The service (its defaults carry the deployment's settings).
        owner: The caller's owner id.
        user: The end user the request names, if any.
        profile: The generation profile the request names, if any.
        max_tokens: The reply limit the request sets, if any.
        generation: Sampling overrides the request sets (temperature, top_p, seed, stop).
        system_prompt: Replaces the role part of the system prompt.

    Returns:
        The turn's context.
    """
    base = service.context()
    changes: dict[str, Any] = {
        "user_id": _user_id(owner, user),
        "generation": {**base.generation, **generation},
    }
    if profile is not None:
        changes["profile"] = profile
    if max_tokens is not None:
        changes["max_new_tokens"] = max_tokens
    if system_prompt is not None:
        changes["system_prompt"] = system_prompt
    return service.context(**changes)


def _user_id(owner: str, requested: str | None) -> str:
    # With keys on, a tenant's end users live under the tenant, so one tenant can never name
    # another tenant's user and recall its cross-thread memory.
    if owner == ANONYMOUS:
        return requested or ANONYMOUS
    return f"{owner}:{requested}" if requested else owner


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        # Only a disconnect is expected here; a stray message must not make this spin.
        await asyncio.sleep(0.1)


async def _unless_disconnected(
    request: Request, work: Awaitable[A], cancel: threading.Event | None
) -> A:
    """Run ``work``; if the client leaves first, cancel it and raise ClientDisconnected.

    ``cancel`` is handed to the model too, so that generation running in a worker thread stops
    as well instead of finishing a reply nobody will read.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    if cancel is not None:
        cancel.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ServiceError):
        await task
    raise ClientDisconnected
