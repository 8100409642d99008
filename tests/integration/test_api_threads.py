"""REST per thread over the real service with the scripted model: the flows a client uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel
from tests.sse import sse_events


@pytest.fixture
def model() -> ScriptedChatModel:
    return ScriptedChatModel()


@pytest.fixture
async def client(tmp_path: Path, model: ScriptedChatModel) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def parse_sse(body: str) -> list[tuple[str, Any]]:
    """Split an SSE body into (event, decoded JSON data) pairs, in order."""
    return [(name, json.loads(data)) for name, data in sse_events(body)]


async def new_thread(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/threads", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["thread_id"])


async def test_create_returns_the_thread(client: httpx.AsyncClient) -> None:
    response = await client.post("/threads", json={"title": "Support", "metadata": {"tier": 2}})
    assert response.status_code == 201
    thread = response.json()
    assert thread["title"] == "Support"
    assert thread["metadata"] == {"tier": 2}
    assert thread["turns"] == 0
    assert thread["thread_id"]
    # An empty body is a thread without title.
    bare = await client.post("/threads")
    assert bare.status_code == 201
    assert bare.json()["title"] is None
    assert bare.json()["thread_id"] != thread["thread_id"]


async def test_list_paginates(client: httpx.AsyncClient) -> None:
    ids = {await new_thread(client, title=f"t{i}") for i in range(3)}
    first = (await client.get("/threads", params={"limit": 2, "offset": 0})).json()
    second = (await client.get("/threads", params={"limit": 2, "offset": 2})).json()
    assert (first["total"], first["limit"], first["offset"]) == (3, 2, 0)
    assert len(first["data"]) == 2
    assert len(second["data"]) == 1
    seen = {t["thread_id"] for t in first["data"] + second["data"]}
    assert seen == ids


async def test_message_answers_with_the_reply(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client)
    model.enqueue("Hello Ada, how can I help?", "Your order ships tomorrow.")
    first = await client.post(f"/threads/{thread_id}/messages", json={"content": "I am Ada."})
    assert first.status_code == 200, first.text
    reply = first.json()
    assert reply["thread_id"] == thread_id
    assert reply["turn"] == 1
    assert reply["reply"] == "Hello Ada, how can I help?"
    assert reply["finish_reason"] == "stop"
    usage = reply["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    second = await client.post(
        f"/threads/{thread_id}/messages", json={"content": "When does my order ship?"}
    )
    assert second.json()["turn"] == 2
    assert second.json()["reply"] == "Your order ships tomorrow."
    listed = (await client.get("/threads")).json()["data"]
    assert [t["turns"] for t in listed if t["thread_id"] == thread_id] == [2]


async def test_generation_knobs_reach_the_model(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client)
    response = await client.post(
        f"/threads/{thread_id}/messages",
        json={"content": "Hi", "temperature": 0, "top_p": 0.5, "seed": 7, "stop": "END"},
    )
    assert response.status_code == 200, response.text
    kwargs = model.history[-1]["kwargs"]
    assert kwargs.get("temperature") == 0
    assert kwargs.get("top_p") == 0.5
    assert kwargs.get("seed") == 7
    assert "END" in (kwargs.get("stop") or [])


async def test_message_streams_server_sent_events(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client)
    model.enqueue("one two three four")
    response = await client.post(
        f"/threads/{thread_id}/messages", json={"content": "count", "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names.count("done") == 1
    assert names[-1] == "done"
    assert set(names[:-1]) == {"token"}
    assert len(names) - 1 >= 4  # one event per word at least
    done = events[-1][1]
    assert "".join(data["text"] for name, data in events[:-1]) == done["reply"]
    assert done["reply"] == "one two three four"
    assert done["turn"] == 1
    window = (await client.get(f"/threads/{thread_id}")).json()["window"]
    assert [(m["role"], m["content"]) for m in window] == [
        ("user", "count"),
        ("assistant", "one two three four"),
    ]


async def test_detail_shows_slots_window_and_account(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client, title="Ada")
    model.enqueue("Noted.")
    await client.post(
        f"/threads/{thread_id}/messages",
        json={"content": "My email is ada@example.com, please write to me there."},
    )
    detail = (await client.get(f"/threads/{thread_id}")).json()
    assert detail["thread"]["thread_id"] == thread_id
    assert detail["thread"]["turns"] == 1
    assert detail["slots"]["email"]["value"] == "ada@example.com"
    assert detail["slots"]["email"]["turn"] == 1
    assert [m["turn"] for m in detail["window"]] == [1, 1]
    assert detail["window"][1]["content"] == "Noted."
    account = detail["context_account"]
    assert account["turn"] == 1
    assert account["total"] > 0


async def test_history_lists_checkpoints_newest_first(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client)
    for text in ("first", "second"):
        await client.post(f"/threads/{thread_id}/messages", json={"content": text})
    data = (await client.get(f"/threads/{thread_id}/history")).json()["data"]
    assert data
    assert data[0]["turn"] == 2
    assert max(c["turn"] for c in data) == 2
    assert len({c["checkpoint_id"] for c in data}) == len(data)
    limited = (await client.get(f"/threads/{thread_id}/history", params={"limit": 1})).json()
    assert len(limited["data"]) == 1


async def test_patch_slots_corrects_and_keeps_history(client: httpx.AsyncClient) -> None:
    thread_id = await new_thread(client)
    await client.post(f"/threads/{thread_id}/messages", json={"content": "hello"})
    first = await client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": "Ada"}})
    assert first.status_code == 200, first.text
    second = await client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": "Grace"}})
    slot = second.json()["slots"]["name"]
    assert slot["value"] == "Grace"
    assert slot["source"] == "user"
    assert [h["value"] for h in slot["history"]] == ["Ada"]
    detail = (await client.get(f"/threads/{thread_id}")).json()
    assert detail["slots"]["name"]["value"] == "Grace"
    cleared = await client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": None}})
    assert cleared.status_code == 200
    remaining = cleared.json()["slots"].get("name")
    assert remaining is None or remaining["value"] is None


async def test_reset_clears_state_and_keeps_the_thread(
    client: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    thread_id = await new_thread(client, title="Keep me")
    await client.post(f"/threads/{thread_id}/messages", json={"content": "My name is Ada."})
    await client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": "Ada"}})
    reset = await client.post(f"/threads/{thread_id}/reset")
    assert reset.status_code == 200
    assert reset.json()["thread_id"] == thread_id
    assert reset.json()["title"] == "Keep me"
    assert reset.json()["turns"] == 0
    detail = (await client.get(f"/threads/{thread_id}")).json()
    assert detail["window"] == []
    assert detail["slots"] == {}
    again = await client.post(f"/threads/{thread_id}/messages", json={"content": "hi"})
    assert again.json()["turn"] == 1


async def test_deleted_thread_is_gone_everywhere(client: httpx.AsyncClient) -> None:
    thread_id = await new_thread(client)
    await client.post(f"/threads/{thread_id}/messages", json={"content": "hello"})
    deleted = await client.delete(f"/threads/{thread_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    calls = [
        client.get(f"/threads/{thread_id}"),
        client.get(f"/threads/{thread_id}/history"),
        client.post(f"/threads/{thread_id}/messages", json={"content": "late write"}),
        client.post(f"/threads/{thread_id}/messages", json={"content": "late", "stream": True}),
        client.patch(f"/threads/{thread_id}/slots", json={"slots": {"name": "Ada"}}),
        client.post(f"/threads/{thread_id}/reset"),
        client.delete(f"/threads/{thread_id}"),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "thread_not_found"
        assert error["type"] == "invalid_request_error"
    assert (await client.get("/threads")).json()["total"] == 0


async def test_openapi_declares_every_response(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    expected = {
        ("/threads", "post"): "201",
        ("/threads", "get"): "200",
        ("/threads/{thread_id}", "get"): "200",
        ("/threads/{thread_id}", "delete"): "204",
        ("/threads/{thread_id}/reset", "post"): "200",
        ("/threads/{thread_id}/messages", "post"): "200",
        ("/threads/{thread_id}/history", "get"): "200",
        ("/threads/{thread_id}/slots", "patch"): "200",
        ("/healthz", "get"): "200",
        ("/readyz", "get"): "200",
    }
    for (path, method), status in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert status in responses, (path, method)
        if status != "204":
            content = responses[status]["content"]["application/json"]["schema"]
            assert "$ref" in content, (path, method)
        # Errors are documented in the shared error shape.
        if path.startswith("/threads"):
            assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "ErrorResponse"
            )
