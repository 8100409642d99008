"""Run the HTTP service with uvicorn (what ``steadychat serve`` calls)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import uvicorn

from api.allocator import set_mmap_threshold
from api.app import create_app
from api.logging import configure_logging

if TYPE_CHECKING:
    from graph.settings import Settings


def build_server(settings: Settings) -> uvicorn.Server:
    """Build (without starting) a uvicorn server for the app on ``settings.host:port``.

    Args:
        settings: The service settings.

    Returns:
        A ``uvicorn.Server``; ``run()`` blocks, ``should_exit = True`` stops it.
    """
    configure_logging(settings.log_level)
    app = create_app(settings=settings)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # One process: the model and the per-thread locks live in it (scale out with
            # PostgreSQL + a Chroma server + several processes instead).
            workers=1,
            timeout_graceful_shutdown=10,
            # The request-id middleware logs each request with its ids; uvicorn's line would
            # only repeat it without them.
            access_log=False,
        )
    )


def serve(settings: Settings) -> None:
    """Serve the API until interrupted (Ctrl-C or SIGTERM), then close the service.

    Args:
        settings: The service settings (host and port default to 127.0.0.1:8000).
    """
    if settings.malloc_mmap_threshold_kib:
        # Before the model loads: the whole process, its worker threads included, allocates
        # under one threshold (see api/allocator.py).
        set_mmap_threshold(settings.malloc_mmap_threshold_kib * 1024)
    server = build_server(settings)
    # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal; by then the service
    # is closed, so the KeyboardInterrupt only needs to end the process quietly.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
