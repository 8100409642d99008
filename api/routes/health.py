"""Operations: liveness (/healthz), readiness (/readyz) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import MetricsDep
from api.metrics import CONTENT_TYPE_LATEST
from api.schemas import HealthPublic, ReadinessPublic

logger = logging.getLogger("steadychat.api.health")

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthPublic)
async def healthz() -> HealthPublic:
    """Liveness: 200 while the process serves requests."""
    return HealthPublic(status="ok")


async def _checks(service: Any) -> tuple[dict[str, bool], dict[str, str]]:
    if service is None:
        return {"service": False}, {"service": "not started"}
    readiness = getattr(service, "ready", None)
    if readiness is not None:
        outcome = readiness()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        checks = {str(k): bool(v) for k, v in dict(outcome).items()}
        return checks, {k: "failed" for k, ok in checks.items() if not ok}
    # Without a readiness probe on the service, a cheap read proves the thread store answers.
    await service.list_threads(owner="__readyz__", limit=1, offset=0)
    return {"service": True, "stores": True}, {}


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    responses={503: {"model": ReadinessPublic, "description": "Not ready"}},
)
async def readyz(request: Request) -> Any:
    """Readiness: 200 when the model is loaded and the stores answer, else 503."""
    service = getattr(request.app.state, "service", None)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            checks, detail = await _checks(service)
    except Exception as exc:
        logger.warning("readiness check failed: %s", exc)
        checks, detail = (
            {"service": service is not None, "stores": False},
            {"stores": type(exc).__name__},
        )
    ready = bool(checks) and all(checks.values())
    body = ReadinessPublic(status="ready" if ready else "not_ready", checks=checks, detail=detail)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics in text exposition format."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
