"""Translating an OpenAI chat completion request into the completion the service runs."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from api.deps import ApiConfig
from api.errors import ApiError
from api.openai_completion import (
    Completion,
    StatelessCompletion,
    TurnCompletion,
    check_context_length,
)
from api.openai_schemas import ChatCompletionRequest, ChatMessageIn
from api.turn import turn_context
from graph.service import ChatService

__all__ = ["translate"]


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
    if body.stream_options is not None and not body.stream:
        raise _invalid("stream_options is only allowed when stream is true.", "stream_options")
    texts = _message_texts(body, config.max_message_chars)
    json_mode = body.response_format is not None and body.response_format.type == "json_object"
    max_tokens = body.max_completion_tokens or body.max_tokens
    if thread_id is None:
        messages = _stateless_messages(body, texts)
        await check_context_length(service, messages, max_tokens)
        generation = _generation(body)
        if max_tokens is not None:
            generation["max_new_tokens"] = max_tokens
        if body.profile is not None:
            generation["profile"] = body.profile
        return StatelessCompletion(
            service=service,
            messages=messages,
            generation=generation,
            max_tokens=max_tokens,
            json_mode=json_mode,
        )
    text, system_prompt = _last_user_text(body, texts)
    context = turn_context(
        service,
        owner=owner,
        user=body.user,
        profile=body.profile,
        max_tokens=max_tokens,
        generation=_generation(body),
        system_prompt=system_prompt,
    )
    return TurnCompletion(
        service=service,
        thread_id=thread_id,
        text=text,
        owner=owner,
        context=context,
        wait=config.busy_policy == "wait",
        json_mode=json_mode,
    )


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


def _generation(body: ChatCompletionRequest) -> dict[str, Any]:
    """Sampling overrides the caller set (unset ones keep the profile's values)."""
    values: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
    }
    return {key: value for key, value in values.items() if value is not None}
