"""Prompt assembly within a token budget: optional parts are dropped lowest priority first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from nodes.errors import ContextOverflowError
from nodes.text import message_text


@dataclass(kw_only=True)
class Section:
    """One optional block of the system message (state, a summary line, a memory...)."""

    kind: str
    """Account bucket: state, summary_l2, summary_l1, memories."""
    label: str
    """Name used in the ``dropped`` list, e.g. "memory:t12:user"."""
    text: str
    priority: int
    """Lower is dropped first."""


@dataclass(kw_only=True)
class Assembled:
    messages: list[BaseMessage]
    sections: dict[str, int]
    total: int
    dropped: list[str] = field(default_factory=list)
    kept_labels: list[str] = field(default_factory=list)


def _blocks(
    sections: Sequence[Section],
    headings: Mapping[str, str],
    fences: Mapping[str, tuple[str, str]],
) -> list[str]:
    parts: list[str] = []
    for kind, heading in headings.items():
        block = [s.text for s in sections if s.kind == kind]
        if block:
            opening, closing = fences.get(kind, ("", ""))
            body = "\n".join(block)
            if opening or closing:
                body = f"{opening}\n{body}\n{closing}"
            parts.append(f"# {heading}\n{body}")
    return parts


def _system_text(
    rules: str,
    sections: Sequence[Section],
    headings: Mapping[str, str],
    fences: Mapping[str, tuple[str, str]] | None = None,
) -> str:
    return "\n\n".join([rules, *_blocks(sections, headings, fences or {})])


def assemble_prompt(
    model: BaseChatModel,
    *,
    rules: str,
    sections: Sequence[Section],
    headings: dict[str, str],
    window: Sequence[BaseMessage],
    user: HumanMessage,
    budget: int,
    turn_headings: Mapping[str, str] | None = None,
    fences: Mapping[str, tuple[str, str]] | None = None,
    turn_frame: tuple[str, str] = ("", ""),
) -> Assembled:
    """Fit system rules, optional sections, the verbatim window and the user turn into ``budget``.

    The prompt runs from the least to the most volatile part: the system message (rules, then
    the sections of ``headings``), the window, and last the turn's own parts (the sections of
    ``turn_headings``, framed by ``turn_frame`` and put before the user's text in the last
    message). A thread's next prompt then extends this one token for token up to its window
    until a compaction, which lets an engine's prefix cache reuse that KV. ``fences`` wraps a
    kind's block in an opening and a closing line (quoted data).

    Counting uses the model's own tokenizer through ``get_num_tokens_from_messages`` (the chat
    template's real length). Optional sections are dropped in ascending ``priority``; window
    exchanges are dropped oldest first and rank between sections by the priority the caller
    gives them (they come as pairs, so an exchange is never split).

    Raises:
        ContextOverflowError: rules + user turn alone exceed the budget.
    """

    def count(msgs: list[BaseMessage]) -> int:
        return model.get_num_tokens_from_messages(msgs)

    mandatory = count([SystemMessage(content=rules), user])
    if mandatory > budget:
        raise ContextOverflowError(
            f"the prompt needs {mandatory} tokens for the system rules and the message alone, "
            f"over the budget of {budget} (context window minus reply tokens)"
        )

    # Window exchanges become droppable units (oldest first), each a pair or a lone message.
    units: list[list[BaseMessage]] = []
    for msg in window:
        if units and isinstance(msg, BaseMessage) and msg.type == "ai" and len(units[-1]) == 1:
            units[-1].append(msg)
        else:
            units.append([msg])

    kept_sections = list(sections)
    kept_units = list(units)
    dropped: list[str] = []

    turn_kinds = turn_headings or {}
    fenced = fences or {}

    def build() -> list[BaseMessage]:
        stable = [s for s in kept_sections if s.kind not in turn_kinds]
        system = SystemMessage(content=_system_text(rules, stable, headings, fenced))
        blocks = _blocks([s for s in kept_sections if s.kind in turn_kinds], turn_kinds, fenced)
        last = user
        if blocks:
            head, tail = turn_frame
            preamble = "\n\n".join(part for part in (head, *blocks, tail) if part)
            last = HumanMessage(content=f"{preamble}\n\n{message_text(user)}")
        return [system, *(m for unit in kept_units for m in unit), last]

    msgs = build()
    total = count(msgs)
    while total > budget:
        # Candidates: the lowest-priority section, or the oldest window exchange. The window is
        # worth more than recalled memories and old summary lines, less than the state block.
        window_priority = 50
        section = min(kept_sections, key=lambda s: s.priority, default=None)
        if kept_units and (section is None or section.priority >= window_priority):
            unit = kept_units.pop(0)
            turn = unit[0].additional_kwargs.get("turn", "?")
            dropped.append(f"window:t{turn}")
        elif section is not None:
            kept_sections.remove(section)
            dropped.append(section.label)
        else:  # pragma: no cover - mandatory part already checked to fit
            break
        msgs = build()
        total = count(msgs)

    per_kind: dict[str, int] = {"system": model.get_num_tokens(rules)}
    for s in kept_sections:
        per_kind[s.kind] = per_kind.get(s.kind, 0) + model.get_num_tokens(s.text)
    per_kind["window"] = sum(model.get_num_tokens(message_text(m)) for u in kept_units for m in u)
    per_kind["user"] = model.get_num_tokens(message_text(user))
    return Assembled(
        messages=msgs,
        sections=per_kind,
        total=total,
        dropped=dropped,
        kept_labels=[s.label for s in kept_sections],
    )
