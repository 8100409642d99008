"""Tool calls in a model's reply, in the Hermes/Qwen format ``<tool_call>{json}</tool_call>``."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

from nodes.text import held_prefix

__all__ = ["OPEN", "ParsedCall", "ToolCallStream", "parse_tool_calls"]

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParsedCall:
    """One call: its id, the function's name and its arguments as a JSON text."""

    id: str
    name: str
    arguments: str


def parse_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """Split a reply into its text and its tool calls.

    A block whose JSON does not parse, or that names no function, stays in the text (as
    vLLM's Hermes parser does): nothing the model wrote is dropped.

    Args:
        text: The reply.

    Returns:
        The text outside the calls (stripped) and the calls in order.
    """
    calls: list[ParsedCall] = []
    kept: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1))
        if call is None:
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        calls.append(call)
    kept.append(text[position:])
    return "".join(kept).strip(), calls


def _call(body: str) -> ParsedCall | None:
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        name=value["name"],
        arguments=json.dumps(arguments, ensure_ascii=False),
    )


class ToolCallStream:
    """Streams a reply's text while holding back whatever may be a tool call.

    Text is released as soon as it cannot be the start of ``<tool_call>``; from the first
    call on everything is kept for :meth:`finish`, which parses the calls.
    """

    def __init__(self) -> None:
        self._held = ""
        self._in_call = False
        self._released: list[str] = []

    def feed(self, text: str) -> str:
        """Add a piece; return the text that is certainly not part of a tool call."""
        self._held += text
        if self._in_call:
            return ""
        start = self._held.find(OPEN)
        if start >= 0:
            self._in_call = True
            out, self._held = self._held[:start], self._held[start:]
        else:
            keep = held_prefix(self._held, OPEN)
            out = self._held[: len(self._held) - keep]
            self._held = self._held[len(self._held) - keep :]
        self._released.append(out)
        return out

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The text still held that is not a call, and the calls."""
        rest, calls = parse_tool_calls(self._held)
        if not calls:
            rest = self._held
        if not "".join(self._released).strip():
            rest = rest.strip()
        return rest, calls
