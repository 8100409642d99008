"""Bad input gets a 4xx in OpenAI's error shape, saves nothing, and the service keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

MAX_CHARS = 200


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        checkpointer_url="memory", data_dir=tmp_path, embedder="hash", max_message_chars=MAX_CHARS
    )
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        yield create_app(service, settings=settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return dict(error)


async def thread_with_one_turn(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    thread_id = (await client.post("/threads")).json()["thread_id"]
    ok = await client.post(f"/threads/{thread_id}/messages", json={"content": "hello"})
    assert ok.status_code == 200
    return thread_id, (await client.get(f"/threads/{thread_id}")).json()


JSON = {"content-type": "application/json"}

BAD_MESSAGES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("invalid json", {"content": b'{"content": "hi"', "headers": JSON}, 400, None),
    ("array body", {"json": ["hi"]}, 400, None),
    ("string body", {"json": "hi"}, 400, None),
    ("empty body", {"content": b"", "headers": JSON}, 400, None),
    ("missing content", {"json": {"stream": False}}, 400, "content"),
    ("null content", {"json": {"content": None}}, 400, "content"),
    ("empty content", {"json": {"content": ""}}, 400, "content"),
    ("blank content", {"json": {"content": "   \n "}}, 400, "content"),
    ("number content", {"json": {"content": 42}}, 400, "content"),
    ("list content", {"json": {"content": ["hi"]}}, 400, "content"),
    ("max_tokens zero", {"json": {"content": "hi", "max_tokens": 0}}, 400, "max_tokens"),
    ("max_tokens negative", {"json": {"content": "hi", "max_tokens": -5}}, 400, "max_tokens"),
    ("max_tokens text", {"json": {"content": "hi", "max_tokens": "many"}}, 400, "max_tokens"),
    ("max_tokens huge", {"json": {"content": "hi", "max_tokens": 10**9}}, 400, "max_tokens"),
    ("temperature high", {"json": {"content": "hi", "temperature": 3.5}}, 400, "temperature"),
    ("temperature negative", {"json": {"content": "hi", "temperature": -0.1}}, 400, "temperature"),
    ("top_p zero", {"json": {"content": "hi", "top_p": 0}}, 400, "top_p"),
    ("top_p above one", {"json": {"content": "hi", "top_p": 1.5}}, 400, "top_p"),
    ("unknown profile", {"json": {"content": "hi", "profile": "pirate"}}, 400, "profile"),
    ("unknown field", {"json": {"content": "hi", "temprature": 0.1}}, 400, "temprature"),
    ("stream not bool", {"json": {"content": "hi", "stream": "maybe"}}, 400, "stream"),
    ("too many stops", {"json": {"content": "hi", "stop": list("abcde")}}, 400, "stop"),
    ("too long", {"json": {"content": "x" * (MAX_CHARS + 1)}}, 413, "content"),
    ("too long stream", {"json": {"content": "x" * (MAX_CHARS + 1), "stream": True}}, 413, None),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "param"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES]
)
async def test_bad_message_is_refused_and_saves_nothing(
    client: httpx.AsyncClient,
    case: str,
    request_kwargs: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    thread_id, before = await thread_with_one_turn(client)
    response = await client.post(f"/threads/{thread_id}/messages", **request_kwargs)
    error = assert_error_shape(response, status)
    if param is not None:
        assert error["param"] == param
    after = (await client.get(f"/threads/{thread_id}")).json()
    assert after["thread"]["turns"] == before["thread"]["turns"] == 1
    assert after["window"] == before["window"]
    # The service keeps serving: the next valid request on the same thread succeeds.
    ok = await client.post(f"/threads/{thread_id}/messages", json={"content": "still there?"})
    assert ok.status_code == 200
    assert ok.json()["turn"] == 2


async def test_too_long_message_says_the_limit(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads")).json()["thread_id"]
    response = await client.post(
        f"/threads/{thread_id}/messages", json={"content": "x" * (MAX_CHARS + 50)}
    )
    error = assert_error_shape(response, 413)
    assert error["code"] == "message_too_long"
    assert str(MAX_CHARS) in error["message"]


async def test_invalid_json_is_named_as_such(client: httpx.AsyncClient) -> None:
    response = await client.post("/threads", content=b"{not json", headers=JSON)
    error = assert_error_shape(response, 400)
    assert error["code"] == "invalid_json"
    assert (await client.get("/threads")).json()["total"] == 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/threads/nope", {}, 404),
        ("POST", "/threads/nope/messages", {"json": {"content": "hi"}}, 404),
        ("PATCH", "/threads/nope/slots", {"json": {"slots": {"name": "Ada"}}}, 404),
        ("GET", "/no/such/route", {}, 404),
        ("POST", "/no/such/route", {"json": {}}, 404),
        ("PUT", "/threads", {"json": {}}, 405),
        ("DELETE", "/healthz", {}, 405),
        ("GET", "/threads", {"params": {"limit": 0}}, 400),
        ("GET", "/threads", {"params": {"limit": "ten"}}, 400),
        ("GET", "/threads", {"params": {"offset": -1}}, 400),
        ("GET", "/threads/x/history", {"params": {"limit": 0}}, 400),
        ("POST", "/threads", {"json": {"title": 5}}, 400),
        ("POST", "/threads", {"json": {"title": "t" * 500}}, 400),
        ("POST", "/threads", {"json": []}, 400),
    ],
)
async def test_bad_requests_answer_in_the_error_shape(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = await client.request(method, path, **kwargs)
    assert_error_shape(response, status)
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"slots": {}},
        {"slots": {"": "Ada"}},
        {"slots": {"name": ""}},
        {"slots": {"name": 5}},
        {"slots": "name=Ada"},
        {},
    ],
)
async def test_bad_slot_patches_change_nothing(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    thread_id = (await client.post("/threads")).json()["thread_id"]
    await client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": "Ada"}})
    response = await client.patch(f"/threads/{thread_id}/slots", json=body)
    assert_error_shape(response, 400)
    slots = (await client.get(f"/threads/{thread_id}")).json()["slots"]
    assert slots["name"]["value"] == "Ada"
    assert slots["name"]["history"] == []


async def test_unexpected_error_is_a_500_that_leaks_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def explode() -> dict[str, str]:
        raise RuntimeError("secret connection string postgresql://user:pw@db")

    app.add_api_route("/explode", explode, methods=["GET"])
    response = await client.get("/explode", headers={"x-request-id": "req-500"})
    error = assert_error_shape(response, 500)
    assert error["type"] == "server_error"
    assert "secret" not in response.text and "postgresql" not in response.text
    assert response.headers["x-request-id"] == "req-500"
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.post("/threads")).status_code == 201


async def test_validation_errors_are_400_in_openapi_too(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    messages = document["paths"]["/threads/{thread_id}/messages"]["post"]["responses"]
    assert "400" in messages
    assert messages["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )


async def test_model_failure_is_a_500_and_saves_nothing(tmp_path: Path) -> None:
    def broken(messages: object) -> str:
        raise RuntimeError("weights missing at /srv/secret/model")

    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    model = ScriptedChatModel(responder=broken)
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            thread_id = (await client.post("/threads")).json()["thread_id"]
            url = f"/threads/{thread_id}/messages"
            response = await client.post(url, json={"content": "hello"})
            error = assert_error_shape(response, 500)
            assert error["type"] == "server_error"
            streamed = await client.post(url, json={"content": "hello", "stream": True})
            assert streamed.status_code in (200, 500)
            assert "server_error" in streamed.text
            for text in (response.text, streamed.text):
                assert "secret" not in text and "weights" not in text
            detail = (await client.get(f"/threads/{thread_id}")).json()
            assert detail["thread"]["turns"] == 0
            assert detail["window"] == []
            model.responder = None
            ok = await client.post(url, json={"content": "hello"})
            assert ok.status_code == 200
            assert ok.json()["turn"] == 1


async def test_oversized_body_is_refused_before_reading(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads")).json()["thread_id"]
    huge = b'{"content": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = await client.post(f"/threads/{thread_id}/messages", content=huge, headers=JSON)
    error = assert_error_shape(response, 413)
    assert error["code"] == "request_too_large"
    assert (await client.get(f"/threads/{thread_id}")).json()["thread"]["turns"] == 0


async def test_oversized_chunked_body_is_refused_too(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads")).json()["thread_id"]

    async def chunks():  # no Content-Length: the body is sent chunked
        yield b'{"content": "'
        for _ in range(6):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = await client.post(f"/threads/{thread_id}/messages", content=chunks(), headers=JSON)
    error = assert_error_shape(response, 413)
    assert error["code"] == "request_too_large"
    assert (await client.get(f"/threads/{thread_id}")).json()["thread"]["turns"] == 0
    ok = await client.post(f"/threads/{thread_id}/messages", json={"content": "hello"})
    assert ok.status_code == 200
