"""REST per thread: create, list, read, delete, reset, post a message (JSON or SSE), slots."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import ANONYMOUS, OwnerDep
from api.deps import ApiConfig, ConfigDep, MetricsDep, ServiceDep
from api.errors import ApiError, ErrorResponse, error_body, service_error_to_api
from api.idempotency import REPLAY_HEADER, Claim, claim_for_request, run_once
from api.logging import bind_thread
from api.metrics import TurnTimer
from api.schemas import (
    CheckpointPublic,
    HistoryPublic,
    MessageCreate,
    ReplyPublic,
    SlotPublic,
    SlotsPatch,
    SlotsPublic,
    ThreadCreate,
    ThreadDetail,
    ThreadList,
    ThreadPublic,
)
from graph.errors import ServiceError
from graph.service import ChatService
from graph.views import TurnEvent
from nodes.context import Context

logger = logging.getLogger("steadychat.api.threads")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown thread"},
}

router = APIRouter(prefix="/threads", tags=["threads"], responses=_ERRORS)

ThreadId = Annotated[str, Path(min_length=1, max_length=128, description="The thread's id.")]


def _user_id(owner: str, requested: str | None) -> str:
    # With keys on, a tenant's end users live under the tenant, so one tenant can never name
    # another tenant's user and read its cross-thread memory.
    if owner == ANONYMOUS:
        return requested or ANONYMOUS
    return f"{owner}:{requested}" if requested else owner


def _context(service: ChatService, body: MessageCreate, owner: str) -> Context:
    overrides: dict[str, Any] = {"user_id": _user_id(owner, body.user_id)}
    generation = {
        name: getattr(body, name)
        for name in ("temperature", "top_p", "seed", "stop")
        if getattr(body, name) is not None
    }
    if generation:
        overrides["generation"] = generation
    if body.profile is not None:
        overrides["profile"] = body.profile
    if body.max_tokens is not None:
        overrides["max_new_tokens"] = body.max_tokens
    # The service's defaults carry the deployment's settings (context window, budgets, top_k).
    return service.context(**overrides)


def _check_length(body: MessageCreate, config: ApiConfig) -> None:
    if len(body.content) > config.max_message_chars:
        raise ApiError(
            413,
            f"The message has {len(body.content)} characters; the limit is "
            f"{config.max_message_chars}.",
            param="content",
            code="message_too_long",
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ThreadPublic)
async def create_thread(
    request: Request,
    response: Response,
    service: ServiceDep,
    owner: OwnerDep,
    body: ThreadCreate | None = None,
) -> Any:
    """Create a thread."""
    payload = (body or ThreadCreate()).model_dump(mode="json")

    async def run() -> dict[str, Any]:
        info = await service.create_thread(
            owner=owner, title=payload["title"], metadata=payload["metadata"]
        )
        return ThreadPublic.of(info).model_dump(mode="json")

    result, replayed = await run_once(request, owner=owner, payload=payload, run=run)
    if replayed:
        response.headers[REPLAY_HEADER] = "true"
    return result


@router.get("", response_model=ThreadList)
async def list_threads(
    service: ServiceDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ThreadList:
    """List the caller's threads, newest-updated first."""
    infos, total = await service.list_threads(owner=owner, limit=limit, offset=offset)
    return ThreadList(
        data=[ThreadPublic.of(i) for i in infos], total=total, limit=limit, offset=offset
    )


@router.get("/{thread_id}", response_model=ThreadDetail)
async def get_thread(thread_id: ThreadId, service: ServiceDep, owner: OwnerDep) -> ThreadDetail:
    """Read a thread: slots, summaries, tracking, verbatim window and the last context account."""
    bind_thread(thread_id)
    return ThreadDetail.of(await service.get_thread(thread_id, owner=owner))


@router.delete(
    "/{thread_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={204: {"description": "Deleted"}},
)
async def delete_thread(thread_id: ThreadId, service: ServiceDep, owner: OwnerDep) -> Response:
    """Delete a thread with its checkpoints, memories and slots."""
    bind_thread(thread_id)
    await service.delete_thread(thread_id, owner=owner)
    logger.info("thread deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{thread_id}/reset", response_model=ThreadPublic)
async def reset_thread(thread_id: ThreadId, service: ServiceDep, owner: OwnerDep) -> ThreadPublic:
    """Clear a thread's state, memories and slots, keeping its id and title."""
    bind_thread(thread_id)
    return ThreadPublic.of(await service.reset_thread(thread_id, owner=owner))


