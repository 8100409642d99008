"""The errors a turn's nodes raise on purpose; the service maps each to what its callers see."""

from __future__ import annotations

__all__ = ["ContextOverflowError", "ThreadDeletedError", "TurnCancelled"]


class ContextOverflowError(ValueError):
    """The mandatory parts of the prompt (system rules, the user turn) do not fit the budget."""


class TurnCancelled(RuntimeError):
    """Generation was stopped because the caller cancelled the turn."""


class ThreadDeletedError(RuntimeError):
    """A write reached a thread that has been deleted."""
