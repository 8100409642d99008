"""One way a turn is served on both APIs: replays, errors before and after the first token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel
from tests.sse import sse_events

THREAD = "shared-thread"
SECRET = "device lost at /srv/secret"


class BreaksAfterTwoWords(ScriptedChatModel):
    """Streams two words of its reply, then fails the way a crashed generation would."""

    breaking: bool = True

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for index, chunk in enumerate(super()._stream(messages, stop, run_manager, **kwargs)):
            if self.breaking and index == 2:
                raise RuntimeError(SECRET)
            yield chunk


# (what the client sends, how its reply is read)
CALLS: dict[str, dict[str, Any]] = {
    "rest json": {"url": f"/threads/{THREAD}/messages", "json": {"content": "hi"}},
    "rest stream": {
        "url": f"/threads/{THREAD}/messages",
        "json": {"content": "hi", "stream": True},
    },
    "v1 json": {
        "url": "/v1/chat/completions",
        "json": {"messages": [{"role": "user", "content": "hi"}]},
        "headers": {"X-Thread-Id": THREAD},
    },
    "v1 stream": {
        "url": "/v1/chat/completions",
        "json": {"messages": [{"role": "user", "content": "hi"}], "stream": True},
        "headers": {"X-Thread-Id": THREAD},
    },
    "v1 stream json_object": {
        "url": "/v1/chat/completions",
        "json": {
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "response_format": {"type": "json_object"},
        },
        "headers": {"X-Thread-Id": THREAD},
    },
}
STREAMED = [name for name, call in CALLS.items() if call["json"].get("stream")]


@pytest.fixture
def model() -> ScriptedChatModel:
    return BreaksAfterTwoWords(breaking=False)


@pytest.fixture
async def client(tmp_path: Path, model: ScriptedChatModel) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        await service.ensure_thread(THREAD)
        transport = httpx.ASGITransport(app=create_app(service, settings=settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def send(client: httpx.AsyncClient, name: str, key: str | None = None) -> httpx.Response:
    call = CALLS[name]
    headers = dict(call.get("headers", {}))
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(call["url"], json=call["json"], headers=headers)


def events(response: httpx.Response) -> list[tuple[str, str]]:
    return sse_events(response.text)


def reply_of(response: httpx.Response) -> str:
    """The reply text a client reads from any of the answers above."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        body = response.json()
        return str(body["reply"] if "reply" in body else body["choices"][0]["message"]["content"])
    text = []
    for name, data in events(response):
        if name == "token":
            text.append(json.loads(data)["text"])
        elif data != "[DONE]":
            chunk = json.loads(data)
            text += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
    return "".join(text)


async def turns(client: httpx.AsyncClient) -> int:
    return int((await client.get(f"/threads/{THREAD}")).json()["thread"]["turns"])


async def turn_outcomes(client: httpx.AsyncClient) -> dict[str, float]:
    page = (await client.get("/metrics")).text
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "steadychat_turns_total"
    }


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_retry_with_the_same_key_gets_the_first_answer(
    client: httpx.AsyncClient, model: ScriptedChatModel, name: str
) -> None:
    model.enqueue('{"answer": "first"}', '{"answer": "second"}')
    first = await send(client, name, key="same")
    retry = await send(client, name, key="same")
    assert first.status_code == retry.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert reply_of(first) == reply_of(retry) == '{"answer": "first"}'
    assert len(model.history) == 1
    assert await turns(client) == 1


@pytest.mark.parametrize("name", STREAMED)
async def test_a_stream_that_fails_before_its_first_token_is_a_plain_error(
    client: httpx.AsyncClient, model: ScriptedChatModel, name: str
) -> None:
    def broken(messages: object) -> str:
        raise RuntimeError(SECRET)

    model.responder = broken
    failed = await send(client, name, key="k")
    assert failed.status_code == 500
    assert failed.headers["content-type"].startswith("application/json")
    assert failed.json()["error"]["type"] == "server_error"
    assert "secret" not in failed.text
    # Nothing was remembered for the key: once the model works the retry runs.
    model.responder = None
    model.enqueue('{"ok": true}')
    retry = await send(client, name, key="k")
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers
    assert await turns(client) == 1
    assert (await turn_outcomes(client))["error"] == 1


@pytest.mark.parametrize("name", ["rest stream", "v1 stream"])
async def test_a_stream_that_fails_midway_ends_with_an_error_event(
    client: httpx.AsyncClient, model: BreaksAfterTwoWords, name: str
) -> None:
    model.breaking = True
    model.enqueue("one two three four", "one two three four")
    failed = await send(client, name, key="k")
    assert failed.status_code == 200
    sent = events(failed)
    assert reply_of(failed) == "one two"  # the space waits for visible text
    error = sent[-1] if name.startswith("rest") else sent[-2]
    assert error[0] == ("error" if name.startswith("rest") else "message")
    assert json.loads(error[1])["error"]["type"] == "server_error"
    if name.startswith("v1"):
        assert sent[-1][1] == "[DONE]"
    assert "secret" not in failed.text
    assert await turns(client) == 0
    model.breaking = False
    retry = await send(client, name, key="k")
    assert reply_of(retry) == "one two three four"
    assert "idempotent-replayed" not in retry.headers
    outcomes = await turn_outcomes(client)
    assert (outcomes["error"], outcomes["ok"]) == (1, 1)
