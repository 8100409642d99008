"""Running an OpenAI chat completion: stateless over its messages, or as a turn of a thread."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from contextlib import aclosing
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from api.errors import ApiError
from api.openai_schemas import SteadychatExtension
from api.schemas import Usage
from api.turn import Pieces, close_stream, turn_pieces
from graph.decoding import LogprobEntry, LogprobRecorder
from graph.errors import ServiceError, ThreadNotFoundError
from graph.service import ChatService
from graph.views import TurnResult
from nodes.context import Context
from nodes.text import message_text
from nodes.tool_calls import ParsedCall, ToolCallStream, parse_tool_calls

__all__ = [
    "Completion",
    "Outcome",
    "StatelessCompletion",
    "TurnCompletion",
    "check_context_length",
]

JSON_INSTRUCTION = "Answer with one JSON object only: no text before or after it, no code fences."
JSON_CORRECTION = (
    "Your previous reply was not a valid JSON object. Reply again with only the JSON object, "
    "starting with '{' and ending with '}'."
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """One finished completion, stateless or a turn of a thread."""

    reply: str
    finish_reason: Literal["stop", "length", "tool_calls"]
    usage: Usage
    extension: SteadychatExtension | None = None
    """What a turn of a thread adds (``steadychat`` in the response)."""
    tool_calls: list[ParsedCall] = dataclasses.field(default_factory=list)
    logprobs: list[LogprobEntry] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StatelessCompletion:
    """A completion over the messages as given, straight from the model."""

    service: ChatService
    messages: list[BaseMessage]
    generation: dict[str, Any]
    """Keyword arguments for the model: profile, sampling overrides, max_new_tokens."""
    max_tokens: int | None
    json_mode: bool
    """json_object without constrained decoding: the reply is checked and retried once."""
    check_json: bool = False
    """The reply was constrained to JSON: refuse one that did not close."""
    parse_tools: bool = False
    """The reply may hold tool calls."""
    raw: bool = False
    """Skip post-processing (a grammar's output, tokens whose logprobs are returned)."""
    recorder: LogprobRecorder | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Stops a generation running in a worker thread when its client leaves."""

    async def pieces(self) -> Pieces[Outcome]:
        """Stream the completion: text pieces as the model produces them, then the outcome."""
        stream = self.service.stream_complete(
            self.messages, postprocess=not self.raw, **self.generation
        )
        usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        finish_reason: Literal["stop", "length"] = "stop"
        calls = ToolCallStream() if self.parse_tools else None
        parts: list[str] = []
        try:
            async for chunk in stream:
                text = message_text(chunk)
                parts.append(text)
                if calls is not None:
                    text = calls.feed(text)
                if text:
                    yield text
                if chunk.usage_metadata:
                    usage = _usage_of(chunk)
                if reason := chunk.response_metadata.get("finish_reason"):
                    finish_reason = _finish_reason(reason)
        finally:
            await close_stream(stream)
        found: list[ParsedCall] = []
        if calls is not None:
            rest, found = calls.finish()
            if rest:
                yield rest
        if self.check_json:
            _check_json("".join(parts), finish_reason)
        yield Outcome(
            reply="",
            finish_reason="tool_calls" if found else finish_reason,
            usage=usage,
            tool_calls=found,
        )

    async def complete(self) -> Outcome:
        """Run the completion to its end; a json_object reply is checked and retried once."""
        messages = _with_json_instruction(self.messages) if self.json_mode else self.messages
        first = await self._complete(messages)
        if self.check_json:
            _check_json(first.reply, first.finish_reason)
        if self.parse_tools:
            content, found = parse_tool_calls(first.reply)
            if found:
                first = dataclasses.replace(
                    first, reply=content, tool_calls=found, finish_reason="tool_calls"
                )
        if self.recorder is not None:
            first = dataclasses.replace(first, logprobs=self.recorder.all())
        if not self.json_mode:
            return first
        if (parsed := _json_object(first.reply)) is not None:
            return dataclasses.replace(first, reply=parsed)
        retry = [*messages, AIMessage(content=first.reply), HumanMessage(content=JSON_CORRECTION)]
        await check_context_length(self.service, retry, self.max_tokens)
        second = await self._complete(retry)
        if (parsed := _json_object(second.reply)) is None:
            raise _invalid_json_error()
        return dataclasses.replace(second, reply=parsed, usage=_add(first.usage, second.usage))

    async def _complete(self, messages: list[BaseMessage]) -> Outcome:
        reply = await self.service.complete(
            messages, postprocess=not self.raw, **self.generation, cancel_event=self.cancel
        )
        return Outcome(
            reply=message_text(reply),
            finish_reason=_finish_reason(reply.response_metadata.get("finish_reason")),
            usage=_usage_of(reply),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TurnCompletion:
    """A completion that is a turn of a thread, created for its owner on first use."""

    service: ChatService
    thread_id: str
    text: str
    owner: str
    context: Context
    wait: bool
    """Queue behind a running turn of the thread (busy policy ``wait``) instead of a 409."""
    json_mode: bool
    check_json: bool = False
    """The reply was constrained to JSON: refuse one that did not close."""
    cancel: None = None
    """Cancelling a turn's task stops it: closing its event stream rolls it back."""

    async def pieces(self) -> Pieces[Outcome]:
        """Stream the turn: its tokens as they come, then the outcome."""
        await self._ensure_thread()
        events = self.service.stream_turn(
            self.thread_id, self.text, owner=self.owner, context=self.context, wait=self.wait
        )
        # aclosing: closing this stream must close the turn's too, which cancels the turn.
        async with aclosing(turn_pieces(events, _outcome_of_turn)) as pieces:
            async for piece in pieces:
                yield piece

    async def complete(self) -> Outcome:
        """Run the turn to its end; a json_object reply is checked and retried once."""
        await self._ensure_thread()
        asks_json = self.json_mode or self.check_json
        text = f"{self.text}\n\n{JSON_INSTRUCTION}" if asks_json else self.text
        first = await self._run(text)
        if self.check_json:
            _check_json(first.reply, first.finish_reason)
        if not self.json_mode:
            return first
        if (parsed := _json_object(first.reply)) is not None:
            return dataclasses.replace(first, reply=parsed)
        # The corrective retry is a turn of its own: the thread remembers both exchanges.
        second = await self._run(JSON_CORRECTION)
        if (parsed := _json_object(second.reply)) is None:
            raise _invalid_json_error()
        return dataclasses.replace(second, reply=parsed, usage=_add(first.usage, second.usage))

    async def _run(self, text: str) -> Outcome:
        result = await self.service.run_turn(
            self.thread_id, text, owner=self.owner, context=self.context, wait=self.wait
        )
        return _outcome_of_turn(result)

    async def _ensure_thread(self) -> None:
        # A thread of another owner stays invisible: 404, named after the header that chose it.
        try:
            await self.service.ensure_thread(self.thread_id, owner=self.owner)
        except ThreadNotFoundError as exc:
            raise ApiError(
                404,
                f"Thread '{self.thread_id}' not found.",
                param="X-Thread-Id",
                code="thread_not_found",
            ) from exc
        except ServiceError:
            # A concurrent first call of this owner created it in between: look again.
            await self.service.ensure_thread(self.thread_id, owner=self.owner)


Completion = StatelessCompletion | TurnCompletion


async def check_context_length(
    service: ChatService,
    messages: list[BaseMessage],
    limit: int | None,
    *,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    """Refuse a stateless prompt that cannot fit the model's context window.

    The prompt is tokenized in a worker thread: a request body of a few MB takes seconds to
    tokenize, which on the event loop would stall every other request and stream.

    Args:
        service: The service whose model and default context set the window.
        messages: The prompt.
        limit: The reply limit the request asks for.
        tools: Tools the chat template renders into the prompt.

    Raises:
        ApiError: 400 ``context_length_exceeded``.
    """
    model = service.chat_model
    # The deployment's window (settings) may be smaller than what the model itself accepts;
    # chat models declare their own window only when they know it (docs/CONTRACTS.md).
    window = service.context().context_window
    own = getattr(model, "context_window", None)
    if isinstance(own, int):
        window = min(window, own)
    if tools:
        prompt = await asyncio.to_thread(model.get_num_tokens_from_messages, messages, tools)
    else:
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


def _outcome_of_turn(result: TurnResult) -> Outcome:
    return Outcome(
        reply=result.reply,
        finish_reason=_finish_reason(result.finish_reason),
        usage=Usage.of(result.usage),
        extension=SteadychatExtension(
            thread_id=result.thread_id,
            turn=result.turn,
            context_account=dict(result.context_account or {}),
        ),
    )


def _usage_of(message: AIMessage) -> Usage:
    meta = message.usage_metadata
    if meta is None:
        return Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    details = meta.get("input_token_details") or {}
    return Usage.of(
        {
            "prompt_tokens": meta["input_tokens"],
            "completion_tokens": meta["output_tokens"],
            "total_tokens": meta["total_tokens"],
            "cached_tokens": int(details.get("cache_read", 0)),
        }
    )


def _finish_reason(value: object) -> Literal["stop", "length"]:
    return "length" if value == "length" else "stop"


def _add(first: Usage, second: Usage) -> Usage:
    return Usage.of(
        {
            "prompt_tokens": first.prompt_tokens + second.prompt_tokens,
            "completion_tokens": first.completion_tokens + second.completion_tokens,
            "total_tokens": first.total_tokens + second.total_tokens,
            "cached_tokens": first.prompt_tokens_details.cached_tokens
            + second.prompt_tokens_details.cached_tokens,
        }
    )


def _with_json_instruction(messages: list[BaseMessage]) -> list[BaseMessage]:
    # One leading system message only: several chat templates accept no other.
    if messages and isinstance(messages[0], SystemMessage):
        head = SystemMessage(content=f"{message_text(messages[0])}\n\n{JSON_INSTRUCTION}")
        return [head, *messages[1:]]
    return [SystemMessage(content=JSON_INSTRUCTION), *messages]


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


def _check_json(text: str, finish_reason: str) -> None:
    """Refuse a constrained reply that did not close (the budget or a stop sequence cut it)."""
    try:
        json.loads(text)
    except ValueError:
        param = "max_tokens" if finish_reason == "length" else "stop"
        raise ApiError(
            400,
            f"The reply ended (finish_reason '{finish_reason}') before its JSON was complete; "
            f"raise max_tokens or remove the stop sequence.",
            param=param,
            code="json_incomplete",
            headers={"x-should-retry": "false"},
        ) from None


def _invalid_json_error() -> ApiError:
    return ApiError(
        500,
        "The model did not produce a valid JSON object, also after one corrective retry.",
        type="server_error",
        param="response_format",
        code="invalid_json_output",
        headers={"x-should-retry": "false"},
    )
