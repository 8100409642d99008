"""What is streamed is what is saved: /v1 and REST, streamed or not, byte for byte."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel
from tests.integration.test_api_threads import parse_sse
from tests.unit.test_chat_model import forced

# A looping reply with white space at both ends, a blank-line run and a code block whose
# repeated line must stay.
LOOPING = (
    "\n\n  Hello there. I can help with that. I can help with that.\n\n\n\nHere is how:\n"
    "```\nx = 1\nx = 1\n```\nI can help with that. "
    "我可以帮你。我可以帮你处理订单。我可以帮你处理订单。 Bye now.  \n\n"
)
# A dropped repeat keeps one line break of the run that followed it.
LOOPING_SAVED = (
    "Hello there. I can help with that. \nHere is how:\n```\nx = 1\nx = 1\n```\n"
    "我可以帮你。我可以帮你处理订单。Bye now."
)
GENERATION = [pytest.param({"temperature": 0}, id="greedy"), pytest.param({"seed": 7}, id="seeded")]


@asynccontextmanager
async def _client(tmp_path: Path, model: BaseChatModel) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


Script = Callable[[], AbstractContextManager[Any]]


async def _v1(
    client: httpx.AsyncClient, generation: dict[str, Any], script: Script = nullcontext
) -> tuple[str, str]:
    """The concatenated deltas of a /v1 stream, then the content of the same call unstreamed."""
    body = {
        "model": "steadychat",
        "messages": [{"role": "user", "content": "help me"}],
        **generation,
    }
    with script():
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status_code == 200, streamed.text
    lines = [line.removeprefix("data: ") for line in streamed.text.splitlines()]
    chunks = [json.loads(line) for line in lines if line.startswith("{")]
    deltas = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    with script():
        whole = await client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    return deltas, whole.json()["choices"][0]["message"]["content"]


async def _rest(
    client: httpx.AsyncClient, generation: dict[str, Any], script: Script = nullcontext
) -> tuple[str, str, str]:
    """REST's token events joined, its ``done.reply`` and the reply the thread stored."""
    thread = (await client.post("/threads", json={})).json()["thread_id"]
    with script():
        response = await client.post(
            f"/threads/{thread}/messages",
            json={"content": "help me", "stream": True, **generation},
        )
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[-1][0] == "done", events
    tokens = "".join(data["text"] for name, data in events if name == "token")
    done = events[-1][1]["reply"]
    window = (await client.get(f"/threads/{thread}")).json()["window"]
    assert [m["role"] for m in window] == ["user", "assistant"]
    return tokens, done, window[-1]["content"]


@pytest.mark.parametrize("generation", GENERATION)
@pytest.mark.parametrize(
    ("raw", "saved"),
    [
        pytest.param(LOOPING, LOOPING_SAVED, id="looping"),
        pytest.param("\n" * 24, "", id="only-newlines"),
        pytest.param("   Yes.   ", "Yes.", id="padded"),
    ],
)
async def test_every_way_of_reading_a_reply_gives_the_same_bytes(
    tmp_path: Path, generation: dict[str, Any], raw: str, saved: str
) -> None:
    model = ScriptedChatModel(default=raw)
    async with _client(tmp_path, model) as client:
        deltas, content = await _v1(client, generation)
        tokens, done, stored = await _rest(client, generation)
        plain = await client.post("/threads", json={})
        answer = await client.post(
            f"/threads/{plain.json()['thread_id']}/messages",
            json={"content": "help me", **generation},
        )
    assert deltas == content == tokens == done == stored == answer.json()["reply"] == saved


@pytest.mark.parametrize("generation", GENERATION)
async def test_the_real_model_streams_what_it_saves(
    tmp_path: Path, tiny_chat_model: Any, generation: dict[str, Any]
) -> None:
    # Unforced: whatever the random weights produce, stream and non-stream agree.
    async with _client(tmp_path, tiny_chat_model) as client:
        deltas, content = await _v1(client, generation)
        tokens, done, stored = await _rest(client, generation)
    assert deltas == content
    assert tokens == done == stored


async def test_the_real_model_loses_its_padding_and_loops_the_same_way_everywhere(
    tmp_path: Path, tiny_chat_model: Any
) -> None:
    # The real generate() loop, decoding and streaming, made to emit this text token by token.
    text = "\n  Sure thing. Sure thing. Sure thing.\n\n\n\nDone here.\n\n"

    def script() -> AbstractContextManager[Any]:
        return forced(tiny_chat_model, text)

    generation = {"temperature": 0, "max_tokens": 40}
    async with _client(tmp_path, tiny_chat_model) as client:
        deltas, content = await _v1(client, generation, script)
        tokens, done, stored = await _rest(client, generation, script)
    assert deltas == content == tokens == done == stored == "Sure thing. \nDone here."
