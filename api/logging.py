"""Request and thread ids in every log record: a request-id middleware and a logging filter."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

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


# C0 and C1 controls and the Unicode line and paragraph separators: anything that could end a
# log line or rewrite the terminal showing it.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    r"""Write control characters as escapes (``\n``, ``\x1b``...), so a value stays on its line.

    Args:
        text: Any text that goes into a log line (a path, an id, a message).

    Returns:
        The text with every control character escaped; other text (any language) unchanged.
    """
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class SafeFormatter(logging.Formatter):
    """A formatter that escapes control characters in every field of the line.

    Client-supplied values (paths, ids, texts in messages) cannot start a forged line: the
    message, its arguments and every attribute are escaped; a traceback keeps its own lines,
    each continuation indented so none of them can pass for a new record.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without its traceback, every string field escaped."""
        safe = {
            key: escape_control(value) if isinstance(value, str) else value
            for key, value in record.__dict__.items()
        }
        return super().formatMessage(logging.makeLogRecord(safe))

    def formatException(self, ei: Any) -> str:
        """The traceback, its lines indented under the record and their controls escaped."""
        lines = super().formatException(ei).split("\n")
        return "\n".join("    " + escape_control(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:
        """The stack, like a traceback."""
        return "\n".join("    " + escape_control(line) for line in stack_info.split("\n"))


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
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
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