@router.get("/{thread_id}/history", response_model=HistoryPublic)
async def thread_history(
    thread_id: ThreadId,
    service: ServiceDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> HistoryPublic:
    """List a thread's checkpoints, newest first."""
    bind_thread(thread_id)
    views = await service.history(thread_id, owner=owner, limit=limit)
    return HistoryPublic(data=[CheckpointPublic.of(v) for v in views])


@router.patch("/{thread_id}/slots", response_model=SlotsPublic)
async def patch_slots(
    thread_id: ThreadId, body: SlotsPatch, service: ServiceDep, owner: OwnerDep
) -> SlotsPublic:
    """Correct (string) or clear (null) slots; old values stay in each slot's history."""
    bind_thread(thread_id)
    slots = await service.update_slots(thread_id, body.slots, owner=owner)
    return SlotsPublic(slots={n: SlotPublic.model_validate(s) for n, s in slots.items()})


@router.post(
    "/{thread_id}/messages",
    response_model=ReplyPublic,
    responses={
        200: {
            "description": "The reply as JSON, or with ``stream: true`` server-sent events: "
            "``token`` events ``{text}``, then one ``done`` event (a ReplyPublic) or one "
            "``error`` event (an ErrorResponse).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        409: {
            "model": ErrorResponse,
            "description": "Thread busy (busy_policy reject) or the turn was cancelled",
        },
        413: {"model": ErrorResponse, "description": "Message too long"},
        422: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"},
    },
)
async def post_message(
    thread_id: ThreadId,
    body: MessageCreate,
    request: Request,
    response: Response,
    service: ServiceDep,
    owner: OwnerDep,
    config: ConfigDep,
    metrics: MetricsDep,
) -> Any:
    """Run one turn on the thread and answer with the reply (JSON or SSE)."""
    bind_thread(thread_id)
    _check_length(body, config)
    context = _context(service, body, owner)
    wait = config.busy_policy != "reject"
    payload = body.model_dump(mode="json")

    if body.stream:
        claim = await claim_for_request(request, owner=owner, payload=payload)
        if claim.replayed:
            return EventSourceResponse(
                _replay_events(claim.result), headers={REPLAY_HEADER: "true"}
            )
        return await _stream_reply(
            service.stream_turn(thread_id, body.content, owner=owner, context=context, wait=wait),
            TurnTimer(metrics, mode="stream"),
            claim,
        )

    async def run() -> dict[str, Any]:
        timer = TurnTimer(metrics, mode="json")
        try:
            result = await service.run_turn(
                thread_id, body.content, owner=owner, context=context, wait=wait
            )
        except BaseException as exc:
            timer.finish("error" if isinstance(exc, Exception) else "cancelled")
            raise
        reply = ReplyPublic.of(result)
        timer.finish("ok", reply.usage.model_dump())
        return reply.model_dump(mode="json")

    result, replayed = await run_once(request, owner=owner, payload=payload, run=run)
    if replayed:
        response.headers[REPLAY_HEADER] = "true"
    return result


async def _close(events: AsyncIterator[TurnEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        # Shielded: on a client disconnect this runs inside a cancelled scope, and the service
        # needs its awaits to cancel the turn and release the thread's lock.
        with anyio.CancelScope(shield=True):
            await aclose()


async def _stream_reply(
    events: AsyncIterator[TurnEvent], timer: TurnTimer, claim: Claim
) -> EventSourceResponse:
    # Wait for the first event before answering, so an unknown or busy thread still gets a
    # plain 404/409 instead of a 200 stream that carries only an error.
    try:
        first = await anext(events)
        if first.type == "error":
            raise first.error or ServiceError("The turn failed.")
    except BaseException as exc:
        timer.finish("error" if isinstance(exc, Exception) else "cancelled")
        claim.release()
        await _close(events)
        if isinstance(exc, StopAsyncIteration):
            raise ApiError(500, "The turn produced no reply.", type="server_error") from exc
        raise
    return EventSourceResponse(_sse_events(events, first, timer, claim))


async def _sse_events(
    events: AsyncIterator[TurnEvent], first: TurnEvent, timer: TurnTimer, claim: Claim
) -> AsyncIterator[ServerSentEvent]:
    event = first
    try:
        while True:
            if event.type == "token":
                timer.first_token()
                yield ServerSentEvent(event="token", data=json.dumps({"text": event.text}))
            elif event.type == "done" and event.result is not None:
                reply = ReplyPublic.of(event.result)
                timer.finish("ok", reply.usage.model_dump())
                claim.finish(reply.model_dump(mode="json"))
                yield ServerSentEvent(event="done", data=reply.model_dump_json())
                return
            else:
                error = event.error or ServiceError("The turn failed.")
                timer.finish("error")
                yield ServerSentEvent(
                    event="error", data=json.dumps(service_error_to_api(error).body())
                )
                return
            event = await anext(events)
    except StopAsyncIteration:
        timer.finish("error")
        yield _server_error_event("The turn ended without a reply.")
    except ServiceError as exc:
        timer.finish("error")
        yield ServerSentEvent(event="error", data=json.dumps(service_error_to_api(exc).body()))
    except Exception:
        logger.exception("streamed turn failed")
        timer.finish("error")
        yield _server_error_event("The server had an error while generating the reply.")
    finally:
        # No-ops when the turn finished; otherwise the client went away mid-stream.
        timer.finish("cancelled")
        claim.release()
        await _close(events)


def _server_error_event(message: str) -> ServerSentEvent:
    body = error_body(message, type="server_error", code="internal_error")
    return ServerSentEvent(event="error", data=json.dumps(body))


async def _replay_events(result: dict[str, Any]) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(event="token", data=json.dumps({"text": result["reply"]}))
    yield ServerSentEvent(event="done", data=ReplyPublic.model_validate(result).model_dump_json())
