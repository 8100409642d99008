"""FastAPI dependencies: the service, the API's view of the settings and the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from api.errors import ApiError
from api.metrics import Metrics
from graph.service import ChatService
from graph.settings import Settings


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """What the routes read of the settings, taken once when the app is built."""

    model: str
    """The name the model is served under (``/v1/models``, a completion's ``model``)."""
    api_keys: tuple[str, ...]
    max_message_chars: int
    busy_policy: Literal["wait", "reject"]
    default_profile: str
    """The generation profile of a request that names none."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        """Take the HTTP knobs from the deployment's settings.

        Args:
            settings: The settings the app is built with.

        Returns:
            The API configuration.
        """
        return cls(
            model=settings.model,
            api_keys=tuple(settings.api_keys),
            max_message_chars=settings.max_message_chars,
            busy_policy=settings.busy_policy,
            default_profile=settings.default_profile,
        )


def get_service(request: Request) -> ChatService:
    """The app's ChatService (503 while the lifespan has not opened it yet)."""
    service: ChatService | None = request.app.state.service
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
