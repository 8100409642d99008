"""The extract_slots node: slots from the user turn (rules, optional model pass) and tracking."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.slot_model_pass import extract_model_slots, merge_findings
from nodes.slot_rules import SlotFinding, extract_rule_slots
from nodes.slots import apply_slot_value
from nodes.state import ChatState, Slot
from nodes.text import message_text
from nodes.tracking import (
    add_pending,
    detect_questions,
    extract_entities,
    next_topic,
    update_entities,
)

__all__ = ["make_extract_slots"]

log = logging.getLogger(__name__)

_TOPIC_TURNS = 3
"""User turns (this one included) the topic is computed from."""
_ENTITY_SLOTS = frozenset({"name", "order_id", "ticket_id"})

_PERSONAL_SLOTS = frozenset({"name", "email", "phone"})
# Words that introduce personal details ("my name is ..."): no topic on their own.
_PERSONAL_CUES = ["name", "email", "e-mail", "phone", "mobile", "called", "名字", "邮箱", "电话"]


def _timestamp(message: BaseMessage) -> datetime | None:
    raw = message.additional_kwargs.get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        log.warning("extract_slots: unreadable message timestamp %r", raw)
        return None


def make_extract_slots(
    chat_model: BaseChatModel | None = None,
) -> Callable[[ChatState, Runtime[Context]], dict[str, Any]]:
    """Build the extract_slots node.

    Args:
        chat_model: The model asked for slots as JSON when ``Context.model_slot_pass`` is on;
            None runs the rule pass only.

    Returns:
        The node function ``(state, runtime) -> partial update``.
    """

    def extract_slots(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Read slots from the last user message and update topic, entities, pending questions.

        Returns ``{"slots": <changed slots only>, "topic", "entities", "pending_questions"}``;
        nothing when there is no user message. A failing model pass is logged and skipped.
        """
        ctx = (runtime.context if runtime is not None else None) or Context()
        messages = list(state.get("messages") or [])
        human = [m for m in messages if isinstance(m, HumanMessage)]
        if not human:
            return {}
        user = human[-1]
        text = message_text(user)
        turn = int(state.get("turn") or 0)

        findings: list[SlotFinding] = extract_rule_slots(text, now=_timestamp(user))
        if ctx.model_slot_pass and chat_model is not None:
            try:
                findings = merge_findings(findings, extract_model_slots(chat_model, text))
            except Exception:
                # The model pass is an extra; the turn goes on with what the rules found.
                log.warning("extract_slots: model slot pass failed", exc_info=True)

        current: dict[str, Slot] = dict(state.get("slots") or {})
        changed: dict[str, Slot] = {}
        for finding in findings:
            source = "model" if finding.rule == "model" else f"rule:{finding.rule}"
            slot = apply_slot_value(
                current.get(finding.name),
                finding.value,
                turn=turn,
                source=source,
                evidence=finding.evidence,
            )
            if slot is not None:
                changed[finding.name] = slot
                current[finding.name] = slot

        task = next((f.value for f in findings if f.name == "task"), None)
        recent = [message_text(m) for m in human[-_TOPIC_TURNS:]]
        # Who the user is (name, contact details) is a fact about them, not what they talk about.
        personal = [
            str(slot["value"])
            for name, slot in current.items()
            if name in _PERSONAL_SLOTS and slot.get("value")
        ]
        if personal:
            personal += _PERSONAL_CUES
        topic = next_topic(state.get("topic"), recent, task=task, exclude=personal)

        mentioned = extract_entities(text)
        known = {e.casefold() for e in mentioned}
        mentioned += [
            f.value for f in findings if f.name in _ENTITY_SLOTS and f.value.casefold() not in known
        ]
        entities = update_entities(state.get("entities") or [], mentioned)

        preference_evidence = [
            f.evidence for f in findings if f.name == "language" or f.name.startswith("style:")
        ]
        questions = detect_questions(text, exclude=preference_evidence)
        pending = add_pending(state.get("pending_questions") or [], questions, turn)

        return {
            "slots": changed,
            "topic": topic,
            "entities": entities,
            "pending_questions": pending,
        }

    return extract_slots
