"""OpenAI-compatible routes: POST /v1/chat/completions (stateless or per thread) and /v1/models."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from api.auth import OwnerDep
from api.deps import ApiConfig, ConfigDep, ServiceDep
from api.errors import ApiError, ErrorResponse
from api.logging import bind_thread
from api.openai_completion import Outcome
from api.openai_request import translate
from api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
)
from api.openai_stream import ChunkWriter
from api.turn import TurnDep
from graph.core import THREAD_ID_PATTERN, THREAD_ID_RULE

router = APIRouter(prefix="/v1", tags=["openai"])

ThreadIdHeader = Annotated[
    str | None,
    Header(
        alias="X-Thread-Id",
        min_length=1,
        max_length=128,
        pattern=THREAD_ID_PATTERN,
        description=f"Makes the call a turn of this thread (made on first use); {THREAD_ID_RULE}.",
    ),
]

COMPLETIONS_DESCRIPTION = """\
OpenAI's chat completions, served by the loaded model.

Without the `X-Thread-Id` header the call is stateless: every message is sent to the model as
given. System and developer messages are merged into one leading system message (chat templates
accept a system message only there) and the last message must be the user's.

With `X-Thread-Id` the call is a turn of that thread, created on first use for the caller: only
the last user message is taken and the thread's memory (verbatim window, summaries, slots,
recalled snippets) supplies the rest; system and developer messages replace the role part of the
system prompt. The response then carries a `steadychat` field with `thread_id`, `turn` and the
turn's `context_account` (in the finishing chunk when streamed). A thread of another API key
answers 404.

`model` may be any name: one model is loaded and the name is echoed back. `user` names the
end user whose memory the turn reads and writes. `profile` (one of those `GET /profiles` lists)
picks a generation profile. `n` must be 1.

`response_format: {"type": "json_object"}`: a reply that does not parse as one JSON object is
retried once with a corrective instruction (in a thread the retry is a turn of its own). If it
still fails the answer is 500 with code `invalid_json_output` and `x-should-retry: false`: the
server failed, not the request. Streamed, such a reply is generated in full first and sent as one
content delta.

Streaming follows OpenAI: `data: {json}` events, one id, the role in the first delta, the
finish reason in the last choice chunk, with `stream_options.include_usage` a last chunk with
`usage` and no choices, then `data: [DONE]`. An error after the stream started is sent as a
`data: {"error": {...}}` event before `[DONE]`; a client that disconnects stops generation.
"""


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    response_model_exclude_unset=True,
    responses={
        200: {
            "description": "The completion, or with ``stream`` true its chunks as SSE.",
            "content": {"text/event-stream": {}},
        },
        400: {"model": ErrorResponse, "description": "Invalid request or context too long"},
        401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
        404: {"model": ErrorResponse, "description": "Thread of another owner, or deleted"},
        409: {"model": ErrorResponse, "description": "Thread busy (busy policy 'reject')"},
        500: {"model": ErrorResponse, "description": "Server error, or invalid JSON output"},
    },
    summary="Create a chat completion (stateful with the X-Thread-Id header)",
    description=COMPLETIONS_DESCRIPTION,
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    service: ServiceDep,
    config: ConfigDep,
    owner: OwnerDep,
    turn: TurnDep,
    thread_id: ThreadIdHeader = None,
) -> ChatCompletion | EventSourceResponse:
    """Answer the conversation, in one JSON body or as OpenAI's server-sent event stream."""
    if thread_id is not None:
        bind_thread(thread_id)
    completion = await translate(
        body, service=service, config=config, owner=owner, thread_id=thread_id
    )
    model = body.model or config.model
    writer = ChunkWriter(
        model, include_usage=bool(body.stream_options and body.stream_options.include_usage)
    )
    # A retry with the same Idempotency-Key gets the first completion instead of a second turn.
    payload = {"request": body.model_dump(mode="json"), "thread_id": thread_id}
    await turn.claim(payload, stream=bool(body.stream))
    if body.stream and not completion.json_mode:
        return await turn.stream(completion.pieces, writer)
    # A json_object reply is checked whole before any of it is sent, streamed or not.
    outcome = await turn.run(completion.complete, cancel=completion.cancel)
    if body.stream:
        return turn.answer_stream(outcome, writer)
    return _completion(model, outcome)


def _completion(model: str, outcome: Outcome) -> ChatCompletion:
    extension = {"steadychat": outcome.extension} if outcome.extension is not None else {}
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                index=0,
                message=AssistantMessage(role="assistant", content=outcome.reply),
                finish_reason=outcome.finish_reason,
                logprobs=None,
            )
        ],
        usage=outcome.usage,
        system_fingerprint=None,
        **extension,
    )


_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
}


@router.get(
    "/models", response_model=ModelList, responses=_MODEL_ERRORS, summary="List the loaded model"
)
async def list_models(request: Request, config: ConfigDep, owner: OwnerDep) -> ModelList:
    """List the one model this server has loaded."""
    return ModelList(object="list", data=[_model_card(request, config)])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    responses={**_MODEL_ERRORS, 404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe a model",
)
async def get_model(
    model_id: str, request: Request, config: ConfigDep, owner: OwnerDep
) -> ModelCard:
    """Describe the loaded model; any other id is 404 ``model_not_found``."""
    card = _model_card(request, config)
    if model_id != card.id:
        raise ApiError(
            404,
            f"The model '{model_id}' does not exist; this server serves '{card.id}'.",
            param="model",
            code="model_not_found",
        )
    return card


def _model_card(request: Request, config: ApiConfig) -> ModelCard:
    # The loaded model has no publication date; the time the app was built is stable for the
    # life of the process, which is what clients caching model lists need.
    return ModelCard(
        id=config.model, object="model", created=request.app.state.started_at, owned_by="steadychat"
    )
