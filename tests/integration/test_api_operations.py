"""Operations: liveness, readiness, Prometheus metrics, request ids in headers and logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.logging import RequestContextFilter
from graph.compose import open_service
from graph.settings import Settings
from nodes.memory import MemoryHit, MemoryRecord
from tests.fakes import ScriptedChatModel


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        yield create_app(service, settings=settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in a Prometheus text page."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] and all(body["checks"].values())


class UnreachableMemory:
    """A vector store whose server is down."""

    def add(self, records: Sequence[MemoryRecord]) -> None:
        raise ConnectionError("chroma server unreachable")

    def search(self, query: str, **kwargs: object) -> list[MemoryHit]:
        raise ConnectionError("chroma server unreachable")

    def delete_thread(self, thread_id: str) -> int:
        raise ConnectionError("chroma server unreachable")

    def clear_thread(self, thread_id: str) -> int:
        raise ConnectionError("chroma server unreachable")

    def count(self, *, thread_id: str | None = None) -> int:
        raise ConnectionError("chroma server unreachable")


async def test_readyz_is_503_when_a_store_is_down(settings: Settings) -> None:
    async with open_service(
        settings, chat_model=ScriptedChatModel(), memory=UnreachableMemory()
    ) as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not_ready"
            assert False in ready.json()["checks"].values()
            assert (await c.get("/healthz")).status_code == 200


async def test_readyz_is_503_before_the_service_opens(settings: Settings) -> None:
    # No service given and the lifespan not run yet: the app answers, but is not ready.
    app = create_app(settings=settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503
        starting = await c.get("/threads")
        assert starting.status_code == 503
        assert starting.json()["error"]["code"] == "service_unavailable"


async def test_metrics_after_turns(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads")).json()["thread_id"]
    url = f"/threads/{thread_id}/messages"
    json_reply = (await client.post(url, json={"content": "hello there"})).json()
    await client.post(url, json={"content": "and again", "stream": True})
    await client.get("/threads/unknown")
    page = await client.get("/metrics")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    text = page.text

    requests = samples(text, "steadychat_http_requests_total")
    by_route = {(s["route"], s["method"], s["status"]): v for s, v in requests}
    assert by_route[("/threads/{thread_id}/messages", "POST", "200")] == 2
    assert by_route[("/threads", "POST", "201")] == 1
    assert by_route[("/threads/{thread_id}", "GET", "404")] == 1
    assert not any(thread_id in s["route"] for s, _ in requests)

    turns = dict((s["mode"], v) for s, v in samples(text, "steadychat_turn_duration_seconds_count"))
    assert turns == {"json": 1, "stream": 1}
    assert samples(text, "steadychat_time_to_first_token_seconds_count")[0][1] == 1
    completion = samples(text, "steadychat_completion_tokens_total")[0][1]
    assert completion >= json_reply["usage"]["completion_tokens"] > 0
    assert samples(text, "steadychat_prompt_tokens_total")[0][1] > 0
    assert samples(text, "steadychat_queue_depth")[0][1] == 0
    assert samples(text, "steadychat_turns_in_flight")[0][1] == 0


async def test_apps_keep_separate_registries(settings: Settings, client: httpx.AsyncClient) -> None:
    await client.post("/threads")
    other = create_app(settings=settings)  # must not clash with the first app's metrics
    transport = httpx.ASGITransport(app=other)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        fresh = (await c.get("/metrics")).text
    assert not [
        v
        for s, v in samples(fresh, "steadychat_http_requests_total")
        if v and s["route"] == "/threads"
    ]


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz")
    other = await client.get("/healthz")
    assert len(made.headers["x-request-id"]) >= 16
    assert made.headers["x-request-id"] != other.headers["x-request-id"]
    # Ids that could forge log lines or headers are replaced.
    forged = await client.get("/healthz", headers={"X-Request-Id": "a b\tc" + "x" * 200})
    assert forged.headers["x-request-id"] not in ("", "a b\tc" + "x" * 200)


async def test_logs_carry_request_and_thread_ids(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    thread_id = (await client.post("/threads")).json()["thread_id"]
    with caplog.at_level(logging.INFO, logger="steadychat"):
        response = await client.delete(f"/threads/{thread_id}", headers={"X-Request-Id": "del-1"})
    assert response.status_code == 204
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "del-1"]
    assert records, "no log record carried the request id"
    assert any(getattr(r, "thread_id", None) == thread_id for r in records)


async def test_web_page_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    for asset in ("/app.js", "/style.css", "/static/app.js"):
        assert (await client.get(asset)).status_code == 200, asset
    missing = await client.get("/static/nope.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert (await client.put("/app.js")).status_code == 405


async def test_thread_calls_on_the_openai_route_log_their_thread(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.INFO, logger="steadychat"):
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "steadychat", "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Request-Id": "v1-1", "X-Thread-Id": "logged-thread"},
        )
    assert response.status_code == 200, response.text
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "v1-1"]
    assert records and all(getattr(r, "thread_id", None) == "logged-thread" for r in records)
