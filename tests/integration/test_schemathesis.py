"""Property-based run of the OpenAPI document against a live server: no request gives a 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

pytestmark = pytest.mark.slow


def _serve(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    # The service and the server share one event loop, owned by this thread.
    async def main() -> None:
        config = Settings(checkpointer_url="memory", data_dir=tmp, embedder="hash")
        async with open_service(config, chat_model=ScriptedChatModel(), embedder="hash") as svc:
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(svc, settings=config),
                    host="127.0.0.1",
                    port=0,
                    lifespan="off",
                    log_level="warning",
                )
            )
            holder["server"] = server
            task = asyncio.create_task(server.serve())
            while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
                await asyncio.sleep(0.01)
            if server.started:
                holder["port"] = server.servers[0].sockets[0].getsockname()[1]
            ready.set()
            await task

    try:
        asyncio.run(main())
    finally:
        ready.set()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ready, holder = threading.Event(), {}
    thread = threading.Thread(
        target=_serve, args=(tmp_path_factory.mktemp("schemathesis"), ready, holder), daemon=True
    )
    thread.start()
    assert ready.wait(120) and "port" in holder, "the server did not start"
    yield f"http://127.0.0.1:{holder['port']}"
    holder["server"].should_exit = True
    thread.join(30)


# The document is static: an app that never opened a service describes the same API.
schema = schemathesis.openapi.from_dict(
    create_app(settings=Settings(checkpointer_url="memory", embedder="hash")).openapi()
)


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, server_url: str) -> None:
    case.call_and_validate(
        base_url=server_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
