"""Operations: liveness (/healthz), readiness (/readyz) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import MetricsDep
from api.metrics import CONTENT_TYPE_LATEST
from api.schemas import EnginePublic, HealthPublic, ReadinessPublic
from graph.service import ChatService

logger = logging.getLogger("steadychat.api.health")

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthPublic)
async def healthz() -> HealthPublic:
    """Liveness: 200 while the process serves requests."""
    return HealthPublic(status="ok")


async def _checks(
    service: ChatService | None,
) -> tuple[dict[str, bool], dict[str, str], EnginePublic | None]:
    if service is None:
        return {"service": False}, {"service": "not started"}, None
    status = await service.engine_status()
    checks = await service.ready(status)
    detail = {name: "failed" for name, ok in checks.items() if not ok}
    engine = None
    if status is not None:
        engine = EnginePublic(
            model=status.model, reachable=status.reachable, serves_model=status.serves_model
        )
        if not status.reachable:
            detail["engine"] = "unreachable"
        elif not status.serves_model:
            detail["engine"] = f"does not serve {status.model!r}"
    return checks, detail, engine


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    responses={503: {"model": ReadinessPublic, "description": "Not ready"}},
)
async def readyz(request: Request) -> Any:
    """Readiness: 200 when the model is loaded (or its engine serves it) and the stores answer."""
    service: ChatService | None = request.app.state.service
    engine: EnginePublic | None = None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            checks, detail, engine = await _checks(service)
    except Exception as exc:
        logger.warning("readiness check failed: %s", exc)
        checks, detail = (
            {"service": service is not None, "stores": False},
            {"stores": type(exc).__name__},
        )
    ready = bool(checks) and all(checks.values())
    body = ReadinessPublic(
        status="ready" if ready else "not_ready", checks=checks, detail=detail, engine=engine
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics in text exposition format."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
