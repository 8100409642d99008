"""Raw server-sent events of /v1/chat/completions: framing byte by byte, errors, disconnects."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from api.app import create_app
from graph.compose import open_service
from graph.service import ChatService
from graph.settings import Settings
from store.embeddings import load_embedder
from store.vector_memory import ChromaMemory
from tests.fakes import ScriptedChatModel

BASE = "http://steadychat.test"


class FailingMidStream(ScriptedChatModel):
    """Streams two words, then fails the way a crashed generation would."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = super()._stream(messages, stop, run_manager, **kwargs)
        yield next(chunks)
        yield next(chunks)
        raise RuntimeError("device lost: secret internals")


class HangingModel(ScriptedChatModel):
    """Streams a few words, then waits for its cancel event as the real model's streamer does.

    If cancellation never arrives it gives up after a while and streams the rest, so a broken
    disconnect shows up as ``cancelled`` unset and every word produced.
    """

    _produced: list[str] = PrivateAttr(default_factory=list)
    _cancelled: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def produced(self) -> list[str]:
        return self._produced

    @property
    def cancelled(self) -> threading.Event:
        return self._cancelled

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        cancel: threading.Event = kwargs["cancel_event"]
        for index, chunk in enumerate(super()._stream(messages, stop, run_manager, **kwargs)):
            if index >= 3 and cancel.wait(timeout=10):
                self._cancelled.set()
                return
            self._produced.append(str(chunk.message.content))
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        pieces = self._stream(messages, stop, None, **kwargs)
        text = "".join(str(chunk.message.content) for chunk in pieces)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def _open(settings: Settings, model: Any) -> AbstractAsyncContextManager[ChatService]:
    # Real Chroma, in memory, with the deterministic character-frequency embedder.
    memory = ChromaMemory.ephemeral(load_embedder("hash"))
    return open_service(settings, chat_model=model, memory=memory)


def _settings(tmp_path: Path) -> Settings:
    return Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash", model="sc")


@pytest.fixture
def model() -> ScriptedChatModel:
    return ScriptedChatModel()


@pytest.fixture
async def service(tmp_path: Path, model: ScriptedChatModel) -> AsyncIterator[ChatService]:
    async with _open(_settings(tmp_path), model) as svc:
        yield svc


