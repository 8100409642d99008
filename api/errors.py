"""Errors in OpenAI's shape: the ApiError exception and the handlers every route shares."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graph.core import THREAD_ID_RULE
from graph.errors import (
    ContextLengthError,
    EngineUnavailableError,
    ServiceError,
    ThreadBusyError,
    ThreadNotFoundError,
    TurnCancelledError,
    TurnFailedError,
)

logger = logging.getLogger("steadychat.api")

# Clients such as the openai package retry 409 and 5xx on their own; a busy thread or a
# rejected key would only be hit again, so these answers tell them not to.
NO_RETRY = {"x-should-retry": "false"}

CLIENT_CLOSED_REQUEST = 499
"""Status logged for a call whose client left before the reply (nginx's convention)."""


class ErrorDetail(BaseModel):
    """The inner object of an error response."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API returns: ``{"error": {message, type, param, code}}``."""

    error: ErrorDetail


class ApiError(Exception):
    """An error a route raises on purpose; rendered in OpenAI's error shape.

    Args:
        status: HTTP status code.
        message: Human-readable explanation for the client.
        type: OpenAI error type ("invalid_request_error", "authentication_error", ...).
        param: The request field at fault, when there is one.
        code: A stable machine-readable code.
        headers: Extra response headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """This error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Build ``{"error": {...}}`` in OpenAI's shape.

    Args:
        message: Human-readable explanation.
        type: OpenAI error type.
        param: The request field at fault.
        code: Stable machine-readable code.

    Returns:
        The error body as a plain dict.
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ClientDisconnected(Exception):
    """The client left before its answer was ready: nothing is sent, the log says 499."""


def service_error_to_api(exc: ServiceError) -> ApiError:
    """Map an error raised by ``ChatService`` to the HTTP error a client sees.

    Args:
        exc: The service error.

    Returns:
        The equivalent ApiError (404, 409, 400; 503 when the inference engine is down).
    """
    if isinstance(exc, EngineUnavailableError):
        # The engine is down or broke off: nothing was saved, and the same request can be sent
        # again later. Where it runs is not the client's business.
        return ApiError(
            503,
            "The inference engine is unavailable; nothing was saved. Retry later.",
            type="server_error",
            code="engine_unavailable",
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    if isinstance(exc, TurnFailedError):
        # An internal failure during a turn (the model crashed, a store broke): its text is
        # never shown, since it may carry paths or connection strings.
        return ApiError(
            500,
            "The server had an error while generating the reply.",
            type="server_error",
            code="turn_failed",
        )
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ThreadNotFoundError):
        return ApiError(404, message, code="thread_not_found")
    if isinstance(exc, ThreadBusyError):
        return ApiError(409, message, code="thread_busy", headers=NO_RETRY)
    if isinstance(exc, ContextLengthError):
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(exc, TurnCancelledError):
        return ApiError(409, message, code="turn_cancelled", headers=NO_RETRY)
    return ApiError(400, message, code="invalid_request")


def stream_error_body(exc: BaseException) -> dict[str, Any]:
    """The error body for a failure after a stream has started, when no status can be sent.

    Args:
        exc: What went wrong; anything but a service or API error is logged and not shown.

    Returns:
        The error body in OpenAI's shape.
    """
    if isinstance(exc, ServiceError):
        exc = service_error_to_api(exc)
    if isinstance(exc, ApiError):
        return exc.body()
    logger.error("streamed turn failed", exc_info=exc)
    return error_body(
        "The server had an error while generating the reply.",
        type="server_error",
        code="internal_error",
    )


_STATUS_CODES = {
    401: ("authentication_error", "unauthorized"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limited"),
}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None, "invalid_request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None, "invalid_json"
    # ("body", "content") -> "content"; ("query", "limit") -> "limit";
    # ("header", "X-Thread-Id") -> "X-Thread-Id" (the header a client sent, as OpenAI names it).
    sources = ("body", "query", "path", "header", "cookie")
    loc = [str(part) for part in first.get("loc", ()) if part not in sources]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing" and param:
        msg = f"'{param}' is required"
    elif param in ("thread_id", "X-Thread-Id"):
        msg = f"Invalid '{param}': {THREAD_ID_RULE}"
    elif param:
        msg = f"Invalid '{param}': {msg}"
    elif first.get("loc", ())[:1] == ("body",):
        msg = f"Invalid request body: {msg}"
    extra = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return msg + extra, param, "invalid_value"


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_to_api(exc).response()


async def _client_disconnected_handler(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param, code = _validation_message(exc)
    return ApiError(400, message, param=param, code=code).response()


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind, code = _STATUS_CODES.get(exc.status_code, ("invalid_request_error", None))
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    if exc.status_code >= 500:
        kind, code = "server_error", None
    return ApiError(exc.status_code, message, type=kind, code=code, headers=exc.headers).response()


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that render every error in OpenAI's shape.

    Validation errors become 400 (not FastAPI's 422), unknown routes 404, wrong methods 405.
    Unexpected exceptions are caught by ``CatchAllMiddleware``, installed by ``create_app``.

    Args:
        app: The application to configure.
    """
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(ClientDisconnected, _client_disconnected_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)


class CatchAllMiddleware:
    """Turn any unhandled exception into a 500 in the error shape, logged, with nothing leaked.

    Starlette's own last-resort handler re-raises after answering; this one answers and keeps
    the process serving, and stays inside the request-id middleware so the log line carries
    the request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("Unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                # Headers are gone already; all we can do is end the connection.
                raise
            body = json.dumps(
                error_body(
                    "The server had an error while processing the request.",
                    type="server_error",
                    code="internal_error",
                )
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse a request body larger than ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before reading; a body without one
    (chunked) is counted as it arrives, and the app sees a disconnect once it passes the limit.

    Args:
        app: The wrapped application.
        max_bytes: Largest body accepted.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: int | None) -> ApiError:
        told = f"has {size} bytes" if size is not None else "is larger than that"
        return ApiError(
            413,
            f"The request body {told}; the limit is {self.max_bytes}.",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.max_bytes:
                    await self._error(size).response()(scope, receive, send)
                    return
                break
        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._error(None).response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; the app's own answer is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
