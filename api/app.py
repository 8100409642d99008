"""The FastAPI app factory: routers, error handlers, middleware, static page and lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.allocator import HeapTrimmer
from api.auth import KeyRing
from api.deps import ApiConfig
from api.errors import BodyLimitMiddleware, CatchAllMiddleware, register_error_handlers
from api.idempotency import IdempotencyCache
from api.logging import RequestIdMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.routes import health, openai, profiles, threads
from graph.service import ChatService
from graph.settings import Settings

logger = logging.getLogger("steadychat.api")

STATIC_DIR = Path(__file__).parent / "static"
MIN_BODY_LIMIT = 4 * 1024 * 1024

_INVALID_REQUEST = {
    "description": "Invalid request",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _queue_depth(app: FastAPI) -> float:
    # Turns waiting for their thread's lock; none before the lifespan has opened the service.
    service: ChatService | None = app.state.service
    return float(service.waiting_turns) if service is not None else 0.0


def _mount_static(app: FastAPI, directory: Path) -> None:
    index = directory / "index.html"
    if not index.is_file():
        return

    async def index_page() -> FileResponse:
        return FileResponse(index)

    app.add_api_route("/", index_page, methods=["GET"], include_in_schema=False)
    # Top-level files are served at the root too, so the page may link "app.js" or
    # "/static/app.js"; explicit routes keep unknown paths at 404 and wrong methods at 405.
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != "index.html":

            async def static_file(path: Path = path) -> FileResponse:
                return FileResponse(path)

            app.add_api_route(
                f"/{path.name}", static_file, methods=["GET"], include_in_schema=False
            )
    app.mount("/static", StaticFiles(directory=directory), name="static")


def _state_what_is_enforced(document: dict[str, Any], *, keys: bool, config: ApiConfig) -> None:
    """Make the document say what this server enforces: its message limit, and bearer keys
    (security and 401 answers) only when keys are configured."""
    if not keys:
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
        document.get("components", {}).pop("securitySchemes", None)
    content = (
        document.get("components", {})
        .get("schemas", {})
        .get("MessageCreate", {})
        .get("properties", {})
        .get("content")
    )
    if content is not None:
        content["maxLength"] = config.max_message_chars


def _openapi_without_422(app: FastAPI, config: ApiConfig) -> None:
    # Validation errors are answered with 400 in the error shape (api.errors), so FastAPI's
    # generated 422 HTTPValidationError entries would document a response that never comes.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                generated = responses.get("422", {})
                if generated.get("description") == "Validation Error":
                    del responses["422"]
                    responses.setdefault("400", dict(_INVALID_REQUEST))
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _state_what_is_enforced(document, keys=app.state.keyring.enabled, config=config)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(service: ChatService | None = None, *, settings: Settings | None = None) -> FastAPI:
    """Build the HTTP application.

    Args:
        service: A ready ChatService (tests, embedding backends). It is used as is and left
            open on shutdown. When None, the lifespan opens one with
            ``open_service(settings)`` and closes it on shutdown.
        settings: The settings; when None they are read from the environment
            (``STEADYCHAT_*``).

    Returns:
        The FastAPI app. ``app.state`` holds ``service``, ``settings``, ``api_config``,
        ``metrics``, ``keyring``, ``idempotency`` and ``started_at`` (Unix seconds).
    """
    if settings is None:
        settings = Settings()
    config = ApiConfig.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.service = service
            app.state.idempotency.shared = service.keys
            yield
            return
        from graph.compose import open_service

        logger.info("opening the chat service")
        trimmer = (
            HeapTrimmer(settings.malloc_trim_seconds) if settings.malloc_trim_seconds else None
        )
        async with open_service(settings) as opened:
            app.state.service = opened
            # On PostgreSQL, Idempotency-Keys hold across every process of the deployment.
            app.state.idempotency.shared = opened.keys
            app.state.trimmer = trimmer.start() if trimmer else None
            logger.info("chat service ready")
            try:
                yield
            finally:
                if trimmer is not None:
                    trimmer.stop()
                app.state.service = None
                logger.info("closing the chat service")

    app = FastAPI(
        title="steadychat",
        summary="A conversational agent that stays coherent over hundreds of turns.",
        version="0.1.0",
        lifespan=lifespan,
    )
    metrics = Metrics(queue_depth=lambda: _queue_depth(app))
    app.state.service = service
    app.state.settings = settings
    app.state.api_config = config
    app.state.metrics = metrics
    app.state.keyring = KeyRing(config.api_keys)
    app.state.idempotency = IdempotencyCache()
    app.state.started_at = int(time.time())

    register_error_handlers(app)
    app.include_router(threads.router)
    app.include_router(openai.router)
    app.include_router(profiles.router)
    app.include_router(health.router)
    _mount_static(app, STATIC_DIR)
    _openapi_without_422(app, config)

    # Added last = outermost: request id first, so metrics and the 500 log line carry it.
    app.add_middleware(CatchAllMiddleware)
    # A message may use up to 4 bytes per character in UTF-8, plus the rest of the body; /v1
    # requests carry whole conversations, hence the generous floor.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=max(MIN_BODY_LIMIT, 8 * config.max_message_chars)
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics, router_app=app)
    app.add_middleware(RequestIdMiddleware)
    return app
