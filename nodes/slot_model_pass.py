"""Optional model pass for slots: the chat model answers in JSON, validated, never inventing."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.constants import TAG_NOSTREAM
from pydantic import BaseModel, ConfigDict, ValidationError

from nodes.slot_rules import SlotFinding, memo_key, style_dimension
from nodes.text import fold, message_text, normalize_text, split_sentences

__all__ = [
    "ModelSlots",
    "extract_model_slots",
    "merge_findings",
    "text_contains",
]

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 160
"""Enough for a handful of short values; the pass must stay cheap."""

_INSTRUCTIONS = """You extract facts from one user message. Reply with one JSON object and nothing \
else. Keys (leave out any that the message does not state):
- "name": the user's own name
- "email", "phone": the user's contact details
- "order_id", "ticket_id": order or support-ticket numbers
- "date": a date the user mentions
- "language": the language the user wants replies in
- "style": a style the user asks for (e.g. "be concise", "no abbreviations")
- "task": what the user is working on
- "memo": something the user explicitly asks you to remember
Every value must be copied exactly from the message. Never guess or infer a value. \
If nothing applies, reply {}."""


class ModelSlots(BaseModel):
    """The JSON object the model must return (unknown keys are an error worth a retry)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    order_id: str | None = None
    ticket_id: str | None = None
    date: str | None = None
    language: str | None = None
    style: str | None = None
    task: str | None = None
    memo: str | None = None


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
_LOOSE_KEYS = frozenset({"phone", "order_id", "ticket_id"})


def _parse(reply: str) -> ModelSlots:
    text = _FENCE.sub("", reply.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("the reply holds no JSON object")
    return ModelSlots.model_validate(json.loads(text[start : end + 1]))


def text_contains(text: str, value: str, *, loose: bool = False) -> bool:
    """Whether ``value`` occurs in ``text`` after normalisation (NFKC, case, whitespace).

    Args:
        text: The user's message.
        value: A value proposed for a slot.
        loose: Also compare with every character but letters and digits removed (for phone
            numbers and ids written with different separators).

    Returns:
        True when the text contains the value.
    """
    folded_value = fold(value)
    if not folded_value:
        return False
    if folded_value in fold(text):
        return True
    if loose:
        bare_value = "".join(ch for ch in folded_value if ch.isalnum())
        bare_text = "".join(ch for ch in fold(text) if ch.isalnum())
        return len(bare_value) >= 3 and bare_value in bare_text
    return False


def _evidence(text: str, value: str) -> str:
    folded = fold(value)
    for sentence in split_sentences(normalize_text(text)):
        if folded in fold(sentence):
            return sentence
    return value


def _to_findings(slots: ModelSlots, text: str) -> list[SlotFinding]:
    findings: list[SlotFinding] = []
    for key, value in slots.model_dump(exclude_none=True).items():
        value = value.strip()
        if not value or not text_contains(text, value, loose=key in _LOOSE_KEYS):
            if value:
                log.info("model slot pass: dropped %s=%r, not in the user's text", key, value)
            continue
        if key == "style":
            name = f"style:{style_dimension(value) or 'other'}"
        elif key == "memo":
            name = memo_key(value)
        else:
            name = key
        findings.append(SlotFinding(name, value, _evidence(text, value), "model"))
    return findings


def extract_model_slots(
    chat_model: BaseChatModel, text: str, *, max_new_tokens: int = MAX_NEW_TOKENS
) -> list[SlotFinding]:
    """Ask the chat model for the slots in one user message.

    The model is called with ``profile="precise"`` and temperature 0. A reply that is not valid
    JSON for ``ModelSlots`` is answered once with the error and a request to fix it; a second
    invalid reply gives no findings. Values the text does not contain are dropped.

    Args:
        chat_model: Any LangChain chat model.
        text: The user's message.
        max_new_tokens: Reply budget of each call.

    Returns:
        Findings with rule ``"model"``, in the same shape as the rule pass.

    Raises:
        Exception: Whatever the chat model raises when it is called (the node catches it).
    """
    if not text.strip():
        return []
    messages: list[BaseMessage] = [
        SystemMessage(content=_INSTRUCTIONS),
        HumanMessage(content=f"Message:\n{text}"),
    ]
    for attempt in range(2):
        reply = chat_model.invoke(
            messages,
            # Not the reply: kept out of stream_mode="messages" (the service's token stream,
            # Studio), like the summary calls.
            config={"tags": [TAG_NOSTREAM], "run_name": "extract_slots_model_pass"},
            profile="precise",
            temperature=0,
            max_new_tokens=max_new_tokens,
        )
        content = message_text(reply)
        try:
            return _to_findings(_parse(content), text)
        except (ValueError, ValidationError) as exc:
            # ValidationError subclasses ValueError; json.JSONDecodeError does too.
            error = str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else str(exc)
            log.info("model slot pass: invalid reply (attempt %d): %s", attempt + 1, error)
            messages = [
                *messages,
                AIMessage(content=content),
                HumanMessage(
                    content=f"That reply was not valid: {error}\n"
                    "Reply again with only the JSON object, using only the allowed keys."
                ),
            ]
    return []


def merge_findings(
    rule_findings: Sequence[SlotFinding], model_findings: Sequence[SlotFinding]
) -> list[SlotFinding]:
    """Combine both passes: the rule pass wins when both set the same slot.

    Args:
        rule_findings: Findings of ``extract_rule_slots``.
        model_findings: Findings of ``extract_model_slots``.

    Returns:
        The rule findings followed by the model findings for slots the rules did not set.
    """
    ruled = {f.name for f in rule_findings}
    # A model style with no known dimension would otherwise sit beside the rule's precise one.
    ruled_style = any(name.startswith("style:") for name in ruled)
    extra = [
        f
        for f in model_findings
        if f.name not in ruled and not (ruled_style and f.name == "style:other")
    ]
    return [*rule_findings, *extra]
