"""OpenAI-compatible routes: POST /v1/chat/completions (stateless or per thread) and /v1/models."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from api.auth import OwnerDep
from api.deps import ApiConfig, ConfigDep, ServiceDep
from api.errors import ErrorResponse
from api.logging import bind_thread
from api.openai_completion import Outcome, TurnCompletion
from api.openai_request import MODEL_ALIAS, served_model, translate
from api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
)
from api.openai_stream import ChunkWriter, choice_logprobs, tool_calls
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

`model` is the served model id (`GET /v1/models`) or the alias `steadychat`; another name is
404 `model_not_found`. `user` names the end user whose memory the turn reads and writes.
`profile` (one of those `GET /profiles` lists) picks a generation profile. `n` must be 1. Any
other field that is not listed here is a 400 naming it (`metadata`, `store`, `service_tier`,
`safety_identifier` and `prompt_cache_key` are accepted and change nothing).

Stateless calls on the local model also serve, through its own chat template and
constrained decoding (xgrammar):
- `tools`, `tool_choice` (`auto`, `none`, `required`, a named function) and `tool` /
  assistant `tool_calls` messages, when the chat template supports tools (else 400 naming
  `tools`). The model's `<tool_call>{json}</tool_call>` output becomes `tool_calls`
  (`finish_reason: "tool_calls"`; streamed as one `delta.tool_calls` chunk per call once the
  reply ends). `required` and a named function force exactly one valid call by grammar.
- `response_format` `json_schema` and `json_object`: the reply is one JSON value that matches
  the schema (compact separators); near the end of `max_tokens` decoding prefers tokens that
  close it. A `max_tokens` below what the shortest valid reply may take, or a reply cut before
  its JSON closed, is a 400 (`json_incomplete`), never a 500.
- `logprobs` / `top_logprobs` (0 to 20): of the distribution each token was chosen from (after
  penalties, bias and grammar; before temperature and top-k/top-p); a masked-out alternative
  reads -9999. Streamed chunks carry the entries of the tokens they send.
- `frequency_penalty`, `presence_penalty` (OpenAI's additive penalties over the reply's tokens)
  and `logit_bias` (token id to bias) as logits processors.
Replies with tools, JSON or logprobs are not post-processed (the tokens are the content).

With `X-Thread-Id`: penalties, `logit_bias`, `json_object` and `json_schema` are served (the
JSON checked whole, streamed as one delta); `tools`, tool messages and `logprobs` are a 400.
On a model without in-process decoding, `json_object` falls back to validating the reply and
retrying once (500 `invalid_json_output` with `x-should-retry: false` if it still fails).

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
    model = served_model(body.model, config)
    completion = await translate(
        body, service=service, config=config, owner=owner, thread_id=thread_id
    )
    recorder = getattr(completion, "recorder", None)
    writer = ChunkWriter(
        model,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        logprobs=recorder,
    )
    # A retry with the same Idempotency-Key gets the first completion instead of a second turn.
    payload = {"request": body.model_dump(mode="json"), "thread_id": thread_id}
    await turn.claim(payload, stream=bool(body.stream))
    # A reply checked whole (json_object without a grammar, JSON in a thread) is sent at once.
    whole = completion.json_mode or (
        isinstance(completion, TurnCompletion) and completion.check_json
    )
    if body.stream and not whole:
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
                message=AssistantMessage(
                    role="assistant",
                    content=outcome.reply or (None if outcome.tool_calls else ""),
                    tool_calls=tool_calls(outcome.tool_calls) if outcome.tool_calls else None,
                ),
                finish_reason=outcome.finish_reason,
                logprobs=None if outcome.logprobs is None else choice_logprobs(outcome.logprobs),
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
    """List the model this server has loaded, under its id and under the alias."""
    return ModelList(object="list", data=_model_cards(request, config))


@router.get(
    "/models/{model_id:path}",
    response_model=ModelCard,
    responses={**_MODEL_ERRORS, 404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe a model",
)
async def get_model(
    model_id: str, request: Request, config: ConfigDep, owner: OwnerDep
) -> ModelCard:
    """Describe the loaded model (by its id or the alias); any other id is 404."""
    served_model(model_id, config)
    return next(card for card in _model_cards(request, config) if card.id == model_id)


def _model_cards(request: Request, config: ApiConfig) -> list[ModelCard]:
    # The loaded model has no publication date; the time the app was built is stable for the
    # life of the process, which is what clients caching model lists need.
    names = dict.fromkeys([config.model, MODEL_ALIAS])
    return [
        ModelCard(
            id=name, object="model", created=request.app.state.started_at, owned_by="steadychat"
        )
        for name in names
    ]
