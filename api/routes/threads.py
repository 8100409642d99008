"""REST per thread: create, list, read, delete, reset, post a message (JSON or SSE), slots."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sse_starlette import ServerSentEvent

from api.auth import OwnerDep
from api.deps import ApiConfig, ConfigDep, ServiceDep
from api.errors import ApiError, ErrorResponse
from api.idempotency import REPLAY_HEADER, run_once
from api.logging import bind_thread
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
from api.turn import Pieces, TurnDep, turn_context, turn_pieces
from graph.core import THREAD_ID_PATTERN, THREAD_ID_RULE

logger = logging.getLogger("steadychat.api.threads")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown thread"},
}

router = APIRouter(prefix="/threads", tags=["threads"], responses=_ERRORS)

ThreadId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=THREAD_ID_PATTERN,
        description=f"The thread's id: {THREAD_ID_RULE}.",
    ),
]

_GENERATION = {"temperature", "top_p", "seed", "stop"}
"""The request's sampling overrides, passed to the model as they are."""


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
async def delete_thread(
    thread_id: ThreadId, service: ServiceDep, owner: OwnerDep, request: Request
) -> Response:
    """Delete a thread with its checkpoints, memories and slots; a turn running on it stops."""
    bind_thread(thread_id)
    await service.delete_thread(thread_id, owner=owner)
    await request.app.state.idempotency.forget_thread(owner=owner, thread_id=thread_id)
    logger.info("thread deleted")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{thread_id}/reset", response_model=ThreadPublic)
async def reset_thread(
    thread_id: ThreadId, service: ServiceDep, owner: OwnerDep, request: Request
) -> ThreadPublic:
    """Clear a thread's state, memories and slots (after a running turn); id and title stay."""
    bind_thread(thread_id)
    thread = await service.reset_thread(thread_id, owner=owner)
    await request.app.state.idempotency.forget_thread(owner=owner, thread_id=thread_id)
    return ThreadPublic.of(thread)


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
    return SlotsPublic(slots={n: SlotPublic.of(n, s) for n, s in slots.items()})


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
    service: ServiceDep,
    owner: OwnerDep,
    config: ConfigDep,
    turn: TurnDep,
) -> Any:
    """Run one turn on the thread and answer with the reply (JSON or SSE)."""
    bind_thread(thread_id)
    _check_length(body, config)
    context = turn_context(
        service,
        owner=owner,
        user=body.user_id,
        profile=body.profile,
        max_tokens=body.max_tokens,
        generation=body.model_dump(include=_GENERATION, exclude_none=True),
    )
    wait = config.busy_policy == "wait"
    await turn.claim(body.model_dump(mode="json"), stream=body.stream)

    def pieces() -> Pieces[ReplyPublic]:
        events = service.stream_turn(
            thread_id, body.content, owner=owner, context=context, wait=wait
        )
        return turn_pieces(events, ReplyPublic.of)

    async def reply() -> ReplyPublic:
        result = await service.run_turn(
            thread_id, body.content, owner=owner, context=context, wait=wait
        )
        return ReplyPublic.of(result)

    if body.stream:
        return await turn.stream(pieces, _ReplyEvents())
    # A JSON turn runs to its end even if the client leaves: a retry with the same
    # Idempotency-Key then gets its reply instead of running the turn again.
    return await turn.run(reply, stop_when_client_leaves=False)


class _ReplyEvents:
    """REST's events: ``token`` events ``{text}``, then one ``done`` or one ``error`` event."""

    sep: str | None = None

    def opening(self) -> Iterable[ServerSentEvent]:
        return ()

    def token(self, text: str) -> Iterable[ServerSentEvent]:
        return (ServerSentEvent(event="token", data=json.dumps({"text": text})),)

    def finish(self, answer: ReplyPublic) -> Iterable[ServerSentEvent]:
        return (ServerSentEvent(event="done", data=answer.model_dump_json()),)

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        return ServerSentEvent(event="error", data=json.dumps(body))

    def closing(self) -> Iterable[ServerSentEvent]:
        return ()
