"""OpenAI-compatible routes: POST /v1/chat/completions (stateless or per thread) and /v1/models."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Header, Request, Response
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from starlette.background import BackgroundTask

from api.auth import ANONYMOUS, OwnerDep
from api.deps import ApiConfig, ConfigDep, MetricsDep, ServiceDep
from api.errors import ApiError, ErrorResponse, error_body, service_error_to_api
from api.idempotency import REPLAY_HEADER, Claim, claim_for_request
from api.logging import bind_thread
from api.metrics import TurnTimer
from api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageIn,
    Choice,
    ChunkChoice,
    ChunkDelta,
    ModelCard,
    ModelList,
    SteadychatExtension,
    Usage,
)
from graph.errors import ServiceError, ThreadNotFoundError
from graph.service import ChatService
from graph.views import TurnResult
from nodes.context import Context

logger = logging.getLogger("steadychat.api.openai")

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499
"""Status logged for a call whose client left before the reply (nginx's convention)."""

router = APIRouter(prefix="/v1", tags=["openai"])

ThreadIdHeader = Annotated[
    str | None,
    Header(
        alias="X-Thread-Id",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Makes the call a turn of this thread (created on first use).",
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

JSON_INSTRUCTION = "Answer with one JSON object only: no text before or after it, no code fences."
JSON_CORRECTION = (
    "Your previous reply was not a valid JSON object. Reply again with only the JSON object, "
    "starting with '{' and ending with '}'."
)


@dataclasses.dataclass(kw_only=True)
class _Outcome:
    """One finished completion, stateless or stateful."""

    text: str
    finish_reason: str
    usage: Usage
    extension: SteadychatExtension | None = None


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _message_text(message: ChatMessageIn, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part_index, part in enumerate(content):
        if part.type != "text":
            raise _invalid(
                f"Content part type '{part.type}' is not supported; only 'text' parts are.",
                f"messages[{index}].content[{part_index}].type",
            )
        if part.text is None:
            raise _invalid(
                "A 'text' content part needs a 'text' string.",
                f"messages[{index}].content[{part_index}].text",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _message_texts(body: ChatCompletionRequest, max_chars: int) -> list[str]:
    """The text of every message, refusing unsupported parts and over-long messages."""
    texts = [_message_text(message, index) for index, message in enumerate(body.messages)]
    for index, text in enumerate(texts):
        if len(text) > max_chars:
            raise _invalid(
                f"Message {index} has {len(text)} characters; at most {max_chars} are accepted.",
                f"messages[{index}].content",
                code="message_too_long",
            )
    return texts


def _stateless_messages(body: ChatCompletionRequest, texts: list[str]) -> list[BaseMessage]:
    system: list[str] = []
    dialogue: list[BaseMessage] = []
    for message, text in zip(body.messages, texts, strict=True):
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role == "user":
            dialogue.append(HumanMessage(content=text))
        else:
            dialogue.append(AIMessage(content=text))
    if not dialogue or not isinstance(dialogue[-1], HumanMessage):
        raise _invalid("The last message must have role 'user'.", "messages")
    if system:
        return [SystemMessage(content="\n\n".join(system)), *dialogue]
    return dialogue


def _last_user_text(body: ChatCompletionRequest, texts: list[str]) -> tuple[str, str | None]:
    """The last user message and the joined system/developer messages of a stateful call."""
    user_text: str | None = None
    last_role: str | None = None
    system: list[str] = []
    for message, text in zip(body.messages, texts, strict=True):
        if message.role in ("system", "developer"):
            system.append(text)
            continue
        last_role = message.role
        if message.role == "user":
            user_text = text
    # As in a stateless call: after an assistant message there is no user turn to answer (the
    # earlier user message would be run, and saved, a second time).
    if last_role != "user":
        raise _invalid("The last message must have role 'user'.", "messages")
    if user_text is None or not user_text.strip():
        raise _invalid("A stateful call needs a non-empty user message.", "messages")
    return user_text, ("\n\n".join(system) if system else None)


def _check_request(body: ChatCompletionRequest) -> None:
    if body.stream_options is not None and not body.stream:
        raise _invalid("stream_options is only allowed when stream is true.", "stream_options")


def _max_tokens(body: ChatCompletionRequest) -> int | None:
    return body.max_completion_tokens or body.max_tokens


def _generation(body: ChatCompletionRequest) -> dict[str, Any]:
    """Sampling overrides the caller set (unset ones keep the profile's values)."""
    values: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
    }
    return {key: value for key, value in values.items() if value is not None}


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        # Only a disconnect is expected here; a stray message must not make this spin.
        await asyncio.sleep(0.1)


async def _unless_disconnected(
    request: Request, work: Coroutine[Any, Any, T], cancel: threading.Event | None = None
) -> T | None:
    """Run ``work``; if the client leaves first, cancel it and return None.

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
    return None


def _stateless_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
    kwargs = _generation(body)
    if (limit := _max_tokens(body)) is not None:
        kwargs["max_new_tokens"] = limit
    if body.profile is not None:
        kwargs["profile"] = body.profile
    return kwargs


async def _check_context_length(
    service: ChatService, messages: list[BaseMessage], limit: int | None
) -> None:
    """Refuse a stateless prompt that cannot fit the model's context window.

    The prompt is tokenized in a worker thread: a request body of a few MB takes seconds to
    tokenize, which on the event loop would stall every other request and stream.
    """
    model = service.chat_model
    # The deployment's window (settings) may be smaller than what the model itself accepts;
    # chat models declare their own window only when they know it (docs/CONTRACTS.md).
    window = service.context().context_window
    own = getattr(model, "context_window", None)
    if isinstance(own, int):
        window = min(window, own)
    prompt = await asyncio.to_thread(model.get_num_tokens_from_messages, messages)
    requested = prompt + (limit or 0)
    if prompt >= window or requested > window:
        raise ApiError(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{requested} tokens ({prompt} in the messages, {limit or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )


def _user_id(owner: str, requested: str | None) -> str:
    # With keys on, a tenant's end users live under the tenant (as on the REST routes), so one
    # tenant can never name another tenant's user and recall its cross-thread memory.
    if owner == ANONYMOUS:
        return requested or ANONYMOUS
    return f"{owner}:{requested}" if requested else owner


def _turn_context(
    service: ChatService, body: ChatCompletionRequest, owner: str, system_prompt: str | None
) -> Context:
    """The service's default context with what this request sets on top."""
    base = service.context()
    changes: dict[str, Any] = {
        "user_id": _user_id(owner, body.user),
        "generation": {**base.generation, **_generation(body)},
    }
    if body.profile is not None:
        changes["profile"] = body.profile
    if (limit := _max_tokens(body)) is not None:
        changes["max_new_tokens"] = limit
    if system_prompt is not None:
        changes["system_prompt"] = system_prompt
    return service.context(**changes)


async def _ensure_thread(service: ChatService, thread_id: str, owner: str) -> None:
    """Create the thread on first use; a thread of another owner stays invisible (404)."""
    try:
        await service.ensure_thread(thread_id, owner=owner)
    except ThreadNotFoundError as exc:
        raise ApiError(
            404, f"Thread '{thread_id}' not found.", param="X-Thread-Id", code="thread_not_found"
        ) from exc
    except ServiceError:
        # A concurrent first call of this owner created it in between: look again.
        await service.ensure_thread(thread_id, owner=owner)


def _usage_from_metadata(message: AIMessage) -> Usage:
    meta = message.usage_metadata
    if meta is None:
        return Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    return Usage(
        prompt_tokens=meta["input_tokens"],
        completion_tokens=meta["output_tokens"],
        total_tokens=meta["total_tokens"],
    )


def _finish_reason(value: object) -> str:
    return "length" if value == "length" else "stop"


def _outcome_to_json(outcome: _Outcome) -> dict[str, Any]:
    """What the idempotency cache keeps of a finished completion."""
    extension = outcome.extension.model_dump(mode="json") if outcome.extension else None
    return {
        "text": outcome.text,
        "finish_reason": outcome.finish_reason,
        "usage": outcome.usage.model_dump(mode="json"),
        "steadychat": extension,
    }


def _outcome_from_json(value: dict[str, Any]) -> _Outcome:
    extension = value.get("steadychat")
    return _Outcome(
        text=str(value["text"]),
        finish_reason=str(value["finish_reason"]),
        usage=Usage.model_validate(value["usage"]),
        extension=SteadychatExtension.model_validate(extension) if extension else None,
    )


def _outcome_of_turn(result: TurnResult) -> _Outcome:
    return _Outcome(
        text=result.reply,
        finish_reason=_finish_reason(result.finish_reason),
        usage=Usage(**{key: int(result.usage.get(key, 0)) for key in Usage.model_fields}),
        extension=SteadychatExtension(
            thread_id=result.thread_id,
            turn=result.turn,
            context_account=dict(result.context_account or {}),
        ),
    )


def _json_object(text: str) -> str | None:
    """The reply as a JSON object text, tolerating a code fence around it; None if it is not."""
    candidate = text.strip()
    if candidate.startswith("```"):
        candidate = candidate.strip("`").strip()
        if candidate.lower().startswith("json"):
            candidate = candidate[4:]
        candidate = candidate.strip()
    try:
        value = json.loads(candidate)
    except ValueError:
        return None
    return candidate if isinstance(value, dict) else None


def _invalid_json_error() -> ApiError:
    return ApiError(
        500,
        "The model did not produce a valid JSON object, also after one corrective retry.",
        type="server_error",
        param="response_format",
        code="invalid_json_output",
        headers={"x-should-retry": "false"},
    )


def _add_usage(first: Usage, second: Usage) -> Usage:
    return Usage(
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        total_tokens=first.total_tokens + second.total_tokens,
    )


def _with_json_instruction(messages: list[BaseMessage]) -> list[BaseMessage]:
    # One leading system message only: several chat templates accept no other.
    if messages and isinstance(messages[0], SystemMessage):
        head = SystemMessage(content=f"{messages[0].content}\n\n{JSON_INSTRUCTION}")
        return [head, *messages[1:]]
    return [SystemMessage(content=JSON_INSTRUCTION), *messages]


async def _complete_stateless(
    service: ChatService,
    body: ChatCompletionRequest,
    messages: list[BaseMessage],
    cancel: threading.Event,
) -> _Outcome:
    kwargs = {**_stateless_kwargs(body), "cancel_event": cancel}
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    if json_mode:
        messages = _with_json_instruction(messages)
    reply = await service.complete(messages, **kwargs)
    outcome = _Outcome(
        text=str(reply.content),
        finish_reason=_finish_reason(reply.response_metadata.get("finish_reason")),
        usage=_usage_from_metadata(reply),
    )
    if not json_mode:
        return outcome
    if (parsed := _json_object(outcome.text)) is not None:
        outcome.text = parsed
        return outcome
    retry = [*messages, AIMessage(content=outcome.text), HumanMessage(content=JSON_CORRECTION)]
    await _check_context_length(service, retry, _max_tokens(body))
    second = await service.complete(retry, **kwargs)
    if (parsed := _json_object(str(second.content))) is None:
        raise _invalid_json_error()
    return _Outcome(
        text=parsed,
        finish_reason=_finish_reason(second.response_metadata.get("finish_reason")),
        usage=_add_usage(outcome.usage, _usage_from_metadata(second)),
    )


async def _complete_turn(
    service: ChatService,
    thread_id: str,
    text: str,
    owner: str,
    context: Context,
    *,
    json_mode: bool,
    wait: bool,
) -> _Outcome:
    if json_mode:
        text = f"{text}\n\n{JSON_INSTRUCTION}"
    outcome = _outcome_of_turn(
        await service.run_turn(thread_id, text, owner=owner, context=context, wait=wait)
    )
    if not json_mode:
        return outcome
    if (parsed := _json_object(outcome.text)) is not None:
        outcome.text = parsed
        return outcome
    # The corrective retry is a turn of its own: the thread remembers both exchanges.
    second = _outcome_of_turn(
        await service.run_turn(thread_id, JSON_CORRECTION, owner=owner, context=context, wait=wait)
    )
    if (parsed := _json_object(second.text)) is None:
        raise _invalid_json_error()
    second.text = parsed
    second.usage = _add_usage(outcome.usage, second.usage)
    return second


def _error_object(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error object for a failure that happens after the stream has started."""
    if isinstance(exc, ServiceError):
        exc = service_error_to_api(exc)
    if isinstance(exc, ApiError):
        return exc.body()
    logger.error("Streamed completion failed", exc_info=exc)
    return error_body(
        "The server had an error while generating the reply.",
        type="server_error",
        code="internal_error",
    )


class _ChunkWriter:
    """Builds the chunks of one streamed completion: one id, role in the first delta only."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _event(self, choices: list[ChunkChoice], **extra: Any) -> JSONServerSentEvent:
        fields: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        if self.include_usage and "usage" not in fields:
            fields["usage"] = None
        chunk = ChatCompletionChunk(**fields)
        # OpenAI frames events with bare "\n" separators; sse-starlette defaults to "\r\n".
        return JSONServerSentEvent(data=chunk.model_dump(mode="json", exclude_unset=True), sep="\n")

    def first(self) -> JSONServerSentEvent:
        delta = ChunkDelta(role="assistant", content="")
        return self._event([ChunkChoice(index=0, delta=delta, finish_reason=None, logprobs=None)])

    def content(self, text: str) -> JSONServerSentEvent:
        delta = ChunkDelta(content=text)
        return self._event([ChunkChoice(index=0, delta=delta, finish_reason=None, logprobs=None)])

    def finish(self, reason: str, extension: SteadychatExtension | None) -> JSONServerSentEvent:
        choice = ChunkChoice(
            index=0,
            delta=ChunkDelta(),
            finish_reason=reason,  # type: ignore[arg-type]
            logprobs=None,
        )
        extra = {"steadychat": extension} if extension is not None else {}
        return self._event([choice], **extra)

    def usage(self, usage: Usage) -> JSONServerSentEvent:
        return self._event([], usage=usage)


async def _stream_events(
    writer: _ChunkWriter,
    pieces: AsyncIterator[str | _Outcome],
    timer: TurnTimer | None = None,
    claim: Claim | None = None,
) -> AsyncGenerator[ServerSentEvent, None]:
    """Turn text pieces and a final outcome into OpenAI's chunk events, then ``[DONE]``."""
    yield writer.first()
    try:
        async for piece in pieces:
            if isinstance(piece, str):
                if piece:
                    if timer is not None:
                        timer.first_token()
                    yield writer.content(piece)
                continue
            if timer is not None:
                timer.finish("ok", piece.usage.model_dump())
            if claim is not None:
                claim.finish(_outcome_to_json(piece))
            yield writer.finish(piece.finish_reason, piece.extension)
            if writer.include_usage:
                yield writer.usage(piece.usage)
    except Exception as exc:  # any failure reaches the client as an error event
        if timer is not None:
            timer.finish("error")
        yield JSONServerSentEvent(data=_error_object(exc), sep="\n")
    yield ServerSentEvent(data="[DONE]", sep="\n")


async def _stateless_pieces(
    stream: AsyncIterator[Any], first: Any
) -> AsyncIterator[str | _Outcome]:
    usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    finish_reason = "stop"
    chunk = first
    while chunk is not None:
        if chunk.content:
            yield str(chunk.content)
        if chunk.usage_metadata:
            usage = _usage_from_metadata(chunk)
        if reason := chunk.response_metadata.get("finish_reason"):
            finish_reason = _finish_reason(reason)
        chunk = await anext(stream, None)
    yield _Outcome(text="", finish_reason=finish_reason, usage=usage)


async def _turn_pieces(stream: AsyncIterator[Any], first: Any) -> AsyncIterator[str | _Outcome]:
    event = first
    while event is not None:
        if event.type == "token":
            yield event.text
        elif event.type == "done" and event.result is not None:
            yield _outcome_of_turn(event.result)
            return
        elif event.type == "error":
            raise event.error or ServiceError("The turn failed.")
        event = await anext(stream, None)
    raise ServiceError("The turn ended without a result.")


async def _closing_stream(stream: AsyncIterator[Any]) -> None:
    # Shielded: this also runs while the response task is being cancelled (client gone).
    with anyio.CancelScope(shield=True):
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _sse_response(
    writer: _ChunkWriter,
    pieces: AsyncIterator[str | _Outcome],
    stream: AsyncIterator[Any] | None = None,
    timer: TurnTimer | None = None,
    claim: Claim | None = None,
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The SSE response for ``pieces``; ``stream`` is the service stream they are read from."""

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async with aclosing(_stream_events(writer, pieces, timer, claim)) as chunks:
                async for event in chunks:
                    yield event
        finally:
            if timer is not None:
                timer.finish("cancelled")  # a no-op when the turn finished: the client left
            if claim is not None:
                claim.release()  # likewise: a retry of an unfinished completion runs again
            await _closing_stream(pieces)
            if stream is not None:
                await _closing_stream(stream)

    async def close() -> None:
        if timer is not None:
            timer.finish("cancelled")
        if claim is not None:
            claim.release()
        if stream is not None:
            await _closing_stream(stream)

    # The background task closes the service stream even if the response never started.
    background = BackgroundTask(close)
    return EventSourceResponse(events(), ping=15, sep="\n", background=background, headers=headers)


async def _buffered(outcome: _Outcome) -> AsyncIterator[str | _Outcome]:
    yield outcome.text
    yield outcome


async def _prime(stream: AsyncIterator[Any], timer: TurnTimer, claim: Claim) -> Any:
    """First item of a service stream, so errors before any token get a proper status code."""
    try:
        return await anext(stream, None)
    except BaseException as exc:
        timer.finish("error" if isinstance(exc, Exception) else "cancelled")
        claim.release()
        await _closing_stream(stream)
        raise


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
    request: Request,
    response: Response,
    service: ServiceDep,
    config: ConfigDep,
    owner: OwnerDep,
    metrics: MetricsDep,
    thread_id: ThreadIdHeader = None,
) -> ChatCompletion | EventSourceResponse | Response:
    """Answer the conversation, in one JSON body or as OpenAI's server-sent event stream."""
    if thread_id is not None:
        bind_thread(thread_id)
    _check_request(body)
    model = body.model or config.model
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    texts = _message_texts(body, config.max_message_chars)
    if thread_id is None:
        messages = _stateless_messages(body, texts)
        await _check_context_length(service, messages, _max_tokens(body))
    else:
        text, system_prompt = _last_user_text(body, texts)
        context = _turn_context(service, body, owner, system_prompt)
    # A retry with the same Idempotency-Key gets the first completion instead of a second turn.
    payload = {"request": body.model_dump(mode="json"), "thread_id": thread_id}
    claim = await claim_for_request(request, owner=owner, payload=payload)
    if thread_id is not None and not claim.replayed:
        try:
            await _ensure_thread(service, thread_id, owner)
        except BaseException:
            claim.release()
            raise
    if claim.replayed:
        remembered = _outcome_from_json(claim.result)
        replayed = {REPLAY_HEADER: "true"}
        if body.stream:
            writer = _ChunkWriter(model, include_usage)
            return _sse_response(writer, _buffered(remembered), headers=replayed)
        response.headers.update(replayed)
        return _completion(model, remembered)

    cancel: threading.Event | None = None
    if thread_id is None:
        if body.stream and not json_mode:
            timer = TurnTimer(metrics, mode="stream")
            stream = service.stream_complete(messages, **_stateless_kwargs(body))
            first = await _prime(stream, timer, claim)
            pieces = _stateless_pieces(stream, first)
            writer = _ChunkWriter(model, include_usage)
            return _sse_response(writer, pieces, stream, timer, claim)
        cancel = threading.Event()
        work: Coroutine[Any, Any, _Outcome] = _complete_stateless(service, body, messages, cancel)
    else:
        wait = config.busy_policy == "wait"
        if body.stream and not json_mode:
            timer = TurnTimer(metrics, mode="stream")
            events = service.stream_turn(thread_id, text, owner=owner, context=context, wait=wait)
            head = await _prime(events, timer, claim)
            if head is not None and head.type == "error" and head.error is not None:
                timer.finish("error")
                claim.release()
                await _closing_stream(events)
                raise head.error
            writer = _ChunkWriter(model, include_usage)
            return _sse_response(writer, _turn_pieces(events, head), events, timer, claim)
        # Cancelling the turn's task closes its event stream, which stops and rolls it back.
        work = _complete_turn(
            service, thread_id, text, owner, context, json_mode=json_mode, wait=wait
        )
    timer = TurnTimer(metrics, mode="stream" if body.stream else "json")
    try:
        outcome = await _unless_disconnected(request, work, cancel)
    except BaseException as exc:
        timer.finish("error" if isinstance(exc, Exception) else "cancelled")
        claim.release()
        raise
    if outcome is None:
        timer.finish("cancelled")
        claim.release()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    timer.finish("ok", outcome.usage.model_dump())
    claim.finish(_outcome_to_json(outcome))

    if body.stream:
        return _sse_response(_ChunkWriter(model, include_usage), _buffered(outcome))
    return _completion(model, outcome)


def _completion(model: str, outcome: _Outcome) -> ChatCompletion:
    extension = {"steadychat": outcome.extension} if outcome.extension is not None else {}
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                index=0,
                message=AssistantMessage(role="assistant", content=outcome.text),
                finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
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
