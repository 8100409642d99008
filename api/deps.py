"""FastAPI dependencies: the service, the settings and the API's own configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, Request

from api.errors import ApiError
from api.metrics import Metrics
from graph.service import ChatService

DEFAULT_MAX_MESSAGE_CHARS = 32_000


def _keys(value: Any) -> tuple[str, ...]:
    # Settings may hold keys as a list or as one comma-separated string (from the environment).
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(k.strip() for k in value.split(",") if k.strip())
    if isinstance(value, Sequence):
        return tuple(str(getattr(k, "get_secret_value", lambda k=k: k)()).strip() for k in value)
    raise TypeError(f"api_keys must be a list or a comma-separated string, not {type(value)}")


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """The settings the HTTP layer reads, with their defaults.

    Built from ``graph.settings.Settings`` by ``from_settings``; fields missing there keep
    the defaults below.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    busy_policy: Literal["wait", "reject"] = "wait"
    idempotency_ttl_s: float = 24 * 3600
    idempotency_max_keys: int = 10_000
    log_level: str = "INFO"

    @classmethod
    def from_settings(cls, settings: Any) -> ApiConfig:
        """Read the HTTP knobs from a Settings object.

        Args:
            settings: A ``graph.settings.Settings`` (or any object with the same attributes).

        Returns:
            The API configuration.
        """
        if settings is None:
            return cls()
        defaults = cls()
        raw_keys = getattr(settings, "api_keys", None)
        busy = str(getattr(settings, "busy_policy", defaults.busy_policy))
        if busy not in ("wait", "reject"):
            raise ValueError(f"busy_policy must be 'wait' or 'reject', not {busy!r}")
        return cls(
            host=str(getattr(settings, "host", defaults.host)),
            port=int(getattr(settings, "port", defaults.port)),
            api_keys=_keys(raw_keys),
            max_message_chars=int(
                getattr(settings, "max_message_chars", defaults.max_message_chars)
            ),
            busy_policy=busy,  # type: ignore[arg-type]
            idempotency_ttl_s=float(
                getattr(settings, "idempotency_ttl_s", defaults.idempotency_ttl_s)
            ),
            idempotency_max_keys=int(
                getattr(settings, "idempotency_max_keys", defaults.idempotency_max_keys)
            ),
            log_level=str(getattr(settings, "log_level", defaults.log_level)),
        )


def get_service(request: Request) -> ChatService:
    """The app's ChatService (503 while the lifespan has not opened it yet)."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(
            503,
            "The service is starting; try again shortly.",
            type="server_error",
            code="service_unavailable",
        )
    return service


def get_config(request: Request) -> ApiConfig:
    """The app's ApiConfig."""
    config: ApiConfig = request.app.state.api_config
    return config


def get_metrics(request: Request) -> Metrics:
    """The app's Metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


ServiceDep = Annotated[ChatService, Depends(get_service)]
ConfigDep = Annotated[ApiConfig, Depends(get_config)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
