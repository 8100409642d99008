"""Request and response shapes of the OpenAI-compatible API (/v1/chat/completions, /v1/models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import ProfileName, Usage

StopText = Annotated[str, Field(min_length=1)]


def _text_part_schema(schema: dict[str, Any]) -> None:
    # The published schema says what is served; parsing stays lenient so that the route can
    # answer an image or audio part with an error naming that part.
    schema["properties"]["type"]["enum"] = ["text"]
    schema["properties"]["text"] = {"type": "string", "title": "Text"}
    schema["required"] = ["type", "text"]


class ContentPart(BaseModel):
    """One part of a multi-part content; only ``{"type": "text", "text": ...}`` is served."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_text_part_schema)

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """A message of the conversation as OpenAI clients send it (``developer`` means system)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]
    name: str | None = None


class StreamOptions(BaseModel):
    """Options of a streamed reply."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    """Send a last chunk with ``usage`` and ``choices: []`` before ``[DONE]``."""


class ResponseFormat(BaseModel):
    """``text`` (default) or ``json_object`` (the reply must parse as one JSON object)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object"] = "text"


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions. Fields OpenAI clients send that are not served here
    (tools, logit_bias, penalties, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """Echoed back; one model is loaded, so any name is accepted."""
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None
    """Takes precedence over ``max_tokens`` when both are given."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    """0 means greedy decoding."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    """Only 1 is served."""
    response_format: ResponseFormat | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    """Becomes the user id memory is kept under (stateful calls)."""
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    profile: ProfileName | None = None
    """steadychat extension: the generation profile (``GET /profiles`` lists them)."""


class SteadychatExtension(BaseModel):
    """What a stateful call (header ``X-Thread-Id``) adds to OpenAI's response."""

    thread_id: str
    turn: int
    context_account: dict[str, Any]


class AssistantMessage(BaseModel):
    """The reply message of a non-streamed completion."""

    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    """The one choice of a completion (``n`` is always 1)."""

    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    """Response of a non-streamed POST /v1/chat/completions."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    steadychat: SteadychatExtension | None = None


class ChunkDelta(BaseModel):
    """What a chunk adds: the role (first chunk only) or a piece of text."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The choice of one chunk; ``finish_reason`` is set in the last one."""

    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
    steadychat: SteadychatExtension | None = None


class ModelCard(BaseModel):
    """The loaded model as /v1/models describes it."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """Response of GET /v1/models."""

    object: Literal["list"]
    data: list[ModelCard]
