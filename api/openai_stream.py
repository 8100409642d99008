"""OpenAI's streamed completion: ``data:`` chunk events, the usage chunk, then ``[DONE]``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from sse_starlette import JSONServerSentEvent, ServerSentEvent

from api.openai_completion import Outcome
from api.openai_schemas import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    FunctionCall,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from graph.decoding import LogprobEntry, LogprobRecorder
from nodes.tool_calls import ParsedCall

__all__ = ["ChunkWriter", "choice_logprobs", "tool_calls"]

# OpenAI frames events with bare "\n" separators; sse-starlette defaults to "\r\n".
SEP = "\n"


class ChunkWriter:
    """The chunks of one streamed completion: one id, the role in the first delta only.

    Args:
        model: The model name the chunks carry.
        include_usage: Send a last chunk with ``usage`` and no choices before ``[DONE]``.
        logprobs: The generation's logprob recorder: each chunk carries the entries recorded
            since the previous one.
    """

    sep: str | None = SEP

    def __init__(
        self, model: str, *, include_usage: bool, logprobs: LogprobRecorder | None = None
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.logprobs = logprobs

    def opening(self) -> Iterable[ServerSentEvent]:
        """The first chunk: the assistant's role and empty content."""
        return (self._choice(ChunkDelta(role="assistant", content=""), None),)

    def token(self, text: str) -> Iterable[ServerSentEvent]:
        """A content chunk (none for empty text)."""
        if not text:
            return ()
        return (self._choice(ChunkDelta(content=text), None, logprobs=self._logprobs()),)

    def finish(self, answer: Outcome) -> Iterable[ServerSentEvent]:
        """The tool calls, the chunk with the finish reason (and the steadychat extension),
        then usage."""
        if answer.tool_calls:
            deltas = [
                ToolCallDelta(index=index, id=call.id, type=call.type, function=call.function)
                for index, call in enumerate(tool_calls(answer.tool_calls))
            ]
            yield self._choice(ChunkDelta(tool_calls=deltas), None)
        extra = {"steadychat": answer.extension} if answer.extension is not None else {}
        yield self._choice(ChunkDelta(), answer.finish_reason, logprobs=self._logprobs(), **extra)
        if self.include_usage:
            yield self._event([], usage=answer.usage)

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        """An error after the stream has started, as a ``data: {"error": ...}`` event."""
        return JSONServerSentEvent(data=body, sep=SEP)

    def closing(self) -> Iterable[ServerSentEvent]:
        """``data: [DONE]``."""
        return (ServerSentEvent(data="[DONE]", sep=SEP),)

    def _logprobs(self) -> ChoiceLogprobs | None:
        return None if self.logprobs is None else choice_logprobs(self.logprobs.take())

    def _choice(
        self,
        delta: ChunkDelta,
        finish_reason: Literal["stop", "length", "tool_calls"] | None,
        logprobs: ChoiceLogprobs | None = None,
        **extra: Any,
    ) -> ServerSentEvent:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason, logprobs=logprobs)
        return self._event([choice], **extra)

    def _event(self, choices: list[ChunkChoice], **extra: Any) -> ServerSentEvent:
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
        return JSONServerSentEvent(data=chunk.model_dump(mode="json", exclude_unset=True), sep=SEP)


def choice_logprobs(entries: list[LogprobEntry]) -> ChoiceLogprobs:
    """Recorded logprobs in OpenAI's shape."""
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=entry.bytes,
                top_logprobs=[
                    TopLogprob(token=token, logprob=logprob, bytes=raw)
                    for token, logprob, raw in entry.top_logprobs
                ],
            )
            for entry in entries
        ]
    )


def tool_calls(calls: list[ParsedCall]) -> list[ToolCall]:
    """Parsed calls in OpenAI's shape."""
    return [
        ToolCall(
            id=call.id,
            type="function",
            function=FunctionCall(name=call.name, arguments=call.arguments),
        )
        for call in calls
    ]
