"""Translating an OpenAI chat completion request into the completion the service runs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from api.deps import ApiConfig
from api.errors import ApiError
from api.openai_completion import (
    Completion,
    StatelessCompletion,
    TurnCompletion,
    check_context_length,
)
from api.openai_schemas import HARMLESS_FIELDS, ChatCompletionRequest, ChatMessageIn
from api.turn import turn_context
from graph.decoding import (
    Decoding,
    DecodingError,
    LocalDecoder,
    ToolSpec,
    local_decoder,
    supports_tools,
    tool_call_schema,
)
from graph.service import ChatService
from nodes.profiles import get_profile

__all__ = ["MODEL_ALIAS", "served_model", "translate"]

MODEL_ALIAS = "steadychat"
"""A ``model`` name that always means the model this server serves."""

_TOOL_WRAPPER = "<tool_call>\n\n</tool_call>"


def served_model(requested: str | None, config: ApiConfig) -> str:
    """The served model id a request's ``model`` names.

    Raises:
        ApiError: 404 ``model_not_found`` for a name that is neither the id nor the alias.
    """
    if requested is None or requested in (config.model, MODEL_ALIAS):
        return config.model
    raise ApiError(
        404,
        f"The model '{requested}' does not exist; this server serves '{config.model}' "
        f"(also named '{MODEL_ALIAS}').",
        param="model",
        code="model_not_found",
    )


@dataclasses.dataclass(kw_only=True)
class _Plan:
    """What a request asks of decoding, checked against the model."""

    decoding: Decoding | None = None
    tools: list[dict[str, Any]] | None = None
    """Rendered by the chat template."""
    parse_tools: bool = False
    check_json: bool = False
    legacy_json: bool = False
    """json_object on a model without constrained decoding: validated and retried once."""
    raw: bool = False
    """No post-processing: a grammar's output or tokens whose logprobs are returned."""


async def translate(
    body: ChatCompletionRequest,
    *,
    service: ChatService,
    config: ApiConfig,
    owner: str,
    thread_id: str | None,
) -> Completion:
    """Check a request and say what it asks the service to run.

    Args:
        body: The request.
        service: The service (its model and defaults).
        config: The API's configuration (message length limit, busy policy).
        owner: The caller's owner id.
        thread_id: The ``X-Thread-Id`` header: a turn of that thread; None: stateless.

    Returns:
        A stateless completion over the request's messages, or a turn of the thread.

    Raises:
        ApiError: 400 for what the API does not serve or a prompt too long for the model.
    """
    _refuse_unknown_fields(body)
    if body.stream_options is not None and not body.stream:
        raise _invalid("stream_options is only allowed when stream is true.", "stream_options")
    texts = _message_texts(body, config.max_message_chars)
    max_tokens = body.max_completion_tokens or body.max_tokens
    budget = _budget(service, body, max_tokens)
    stateful = thread_id is not None
    plan = _plan(body, service, budget=budget, stateful=stateful)
    generation = _generation(body)
    if plan.decoding is not None:
        generation.update(plan.decoding.generation_kwargs())
    if thread_id is None:
        messages = _stateless_messages(body, texts)
        await check_context_length(service, messages, max_tokens, tools=plan.tools)
        if max_tokens is not None:
            generation["max_new_tokens"] = max_tokens
        if body.profile is not None:
            generation["profile"] = body.profile
        if plan.tools:
            generation["tools"] = plan.tools
        return StatelessCompletion(
            service=service,
            messages=messages,
            generation=generation,
            max_tokens=max_tokens,
            json_mode=plan.legacy_json,
            check_json=plan.check_json,
            parse_tools=plan.parse_tools,
            raw=plan.raw,
            recorder=plan.decoding.recorder if plan.decoding else None,
        )
    text, system_prompt = _last_user_text(body, texts)
    context = turn_context(
        service,
        owner=owner,
        user=body.user,
        profile=body.profile,
        max_tokens=max_tokens,
        generation=generation,
        system_prompt=system_prompt,
    )
    return TurnCompletion(
        service=service,
        thread_id=thread_id,
        text=text,
        owner=owner,
        context=context,
        wait=config.busy_policy == "wait",
        json_mode=plan.legacy_json,
        check_json=plan.check_json,
    )


def _budget(service: ChatService, body: ChatCompletionRequest, max_tokens: int | None) -> int:
    """The reply's token budget as the chat model will resolve it."""
    if max_tokens is not None:
        return max_tokens
    own = getattr(service.chat_model, "max_tokens", None)
    if isinstance(own, int):
        return own
    context = service.context()
    return context.max_new_tokens or get_profile(body.profile or context.profile).max_new_tokens


def _refuse_unknown_fields(body: ChatCompletionRequest) -> None:
    for name in sorted(body.model_extra or {}):
        if name not in HARMLESS_FIELDS:
            raise _invalid(
                f"The parameter '{name}' is not served by this server.",
                name,
                code="unsupported_parameter",
            )


