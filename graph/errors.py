"""The errors the service raises on purpose; the API maps each to one 4xx (or 500) answer."""

from __future__ import annotations

__all__ = [
    "ContextLengthError",
    "EngineUnavailableError",
    "ServiceError",
    "ThreadBusyError",
    "ThreadNotFoundError",
    "TurnCancelledError",
    "TurnFailedError",
]


class ServiceError(Exception):
    """Base class of the errors the service raises on purpose (the API maps them to 4xx)."""


class ThreadNotFoundError(ServiceError):
    """Unknown thread, a deleted one, or one owned by another tenant."""


class ThreadBusyError(ServiceError):
    """A turn is already running on this thread and the caller asked not to wait."""


class ContextLengthError(ServiceError):
    """The prompt cannot fit the model's context window even after dropping optional parts."""


class TurnCancelledError(ServiceError):
    """The caller cancelled the turn (client disconnect); nothing was saved."""


class TurnFailedError(ServiceError):
    """The turn failed inside the service (model or store error); nothing was saved.

    The message is generic on purpose; the cause is chained and logged, never shown to clients.
    """


class EngineUnavailableError(ServiceError):
    """The inference engine could not be reached, timed out or broke off mid-reply.

    Nothing of the turn was saved; the same request can be sent again once the engine is back.

    Args:
        message: What failed (logged, not shown to clients: it may name hosts).
        retry_after_s: Seconds a client should wait before retrying.
    """

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
