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


class FunctionCallIn(BaseModel):
    """The function an earlier assistant message called, and its arguments as a JSON text."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    """A message of the conversation as OpenAI clients send it (``developer`` means system)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    """May be null only on an assistant message that carries ``tool_calls``."""
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    """An assistant message's calls."""
    tool_call_id: str | None = None
    """Which call a ``tool`` message answers."""


class FunctionDefinition(BaseModel):
    """A function the model may call: its name, description and JSON schema of arguments."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """One tool of the request (only ``function`` tools exist)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``: this function must be called."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    """Options of a streamed reply."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    """Send a last chunk with ``usage`` and ``choices: []`` before ``[DONE]``."""


class JsonSchemaFormat(BaseModel):
    """The schema a ``json_schema`` reply follows."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text`` (default), ``json_object`` (one JSON object) or ``json_schema`` (matching it)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


HARMLESS_FIELDS = frozenset(
    {"metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
)
"""Request fields OpenAI clients send that change nothing a local model does; any other field
that is not in :class:`ChatCompletionRequest` is answered with a 400 naming it."""


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions. Every field is served or refused with a 400 that
    names it; only :data:`HARMLESS_FIELDS` are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    """The served model id or the alias ``steadychat``; another name is 404."""
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
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    """A forced call (``required`` or named) is one call; ``auto`` parses every call."""
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    """Token id (as a string) to a bias added to its logit."""
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


FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCall(BaseModel):
    """A called function: its name and its arguments as a JSON text."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call of the reply."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    """A generated token, its log probability and the most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """The logprobs of a choice's content tokens."""

    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    """The reply message of a non-streamed completion."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    """The one choice of a completion (``n`` is always 1)."""

    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


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
    tool_calls: list[ToolCallDelta] | None = None


class ToolCallDelta(BaseModel):
    """A tool call in a chunk: whole, with its position among the reply's calls."""

    index: int
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChunkChoice(BaseModel):
    """The choice of one chunk; ``finish_reason`` is set in the last one."""

    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


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