def _plan(
    body: ChatCompletionRequest, service: ChatService, *, budget: int, stateful: bool
) -> _Plan:
    """Check what the request asks of decoding and build it (raises 400 naming the field)."""
    model = service.chat_model
    decoder = local_decoder(model)
    plan = _Plan()
    where = "on a call with X-Thread-Id (a turn of a thread)"

    def needs_decoder(param: str, what: str) -> LocalDecoder:
        if decoder is None:
            raise _invalid(
                f"{what} needs the in-process model (its generate() and chat template); this "
                "server's model does not run in process.",
                param,
                code="unsupported_parameter",
            )
        return decoder

    if body.top_logprobs is not None and not body.logprobs:
        raise _invalid("top_logprobs needs logprobs set to true.", "top_logprobs")
    choice = body.tool_choice
    if choice is not None and not body.tools:
        raise _invalid("tool_choice needs tools.", "tool_choice")
    for index, message in enumerate(body.messages):
        if stateful and (message.role == "tool" or message.tool_calls):
            raise _invalid(f"Tool messages are not served {where}.", f"messages[{index}]")
    grammar: Any = None
    minimal = 0
    fmt = body.response_format
    if body.tools and choice != "none":
        if stateful:
            raise _invalid(f"tools are not served {where}.", "tools")
        if not supports_tools(model):
            raise _invalid(
                "tools are not supported: this model's chat template has no tool support.",
                "tools",
                code="unsupported_parameter",
            )
        needs_decoder("tools", "tools")
        if fmt is not None and fmt.type != "text":
            raise _invalid("response_format cannot be combined with tools.", "response_format")
        specs = [
            ToolSpec(name=t.function.name, parameters=_parameters(t.function.parameters))
            for t in body.tools
        ]
        plan.tools = [t.model_dump(mode="json", exclude_none=True) for t in body.tools]
        plan.parse_tools = plan.raw = True
        forced = specs if choice == "required" else None
        if choice is not None and not isinstance(choice, str):
            forced = [spec for spec in specs if spec.name == choice.function.name]
            if not forced:
                raise _invalid(
                    f"tool_choice names '{choice.function.name}', which is not in tools.",
                    "tool_choice",
                )
        if forced is not None:
            decoder = needs_decoder("tool_choice", f"tool_choice '{_choice_name(choice)}'")
            grammar = _decoded(decoder.tool_call_grammar, forced)
            minimal = decoder.minimal_tokens(tool_call_schema(forced), wrapper=_TOOL_WRAPPER)
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise _invalid(
                "response_format json_schema needs json_schema.schema.", "response_format"
            )
        decoder = needs_decoder("response_format", "response_format json_schema")
        grammar = _decoded(decoder.json_grammar, fmt.json_schema.schema_)
        minimal = decoder.minimal_tokens(fmt.json_schema.schema_)
        plan.check_json = plan.raw = True
    elif fmt is not None and fmt.type == "json_object":
        if decoder is None:
            plan.legacy_json = True
        else:
            grammar = _decoded(decoder.json_grammar, None)
            minimal = decoder.minimal_tokens(None)
            plan.check_json = plan.raw = True
    if body.logprobs:
        if stateful:
            raise _invalid(f"logprobs are not served {where}.", "logprobs")
        needs_decoder("logprobs", "logprobs")
        plan.raw = True
    bias = _logit_bias(body)
    penalties = {
        name: value
        for name, value in (
            ("frequency_penalty", body.frequency_penalty),
            ("presence_penalty", body.presence_penalty),
        )
        if value
    }
    for name in penalties:
        needs_decoder(name, name)
    if bias:
        needs_decoder("logit_bias", "logit_bias")
    if decoder is not None and (grammar is not None or body.logprobs or penalties or bias):
        try:
            plan.decoding = decoder.build(
                grammar=grammar,
                minimal_tokens=minimal,
                max_new_tokens=budget,
                logit_bias=bias,
                frequency_penalty=penalties.get("frequency_penalty", 0.0),
                presence_penalty=penalties.get("presence_penalty", 0.0),
                top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            )
        except DecodingError as exc:
            raise _invalid(str(exc), exc.param) from exc
    return plan


def _decoded(compile_: Any, argument: Any) -> Any:
    try:
        return compile_(argument)
    except DecodingError as exc:
        raise _invalid(str(exc), exc.param) from exc


def _choice_name(choice: Any) -> str:
    return choice if isinstance(choice, str) else choice.function.name


def _parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    # Qwen's format needs an object of arguments; a function without parameters takes none.
    if not parameters:
        return {"type": "object", "properties": {}}
    return parameters


def _logit_bias(body: ChatCompletionRequest) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            bias[int(key)] = value
        except ValueError:
            raise _invalid(
                f"logit_bias keys are token ids; '{key}' is not an integer.", "logit_bias"
            ) from None
    return bias


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _message_text(message: ChatMessageIn, index: int) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant" and message.tool_calls:
            return ""
        raise _invalid(
            "A message needs content (only an assistant message with tool_calls may omit it).",
            f"messages[{index}].content",
        )
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
    for index, (message, text) in enumerate(zip(body.messages, texts, strict=True)):
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role == "user":
            dialogue.append(HumanMessage(content=text))
        elif message.role == "tool":
            if not message.tool_call_id:
                raise _invalid("A tool message needs tool_call_id.", f"messages[{index}]")
            dialogue.append(ToolMessage(content=text, tool_call_id=message.tool_call_id))
        else:
            dialogue.append(AIMessage(content=text, tool_calls=_calls(message, index)))
    if not dialogue or not isinstance(dialogue[-1], HumanMessage | ToolMessage):
        raise _invalid("The last message must have role 'user' or 'tool'.", "messages")
    if system:
        return [SystemMessage(content="\n\n".join(system)), *dialogue]
    return dialogue


def _calls(message: ChatMessageIn, index: int) -> list[Any]:
    calls: list[Any] = []
    for number, call in enumerate(message.tool_calls or []):
        try:
            args = json.loads(call.function.arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise _invalid(
                "A tool call's arguments must be a JSON object text.",
                f"messages[{index}].tool_calls[{number}].function.arguments",
            )
        calls.append({"name": call.function.name, "args": args, "id": call.id})
    return calls


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


def _generation(body: ChatCompletionRequest) -> dict[str, Any]:
    """Sampling overrides the caller set (unset ones keep the profile's values)."""
    values: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
    }
    return {key: value for key, value in values.items() if value is not None}
