"""OpenAI's streamed completion: ``data:`` chunk events, the usage chunk, then ``[DONE]``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from sse_starlette import JSONServerSentEvent, ServerSentEvent

from api.openai_completion import Outcome
from api.openai_schemas import ChatCompletionChunk, ChunkChoice, ChunkDelta

__all__ = ["ChunkWriter"]

# OpenAI frames events with bare "\n" separators; sse-starlette defaults to "\r\n".
SEP = "\n"


class ChunkWriter:
    """The chunks of one streamed completion: one id, the role in the first delta only.

    Args:
        model: The model name the chunks carry.
        include_usage: Send a last chunk with ``usage`` and no choices before ``[DONE]``.
    """

    sep: str | None = SEP

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def opening(self) -> Iterable[ServerSentEvent]:
        """The first chunk: the assistant's role and empty content."""
        return (self._choice(ChunkDelta(role="assistant", content=""), None),)

    def token(self, text: str) -> Iterable[ServerSentEvent]:
        """A content chunk (none for empty text)."""
        return (self._choice(ChunkDelta(content=text), None),) if text else ()

    def finish(self, answer: Outcome) -> Iterable[ServerSentEvent]:
        """The chunk with the finish reason (and the steadychat extension), then usage."""
        extra = {"steadychat": answer.extension} if answer.extension is not None else {}
        yield self._choice(ChunkDelta(), answer.finish_reason, **extra)
        if self.include_usage:
            yield self._event([], usage=answer.usage)

    def error(self, body: dict[str, Any]) -> ServerSentEvent:
        """An error after the stream has started, as a ``data: {"error": ...}`` event."""
        return JSONServerSentEvent(data=body, sep=SEP)

    def closing(self) -> Iterable[ServerSentEvent]:
        """``data: [DONE]``."""
        return (ServerSentEvent(data="[DONE]", sep=SEP),)

    def _choice(
        self, delta: ChunkDelta, finish_reason: Literal["stop", "length"] | None, **extra: Any
    ) -> ServerSentEvent:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason, logprobs=None)
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
