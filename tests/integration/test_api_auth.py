"""API keys: each key is a tenant whose threads no other key can see; probes stay public."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.auth import KeyRing, owner_for_key
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        checkpointer_url="memory",
        data_dir=tmp_path,
        embedder="hash",
        api_keys=["alice-key", "bob-key"],
    )
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_owner_ids_are_stable_and_hide_the_key() -> None:
    assert owner_for_key("alice-key") == owner_for_key("alice-key")
    assert owner_for_key("alice-key") != owner_for_key("bob-key")
    assert "alice" not in owner_for_key("alice-key")
    ring = KeyRing(["alice-key", " ", "bob-key"])
    assert ring.enabled
    assert ring.owner("alice-key") == owner_for_key("alice-key")
    assert ring.owner("mallory") is None
    assert KeyRing([]).owner(None) == "anonymous"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer nope"}, "invalid_api_key"),
        ({"Authorization": "Basic YWxpY2U6a2V5"}, "missing_api_key"),
        ({"Authorization": "Bearer"}, "missing_api_key"),
    ],
)
async def test_missing_or_wrong_key_is_401(
    client: httpx.AsyncClient, headers: dict[str, str], code: str
) -> None:
    for method, path in [("GET", "/threads"), ("POST", "/threads"), ("GET", "/threads/x")]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] == code
        assert response.headers["www-authenticate"] == "Bearer"


async def test_threads_belong_to_their_key(client: httpx.AsyncClient) -> None:
    created = await client.post("/threads", json={"title": "alice's"}, headers=ALICE)
    assert created.status_code == 201
    thread_id = created.json()["thread_id"]
    ok = await client.post(f"/threads/{thread_id}/messages", json={"content": "hi"}, headers=ALICE)
    assert ok.status_code == 200

    for method, path, body in [
        ("GET", f"/threads/{thread_id}", None),
        ("GET", f"/threads/{thread_id}/history", None),
        ("POST", f"/threads/{thread_id}/messages", {"content": "let me in"}),
        ("POST", f"/threads/{thread_id}/messages", {"content": "let me in", "stream": True}),
        ("PATCH", f"/threads/{thread_id}/slots", {"slots": {"name": "Bob"}}),
        ("POST", f"/threads/{thread_id}/reset", None),
        ("DELETE", f"/threads/{thread_id}", None),
    ]:
        response = await client.request(method, path, json=body, headers=BOB)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "thread_not_found"

    assert (await client.get("/threads", headers=BOB)).json()["total"] == 0
    mine = (await client.get("/threads", headers=ALICE)).json()
    assert [t["thread_id"] for t in mine["data"]] == [thread_id]
    # Bob's attempts changed nothing.
    detail = (await client.get(f"/threads/{thread_id}", headers=ALICE)).json()
    assert detail["thread"]["turns"] == 1
    assert detail["slots"].get("name") is None


async def test_idempotency_keys_are_per_tenant(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "same-key"}
    alice = await client.post("/threads", json={}, headers=ALICE | key)
    bob = await client.post("/threads", json={}, headers=BOB | key)
    assert alice.status_code == bob.status_code == 201
    assert alice.json()["thread_id"] != bob.json()["thread_id"]
    assert "idempotent-replayed" not in bob.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/", "/app.js"])
async def test_probes_stay_public(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