@pytest.fixture
async def http(service: ChatService, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, settings=_settings(tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


def _events(body: bytes) -> list[str]:
    """The data payloads of an OpenAI-style stream, checking the framing on the way."""
    assert body.endswith(b"data: [DONE]\n\n")
    assert b"\r" not in body
    frames = body.decode().split("\n\n")
    assert frames[-1] == ""
    payloads = []
    for frame in frames[:-1]:
        if frame.startswith(":"):
            continue  # keep-alive comment
        assert frame.startswith("data: "), frame
        assert "\n" not in frame, "one data line per event"
        payloads.append(frame.removeprefix("data: "))
    return payloads


async def _post(http: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=body, **kw)


async def test_stream_framing_byte_by_byte(
    http: httpx.AsyncClient, model: ScriptedChatModel
) -> None:
    model.enqueue("alpha beta gamma")
    response = await _post(
        http,
        {"model": "steadychat", "stream": True, "messages": [{"role": "user", "content": "go"}]},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"event:" not in response.content
    payloads = _events(response.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]

    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"sc"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    # White space at the end of what has arrived is held until something visible follows.
    assert contents == ["alpha", " beta", " gamma"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "stop"
    ]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in chunks)


async def test_include_usage_framing(http: httpx.AsyncClient, model: ScriptedChatModel) -> None:
    model.enqueue("one two")
    response = await _post(
        http,
        {
            "model": "steadychat",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "go"}],
        },
    )
    chunks = [json.loads(p) for p in _events(response.content)[:-1]]
    *choice_chunks, usage_chunk = chunks
    assert all(c["usage"] is None for c in choice_chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 2
    assert usage_chunk["usage"]["total_tokens"] == (
        usage_chunk["usage"]["prompt_tokens"] + usage_chunk["usage"]["completion_tokens"]
    )
    assert usage_chunk["id"] == choice_chunks[0]["id"]
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stateful_stream_framing_carries_the_extension(http: httpx.AsyncClient) -> None:
    response = await _post(
        http,
        {"model": "steadychat", "stream": True, "messages": [{"role": "user", "content": "hello"}]},
        headers={"X-Thread-Id": "raw-sse"},
    )
    chunks = [json.loads(p) for p in _events(response.content)[:-1]]
    [finish] = [c for c in chunks if c["choices"][0]["finish_reason"]]
    assert finish is chunks[-1]
    assert finish["steadychat"]["thread_id"] == "raw-sse"
    assert finish["steadychat"]["turn"] == 1
    assert "steadychat" not in chunks[0]


async def test_errors_before_the_stream_are_plain_json(http: httpx.AsyncClient) -> None:
    response = await _post(
        http,
        {
            "model": "steadychat",
            "stream": True,
            "n": 3,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "n"
    assert error["code"] == "invalid_value"
    assert "1" in error["message"]


async def test_error_mid_stream_is_a_data_event_then_done(tmp_path: Path) -> None:
    model = FailingMidStream(default="first second third fourth")
    settings = _settings(tmp_path)
    async with _open(settings, model) as svc:
        app = create_app(svc, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            response = await _post(
                http,
                {
                    "model": "steadychat",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
            )
            payloads = _events(response.content)
            assert payloads[-1] == "[DONE]"
            error = json.loads(payloads[-2])
            assert set(error) == {"error"}
            assert error["error"]["type"] == "server_error"
            assert "secret internals" not in payloads[-2]
            contents = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-2]]
            assert contents == ["first", " second"]

            # The official client surfaces it as an APIError after the partial text.
            client = openai.AsyncOpenAI(
                api_key="k", base_url=f"{BASE}/v1", http_client=http, max_retries=0
            )
            received: list[str] = []
            with pytest.raises(openai.APIError):
                stream = await client.chat.completions.create(
                    model="steadychat", messages=[{"role": "user", "content": "x"}], stream=True
                )
                async for chunk in stream:
                    received.append(chunk.choices[0].delta.content or "")
            assert "".join(received) == "first second"

            # In a thread the failed turn leaves nothing behind.
            response = await _post(
                http,
                {
                    "model": "steadychat",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers={"X-Thread-Id": "failing"},
            )
            payloads = _events(response.content)
            assert payloads[-1] == "[DONE]"
            assert set(json.loads(payloads[-2])) == {"error"}
            contents = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-2]]
            assert contents == ["first", " second"]
            view = await svc.get_thread("failing", owner="anonymous")
            assert view.info.turns == 0


@pytest.mark.slow
@pytest.mark.parametrize("thread", [None, "cancelled-thread"])
async def test_client_disconnect_cancels_generation(tmp_path: Path, thread: str | None) -> None:
    model = HangingModel(default=" ".join(f"w{i}" for i in range(20)))
    settings = _settings(tmp_path)
    async with _open(settings, model) as svc:
        app = create_app(svc, settings=settings)
        async with _served(app) as base, httpx.AsyncClient(base_url=base) as http:
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "steadychat",
                    "stream": True,
                    "messages": [{"role": "user", "content": "go"}],
                },
                headers={"X-Thread-Id": thread} if thread else {},
            ) as response:
                lines = response.aiter_lines()
                while "w2" not in await anext(lines):
                    pass
            # The client went away after three words: the model is told to stop.
            await asyncio.to_thread(model.cancelled.wait, 10)
            assert model.cancelled.is_set()
            assert model.produced == ["w0 ", "w1 ", "w2 "]
            if thread:
                await _assert_nothing_saved(http, svc, model, thread)


@pytest.mark.slow
@pytest.mark.parametrize("thread", [None, "left-thread"])
async def test_client_leaving_a_plain_call_cancels_generation(
    tmp_path: Path, thread: str | None
) -> None:
    model = HangingModel(default=" ".join(f"w{i}" for i in range(20)))
    settings = _settings(tmp_path)
    # The client gives up reading after a second; the model hangs until it is cancelled.
    timeout = httpx.Timeout(10.0, read=1.0)
    async with _open(settings, model) as svc:
        app = create_app(svc, settings=settings)
        async with _served(app) as base, httpx.AsyncClient(base_url=base, timeout=timeout) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(
                    "/v1/chat/completions",
                    json={"model": "steadychat", "messages": [{"role": "user", "content": "x"}]},
                    headers={"X-Thread-Id": thread} if thread else {},
                )
            await asyncio.to_thread(model.cancelled.wait, 10)
            assert model.cancelled.is_set()
            assert model.produced == ["w0 ", "w1 ", "w2 "]
            if thread:
                await _assert_nothing_saved(http, svc, model, thread)


async def _assert_nothing_saved(
    http: httpx.AsyncClient, svc: ChatService, model: ScriptedChatModel, thread: str
) -> None:
    """The cancelled turn left nothing: the next turn (queued behind it) is turn 1."""
    model.enqueue("fresh start")
    next_turn = await http.post(
        "/v1/chat/completions",
        json={"model": "steadychat", "messages": [{"role": "user", "content": "again"}]},
        headers={"X-Thread-Id": thread},
    )
    assert next_turn.json()["steadychat"]["turn"] == 1
    view = await svc.get_thread(thread, owner="anonymous")
    assert view.info.turns == 1
    assert [m.content for m in view.window] == ["again", "fresh start"]


async def _wait_for(condition: Any) -> None:
    async with asyncio.timeout(10):
        # Polling: uvicorn's "started" is a flag, not an event.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class _served:
    """Serve ``app`` with uvicorn on a free loopback port for the duration of the block."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> str:
        self.task = asyncio.create_task(self.server.serve())
        await _wait_for(lambda: self.server.started)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task
