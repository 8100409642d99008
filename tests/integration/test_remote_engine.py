"""Generation by URL against a real `transformers serve` running the tiny model on loopback.

Between the model and the engine sits a small TCP relay: it shows which connection carried a
reply and when our side hung up, and it plays the engine's faults (down, a stream cut
mid-reply, an engine that stops answering) without restarting the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from langchain_core.messages import AIMessageChunk, HumanMessage

from api.app import create_app
from graph.compose import open_service
from graph.errors import EngineUnavailableError
from graph.remote_model import RemoteChatModel, load_remote_chat_model
from graph.settings import Settings
from tests.integration.test_api_threads import parse_sse
from tests.sse import sse_events

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120.0
WAIT_S = 10.0
LONG = 2000  # tokens: a reply still running when the test hangs up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` on the tiny model, on a free loopback port; its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("engine") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    command += [str(tiny_model_path), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--device", "cpu"]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, f"serve exited:\n{log_path.read_text()}"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"serve not up:\n{log_path.read_text()}"
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(eq=False)
class Link:
    """One proxied connection."""

    client: socket.socket
    upstream: socket.socket | None
    relay: Relay
    received: int = 0
    hung_up: threading.Event = field(default_factory=threading.Event)
    """Our side (the model's HTTP client) closed the connection."""
    _ending: bool = False

    def start(self) -> None:
        threading.Thread(target=self._forward, daemon=True).start()
        if self.upstream is not None:
            threading.Thread(target=self._backward, daemon=True).start()

    def _forward(self) -> None:
        try:
            while data := self.client.recv(65536):
                if self.upstream is not None:
                    self.upstream.sendall(data)
        except OSError:
            pass
        if not self._ending:
            self.hung_up.set()
        self.end()

    def _backward(self) -> None:
        assert self.upstream is not None
        try:
            while data := self.upstream.recv(65536):
                self.relay.last = self
                cut = self.relay.cut_after
                if cut is not None and self.received + len(data) > cut:
                    self.client.sendall(data[: max(0, cut - self.received)])
                    break
                self.received += len(data)
                self.client.sendall(data)
        except OSError:
            pass
        self.end()

    def end(self) -> None:
        self._ending = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


class Relay:
    """A TCP relay to the engine that can go down, cut a stream or stall."""

    def __init__(self, target: str) -> None:
        self.target_port = int(target.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.links: list[Link] = []
        self.last: Link | None = None
        self.cut_after: int | None = None
        """Bytes of a response passed on before the connection is cut (None: all)."""
        self.stall = False
        """Accept connections but never answer."""
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        sock.settimeout(0.1)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        """Refuse connections (as a stopped engine does) and drop the open ones."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop()

    def drop(self) -> None:
        for link in self.links:
            link.end()
        self.links.clear()

    def _accept(self, sock: socket.socket) -> None:
        while self._listener is sock:
            try:
                client, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = None
            if not self.stall:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            link = Link(client=client, upstream=upstream, relay=self)
            self.links.append(link)
            link.start()

    def close(self) -> None:
        self.down()


@pytest.fixture
def relay(engine: str) -> Iterator[Relay]:
    relay = Relay(engine)
    yield relay
    relay.close()


def remote_settings(tiny_model_path: Path, relay: Relay, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        model=str(tiny_model_path),
        engine_url=relay.url,
        engine_sampling="generation_config",
        checkpointer_url="memory",
        data_dir=tmp_path,
        embedder="hash",
        **extra,
    )


@pytest.fixture
def model(tiny_model_path: Path, relay: Relay, tmp_path: Path) -> Iterator[RemoteChatModel]:
    chat = load_remote_chat_model(remote_settings(tiny_model_path, relay, tmp_path))
    yield chat
    chat.close()


SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


def hung_up(relay: Relay) -> bool:
    """Whether the connection that carried the latest reply was closed by our side."""
    assert relay.last is not None
    return relay.last.hung_up.wait(WAIT_S)


# ----------------------------------------------------------------------------- the model


def test_the_engine_sees_the_locally_templated_prompt(
    model: RemoteChatModel, engine: str, tiny_chat_model: Any
) -> None:
    messages = [HumanMessage("Tell me about orders")]
    # Greedy with a repetition penalty: deterministic, and not the tiny model's run of
    # newlines, so equal texts mean the same prompt and the same settings reached the weights.
    greedy = {"temperature": 0, "repetition_penalty": 3.0, "max_new_tokens": 12}
    reply = model.invoke(messages, **greedy)
    counted = model.get_num_tokens_from_messages(messages)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == counted
    # The engine tokenizes the same text to the same length...
    prompt = model._to_chat_prompt(messages)
    direct = httpx.post(
        f"{engine}/v1/completions",
        json={"model": model.engine_model, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        timeout=WAIT_S,
    ).json()
    assert direct["usage"]["prompt_tokens"] == counted
    # ...and the same weights in-process answer the same text to the same settings.
    local = tiny_chat_model.invoke(messages, **greedy)
    assert reply.content == local.content
    assert str(reply.content).strip()
    assert reply.response_metadata["model_name"] == str(model.model_id)


def test_streaming_usage_and_length(model: RemoteChatModel) -> None:
    chunks = list(model.stream("sing", max_new_tokens=6, seed=3, **SAMPLED))
    assert len(chunks) > 2
    assert [c.usage_metadata for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.usage_metadata is not None
    assert last.usage_metadata["output_tokens"] == 6
    assert last.response_metadata["finish_reason"] == "length"
    text = "".join(str(c.content) for c in chunks)
    assert text == model.invoke("sing", max_new_tokens=6, seed=3, **SAMPLED).content


def test_same_seed_same_text_other_seed_other_text(model: RemoteChatModel) -> None:
    first = model.invoke("hello", seed=7, max_new_tokens=16, **SAMPLED).content
    again = model.invoke("hello", seed=7, max_new_tokens=16, **SAMPLED).content
    other = model.invoke("hello", seed=8, max_new_tokens=16, **SAMPLED).content
    assert first == again
    assert first != other


def _pieces(model: RemoteChatModel, **kwargs: Any) -> list[str]:
    return [str(c.content) for c in model.stream("hello", **kwargs) if c.content]


def test_stop_sequences_streaming_or_not(model: RemoteChatModel) -> None:
    kwargs = {"seed": 11, "max_new_tokens": 24, **SAMPLED}
    pieces = _pieces(model, **kwargs)
    full = "".join(pieces)
    # A stop sequence that spans two streamed pieces, and one inside a single piece.
    at = next(i for i in range(2, len(pieces)) if pieces[i - 1] and pieces[i])
    split_stop = pieces[at - 1][-1] + pieces[at][0]
    for stop in (split_stop, full[len(full) // 2 : len(full) // 2 + 2]):
        prefix = full[: full.find(stop)]
        streamed = list(model.stream("hello", stop=[stop], **kwargs))
        assert "".join(str(c.content) for c in streamed) == prefix
        assert streamed[-1].response_metadata["finish_reason"] == "stop"
        reply = model.invoke("hello", stop=[stop], **kwargs)
        assert reply.content == prefix
        assert reply.usage_metadata is not None
        assert 0 < reply.usage_metadata["output_tokens"] < 24


def test_closing_a_stream_closes_the_engine_request(model: RemoteChatModel, relay: Relay) -> None:
    stream = model.stream("sing", max_new_tokens=LONG, seed=1, **SAMPLED)
    next(iter(stream))
    stream.close()
    assert hung_up(relay)


def test_cancel_event_ends_the_reply_and_the_request(model: RemoteChatModel, relay: Relay) -> None:
    cancel = threading.Event()
    chunks: list[AIMessageChunk] = []
    for chunk in model.stream("sing", max_new_tokens=LONG, seed=1, cancel_event=cancel, **SAMPLED):
        chunks.append(chunk)
        if len(chunks) == 3:
            cancel.set()
    assert chunks[-1].response_metadata["cancelled"] is True
    usage = chunks[-1].usage_metadata
    assert usage is not None and usage["output_tokens"] < 10
    assert hung_up(relay)


async def test_async_stream_closed_early_closes_the_request(
    model: RemoteChatModel, relay: Relay
) -> None:
    stream = model.astream("sing", max_new_tokens=LONG, seed=1, **SAMPLED)
    await anext(aiter(stream))
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(hung_up, relay)
    reply = await model.ainvoke("sing", max_new_tokens=5, seed=1, **SAMPLED)
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] == 5
    await model.aclose()


def test_engine_faults_raise_engine_unavailable(
    model: RemoteChatModel, relay: Relay, tiny_model_path: Path, tmp_path: Path
) -> None:
    relay.down()
    with pytest.raises(EngineUnavailableError):
        model.invoke("hi", max_new_tokens=5)
    relay.up()
    relay.cut_after = 900  # the headers and a few events, then the connection breaks
    relay.drop()
    seen: list[str] = []
    with pytest.raises(EngineUnavailableError):
        for chunk in model.stream("sing", max_new_tokens=LONG, seed=1, **SAMPLED):
            seen.append(str(chunk.content))
    assert seen, "the stream broke after some text, not before"
    relay.cut_after = None
    relay.stall = True
    relay.drop()
    slow = load_remote_chat_model(
        remote_settings(tiny_model_path, relay, tmp_path, engine_timeout_s=0.5)
    )
    with pytest.raises(EngineUnavailableError):
        slow.invoke("hi", max_new_tokens=5)
    slow.close()
    relay.stall = False
    assert model.invoke("hi", max_new_tokens=5).usage_metadata is not None


def test_a_request_the_engine_refuses_is_not_an_outage(
    relay: Relay, tiny_model_path: Path, tmp_path: Path
) -> None:
    settings = remote_settings(tiny_model_path, relay, tmp_path, engine_model="not-served")
    wrong = load_remote_chat_model(settings)
    with pytest.raises(RuntimeError, match="refused the request with 400") as info:
        wrong.invoke("hi", max_new_tokens=5)
    assert not isinstance(info.value, EngineUnavailableError)
    wrong.close()


# ----------------------------------------------------------------------------- the service


@contextlib.asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole service on the engine, served by uvicorn on loopback; a client for it."""
    async with open_service(settings, embedder="hash") as service:
        app = create_app(service, settings=settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                yield client
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def api(
    tiny_model_path: Path, relay: Relay, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with live_app(remote_settings(tiny_model_path, relay, tmp_path)) as client:
        yield client


async def _thread(client: httpx.AsyncClient) -> str:
    return str((await client.post("/threads")).json()["thread_id"])


async def _turns(client: httpx.AsyncClient, thread_id: str) -> tuple[int, list[Any]]:
    body = (await client.get(f"/threads/{thread_id}")).json()
    return body["thread"]["turns"], body["window"]


CHAT = {"seed": 5, "temperature": 1.0, "max_tokens": 16}


async def test_rest_and_v1_turns_stream_what_they_save(api: httpx.AsyncClient) -> None:
    thread_id = await _thread(api)
    plain = await api.post(f"/threads/{thread_id}/messages", json={"content": "hi", **CHAT})
    assert plain.status_code == 200, plain.text
    first = plain.json()
    assert first["usage"]["prompt_tokens"] == first["context_account"]["total"]
    assert first["usage"]["completion_tokens"] > 0
    streamed = await api.post(
        f"/threads/{thread_id}/messages", json={"content": "more", "stream": True, **CHAT}
    )
    events = parse_sse(streamed.text)
    tokens = "".join(data["text"] for name, data in events if name == "token")
    done = next(data for name, data in events if name == "done")
    assert tokens and tokens == done["reply"]
    _, window = await _turns(api, thread_id)
    assert window[-1]["content"] == done["reply"]

    body = {"model": "steadychat", "messages": [{"role": "user", "content": "hello"}], **CHAT}
    whole = (await api.post("/v1/chat/completions", json=body)).json()
    assert whole["usage"]["completion_tokens"] > 0
    sse = await api.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(d) for _, d in sse_events(sse.text) if d.startswith("{")]
    deltas = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert deltas == whole["choices"][0]["message"]["content"]
    # What needs the in-process generate() is refused by name, never silently dropped.
    tool = {"type": "function", "function": {"name": "f"}}
    for extra, param in (({"tools": [tool]}, "tools"), ({"logprobs": True}, "logprobs")):
        refused = await api.post("/v1/chat/completions", json={**body, **extra})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param


async def test_engine_down_is_503_with_retry_after_and_saves_nothing(
    api: httpx.AsyncClient, relay: Relay, tiny_model_path: Path
) -> None:
    thread_id = await _thread(api)
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["engine"] == {
        "model": str(tiny_model_path),
        "reachable": True,
        "serves_model": True,
    }
    relay.down()
    for body in ({"content": "hi"}, {"content": "hi", "stream": True}):
        answer = await api.post(f"/threads/{thread_id}/messages", json={**body, **CHAT})
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) > 0
        assert answer.json()["error"]["code"] == "engine_unavailable"
    v1 = {"model": "steadychat", "messages": [{"role": "user", "content": "hello"}]}
    for extra in ({}, {"stream": True}):
        answer = await api.post("/v1/chat/completions", json={**v1, **extra})
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) > 0
    ready = await api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["engine"]["reachable"] is False
    assert ready.json()["checks"]["engine"] is False
    assert await _turns(api, thread_id) == (0, [])

    relay.up()
    again = await api.post(f"/threads/{thread_id}/messages", json={"content": "hi", **CHAT})
    assert again.status_code == 200, again.text
    assert again.json()["turn"] == 1
    turns, window = await _turns(api, thread_id)
    assert turns == 1 and [m["role"] for m in window] == ["user", "assistant"]
    assert (await api.get("/readyz")).status_code == 200


async def test_a_stream_cut_mid_reply_saves_nothing(api: httpx.AsyncClient, relay: Relay) -> None:
    thread_id = await _thread(api)
    relay.cut_after = 3000  # the headers and some events, then the connection breaks
    relay.drop()
    answer = await api.post(
        f"/threads/{thread_id}/messages",
        json={"content": "sing", "stream": True, **CHAT, "max_tokens": LONG},
    )
    assert answer.status_code == 200
    events = parse_sse(answer.text)
    names = [name for name, _ in events]
    assert "token" in names and "done" not in names
    error = next(data for name, data in events if name == "error")
    assert error["error"]["code"] == "engine_unavailable"
    assert await _turns(api, thread_id) == (0, [])
    relay.cut_after = None
    relay.drop()
    plain = await api.post(f"/threads/{thread_id}/messages", json={"content": "sing", **CHAT})
    assert plain.status_code == 200, plain.text
    assert plain.json()["turn"] == 1


async def test_client_disconnect_closes_the_engine_request(
    api: httpx.AsyncClient, relay: Relay
) -> None:
    thread_id = await _thread(api)
    for url, body in (
        (f"/threads/{thread_id}/messages", {"content": "sing", "stream": True}),
        (
            "/v1/chat/completions",
            {
                "model": "steadychat",
                "stream": True,
                "messages": [{"role": "user", "content": "sing"}],
            },
        ),
    ):
        relay.last = None
        async with api.stream("POST", url, json={**body, **CHAT, "max_tokens": LONG}) as answer:
            assert answer.status_code == 200
            seen = 0
            async for line in answer.aiter_lines():
                seen += line.startswith(("event: token", "data: {"))
                if seen == 3:
                    break
        assert await asyncio.to_thread(hung_up, relay)
    assert await _turns(api, thread_id) == (0, [])
    after = await api.post(f"/threads/{thread_id}/messages", json={"content": "hi", **CHAT})
    assert after.status_code == 200 and after.json()["turn"] == 1
