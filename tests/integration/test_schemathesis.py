"""Property-based runs of the OpenAPI document against live servers, keys on and off: no
request gives a 5xx or an answer the document does not describe."""

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
from graph.core import THREAD_ID_PATTERN
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

pytestmark = pytest.mark.slow


KEY = "schemathesis-key"


def _settings(tmp: Path | None = None, *, keys: bool) -> Settings:
    extra: dict[str, Any] = {"data_dir": tmp} if tmp is not None else {}
    return Settings(
        checkpointer_url="memory", embedder="hash", api_keys=[KEY] if keys else [], **extra
    )


def _serve(tmp: Path, keys: bool, ready: threading.Event, holder: dict[str, Any]) -> None:
    # The service and the server share one event loop, owned by this thread.
    async def main() -> None:
        config = _settings(tmp, keys=keys)
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


def _server(factory: pytest.TempPathFactory, *, keys: bool) -> Iterator[str]:
    ready, holder = threading.Event(), {}
    thread = threading.Thread(
        target=_serve, args=(factory.mktemp("schemathesis"), keys, ready, holder), daemon=True
    )
    thread.start()
    assert ready.wait(120) and "port" in holder, "the server did not start"
    yield f"http://127.0.0.1:{holder['port']}"
    holder["server"].should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def open_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server(tmp_path_factory, keys=False)


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server(tmp_path_factory, keys=True)


# The document depends only on the settings: an app that never opened a service describes
# the same API as the server it is run against.
open_schema = schemathesis.openapi.from_dict(create_app(settings=_settings(keys=False)).openapi())
keyed_schema = schemathesis.openapi.from_dict(create_app(settings=_settings(keys=True)).openapi())

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = settings(
    max_examples=15, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)


@open_schema.parametrize()
@EXAMPLES
def test_keys_off_no_finding(case: Any, open_url: str) -> None:
    case.call_and_validate(base_url=open_url, checks=CHECKS)


@keyed_schema.parametrize()
@EXAMPLES
def test_keys_on_no_finding(case: Any, keyed_url: str) -> None:
    case.call_and_validate(
        base_url=keyed_url, headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS
    )


def test_the_document_declares_keys_only_when_they_are_on() -> None:
    open_doc = create_app(settings=_settings(keys=False)).openapi()
    keyed_doc = create_app(settings=_settings(keys=True)).openapi()
    assert "securitySchemes" not in open_doc.get("components", {})
    assert "securitySchemes" in keyed_doc["components"]
    get_thread = "/threads/{thread_id}"
    assert "security" not in open_doc["paths"][get_thread]["get"]
    assert keyed_doc["paths"][get_thread]["get"]["security"]
    thread_param = next(
        p for p in open_doc["paths"][get_thread]["get"]["parameters"] if p["name"] == "thread_id"
    )
    header_param = next(
        p
        for p in open_doc["paths"]["/v1/chat/completions"]["post"]["parameters"]
        if p["name"] == "X-Thread-Id"
    )
    header = next(s for s in header_param["schema"]["anyOf"] if s.get("type") == "string")
    # One rule for a thread id, stated where it is enforced.
    assert thread_param["schema"]["pattern"] == header["pattern"] == THREAD_ID_PATTERN
    assert thread_param["schema"]["maxLength"] == header["maxLength"] == 128
    content = open_doc["components"]["schemas"]["MessageCreate"]["properties"]["content"]
    assert content["maxLength"] == _settings(keys=False).max_message_chars
