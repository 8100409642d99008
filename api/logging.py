"""Request and thread ids in every log record: a request-id middleware and a logging filter."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("steadychat_request_id", default=None)
thread_id_var: ContextVar[str | None] = ContextVar("steadychat_thread_id", default=None)

# Client-supplied ids end up in logs and headers: keep them short and printable.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

access_logger = logging.getLogger("steadychat.api.access")

LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s thread_id=%(thread_id)s] "
    "%(message)s"
)


def bind_thread(thread_id: str) -> None:
    """Attach a thread id to every log record of the current request.

    Args:
        thread_id: The thread the request works on.
    """
    thread_id_var.set(thread_id)


class RequestContextFilter(logging.Filter):
    """Add ``request_id`` and ``thread_id`` attributes to each record ("-" when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record with the ids of the request being served."""
        record.request_id = request_id_var.get() or "-"
        record.thread_id = thread_id_var.get() or "-"
        return True


def configure_logging(level: str | int = "INFO") -> None:
    """Send steadychat's logs to stderr with request and thread ids in each line.

    Idempotent: calling it twice does not add a second handler.

    Args:
        level: Log level name or number.
    """
    logger = logging.getLogger("steadychat")
    logger.setLevel(level if isinstance(level, int) else level.upper())
    if any(getattr(h, "_steadychat", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestContextFilter())
    handler._steadychat = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


class RequestIdMiddleware:
    """Accept ``X-Request-Id`` (or make one), echo it back, and expose it to log records."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == REQUEST_ID_HEADER.encode():
                incoming = value.decode("latin-1")
                break
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        request_token = request_id_var.set(request_id)
        thread_token = thread_id_var.set(None)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_logger.info(
                "%s %s -> %s in %.1f ms",
                scope.get("method"),
                scope.get("path"),
                status,
                (time.perf_counter() - started) * 1000,
            )
            thread_id_var.reset(thread_token)
            request_id_var.reset(request_token)
