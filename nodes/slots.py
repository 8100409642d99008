"""Slot values with provenance: setting, clearing and rendering them for the prompt."""

from __future__ import annotations

from collections.abc import Mapping

from nodes.state import Slot, SlotChange

__all__ = [
    "MAX_HISTORY",
    "apply_slot_value",
    "clear_slot",
    "correct_slots",
    "render_slots",
    "slot_label",
]

MAX_HISTORY = 20
"""Earlier values kept per slot (oldest dropped first), so checkpoints stay bounded."""

_LABELS: dict[str, str] = {
    "name": "Name",
    "language": "Reply language",
    "style:abbreviations": "Style (abbreviations)",
    "style:length": "Style (length)",
    "style:format": "Style (format)",
    "style:tone": "Style (tone)",
    "task": "Current task",
    "email": "Email",
    "phone": "Phone",
    "order_id": "Order number",
    "ticket_id": "Ticket number",
    "date": "Date mentioned",
}
# Order in which slots are rendered: identity and preferences first (they shape every reply),
# then the task, contact details and ids; memos and unknown slots follow alphabetically.
_ORDER = {name: i for i, name in enumerate(_LABELS)}


def _check(value: str, turn: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"slot value must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError("slot value must not be empty (clear the slot instead)")
    if not isinstance(turn, int) or isinstance(turn, bool) or turn < 0:
        raise ValueError(f"turn must be a non-negative integer, not {turn!r}")
    return value


def _history_with(current: Slot, replaced_at: int) -> list[SlotChange]:
    history = list(current.get("history") or [])
    if current.get("value") is not None:
        history.append(
            SlotChange(
                value=current["value"],
                turn=current["turn"],
                source=current["source"],
                replaced_at=replaced_at,
            )
        )
    return history[-MAX_HISTORY:]


def apply_slot_value(
    current: Slot | None, value: str, *, turn: int, source: str, evidence: str
) -> Slot | None:
    """Set a slot to ``value``, moving the value it replaces into its history.

    Args:
        current: The slot as it is in state, or None when it was never set.
        value: The new value (surrounding whitespace is dropped).
        turn: The turn the new value comes from (also the turn the old one is replaced at).
        source: Who sets it: ``"rule:<rule>"``, ``"model"`` or ``"user"``.
        evidence: The piece of user text the value was read from (``""`` for corrections).

    Returns:
        The new slot, or None when nothing changed (the slot already holds ``value``).

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is empty or ``turn`` is negative.
    """
    value = _check(value, turn)
    if current is not None and current.get("value") == value:
        return None
    history = _history_with(current, turn) if current is not None else []
    return Slot(value=value, turn=turn, source=source, evidence=evidence, history=history)


def clear_slot(current: Slot | None, *, turn: int, source: str = "user") -> Slot | None:
    """Clear a slot (value None) and forget its earlier values too (an empty history).

    Clearing is forgetting: neither the value nor the ones it replaced stay in state.

    Args:
        current: The slot as it is in state.
        turn: The turn at which it is cleared.
        source: Who clears it (``"user"`` for a correction through the API).

    Returns:
        The cleared slot, or None when there was nothing to clear.
    """
    if current is None or current.get("value") is None:
        return None
    return Slot(value=None, turn=turn, source=source, evidence="", history=[])


def correct_slots(
    current: Mapping[str, Slot], changes: Mapping[str, str | None], *, turn: int
) -> dict[str, Slot]:
    """The slots a user's correction changes: a string sets a value, ``None`` clears it.

    Old values move into each slot's history, as a correction made in conversation does.

    Args:
        current: The thread's slots.
        changes: Slot name to its new value, or to ``None`` to clear it.
        turn: The thread's current turn (the corrected values are dated to it).

    Returns:
        The changed slots only (a value the slot already holds changes nothing).

    Raises:
        ValueError: A cleared slot does not exist, or a value is empty.
    """
    updates: dict[str, Slot] = {}
    for name, value in changes.items():
        if value is None:
            if name not in current:
                raise ValueError(f"slot {name!r} does not exist")
            slot = clear_slot(current[name], turn=turn)
        else:
            slot = apply_slot_value(current.get(name), value, turn=turn, source="user", evidence="")
        if slot is not None:
            updates[name] = slot
    return updates


def slot_label(name: str) -> str:
    """The human-readable label of a slot name ("order_id" -> "Order number").

    Args:
        name: A slot name, including ``style:<dimension>`` and ``memo:<key>`` ones.

    Returns:
        The label; memos read "Remember", unknown names are title-cased.
    """
    if name in _LABELS:
        return _LABELS[name]
    if name.startswith("memo:"):
        return "Remember"
    if name.startswith("style:"):
        return f"Style ({name.split(':', 1)[1].replace('_', ' ')})"
    return name.replace("_", " ").capitalize()


def _sort_key(name: str) -> tuple[int, str]:
    return (_ORDER.get(name, len(_ORDER) + (0 if name.startswith("memo:") else 1)), name)


def render_slots(slots: Mapping[str, Slot]) -> str:
    """Render the set slots as "- Label: value" lines for the prompt, in a stable order.

    Cleared slots are left out; values are shown as given (any language), with line breaks
    folded into spaces so one slot stays on one line.

    Args:
        slots: ``state["slots"]``.

    Returns:
        The lines joined with newlines, or ``""`` when no slot holds a value.
    """
    lines = []
    for name in sorted(slots, key=_sort_key):
        value = slots[name].get("value")
        if value is None:
            continue
        lines.append(f"- {slot_label(name)}: {' '.join(str(value).split())}")
    return "\n".join(lines)
