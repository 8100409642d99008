"""Concurrency over HTTP: one turn at a time per thread, busy rejection, idempotent retries,
and a client that disconnects mid-stream leaving nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from api.app import create_app
from api.idempotency import IdempotencyCache, fingerprint
from graph.compose import open_service
from graph.settings import Settings
from nodes.generate_reply import user_text_of
from tests.fakes import ScriptedChatModel

WAIT_S = 30.0


class GatedModel(ScriptedChatModel):
    """A scripted model that can hold generations and stream slowly, for concurrency tests.

    ``gate``: every generation waits at this barrier, so N generations must run at once.
    ``hold``: every generation waits until it is set. ``started`` counts generations begun.
    ``token_delay``: pause between streamed words (the stream stops when cancelled).
    """

    gate: Any = None
    hold: Any = None
    token_delay: float = 0.0
    started: Any = None
    cancelled: Any = None

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self.started = threading.Semaphore(0)
        self.cancelled = threading.Event()

    def _next_reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        self.started.release()
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        if self.hold is not None:
            assert self.hold.wait(WAIT_S), "the test never released the model"
        return super()._next_reply(messages, kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        cancel: threading.Event | None = kwargs.get("cancel_event")
        try:
            for chunk in super()._stream(messages, stop, run_manager, **kwargs):
                if cancel is not None and cancel.is_set():
                    # Like the real model: end with a closing chunk, marked cancelled.
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(
                            content="",
                            response_metadata={"finish_reason": "stop", "cancelled": True},
                            chunk_position="last",
                        )
                    )
                    return
                if self.token_delay and isinstance(chunk.message, AIMessageChunk):
                    time.sleep(self.token_delay)
                yield chunk
        finally:
            # Stopped early (or closed by the caller) because the turn was cancelled.
            if cancel is not None and cancel.is_set():
                self.cancelled.set()


async def started(model: GatedModel, count: int = 1) -> None:
    for _ in range(count):
        assert await asyncio.to_thread(model.started.acquire, True, WAIT_S)


@contextlib.asynccontextmanager
async def open_app(
    tmp_path: Path, model: ScriptedChatModel, **settings: Any
) -> AsyncIterator[FastAPI]:
    config = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash", **settings)
    async with open_service(config, chat_model=model, embedder="hash") as service:
        yield create_app(service, settings=config)


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@contextlib.asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port, in this event loop."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def new_thread(client: httpx.AsyncClient) -> str:
    return str((await client.post("/threads")).json()["thread_id"])


async def test_turns_on_one_thread_are_serialised(tmp_path: Path) -> None:
    model = GatedModel(responder=lambda messages: f"echo {user_text_of(messages[-1].content)}")
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        thread_id = await new_thread(client)
        texts = [f"message {i}" for i in range(5)]
        responses = await asyncio.gather(
            *(client.post(f"/threads/{thread_id}/messages", json={"content": t}) for t in texts)
        )
        assert all(r.status_code == 200 for r in responses)
        assert sorted(r.json()["turn"] for r in responses) == [1, 2, 3, 4, 5]
        for text, response in zip(texts, responses, strict=True):
            assert response.json()["reply"] == f"echo {text}"
        detail = (await client.get(f"/threads/{thread_id}")).json()
        assert detail["thread"]["turns"] == 5
        users = [m["content"] for m in detail["window"] if m["role"] == "user"]
        assert sorted(users) == texts  # every turn saved once, none lost


async def test_turns_on_different_threads_run_together(tmp_path: Path) -> None:
    # Each generation waits until three are running: serialising threads would break the gate.
    model = GatedModel(gate=threading.Barrier(3))
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        threads = [await new_thread(client) for _ in range(3)]
        responses = await asyncio.gather(
            *(client.post(f"/threads/{t}/messages", json={"content": "hi"}) for t in threads)
        )
        assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
        assert not model.gate.broken
        assert [r.json()["turn"] for r in responses] == [1, 1, 1]


async def test_busy_thread_is_rejected_with_no_retry(tmp_path: Path) -> None:
    model = GatedModel(hold=threading.Event())
    async with open_app(tmp_path, model, busy_policy="reject") as app, asgi_client(app) as client:
        thread_id = await new_thread(client)
        first = asyncio.create_task(
            client.post(f"/threads/{thread_id}/messages", json={"content": "slow one"})
        )
        await started(model)
        for body in ({"content": "me too"}, {"content": "me too", "stream": True}):
            busy = await client.post(f"/threads/{thread_id}/messages", json=body)
            assert busy.status_code == 409
            assert busy.headers["x-should-retry"] == "false"
            assert busy.json()["error"]["code"] == "thread_busy"
        # Another thread is not blocked by this one.
        other = await new_thread(client)
        model.hold.set()
        assert (await first).json()["turn"] == 1
        assert (
            await client.post(f"/threads/{other}/messages", json={"content": "hi"})
        ).status_code == 200
        again = await client.post(f"/threads/{thread_id}/messages", json={"content": "now"})
        assert again.json()["turn"] == 2


async def test_idempotent_retry_returns_the_first_result(tmp_path: Path) -> None:
    model = ScriptedChatModel()
    model.enqueue("first answer", "second answer")
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        thread_id = await new_thread(client)
        url = f"/threads/{thread_id}/messages"
        headers = {"Idempotency-Key": "retry-1"}
        first = await client.post(url, json={"content": "hi"}, headers=headers)
        retry = await client.post(url, json={"content": "hi"}, headers=headers)
        assert first.status_code == retry.status_code == 200
        assert retry.json() == first.json()
        assert retry.json()["reply"] == "first answer"
        assert retry.headers["idempotent-replayed"] == "true"
        assert (await client.get(f"/threads/{thread_id}")).json()["thread"]["turns"] == 1
        # Same key, different body: refused, nothing run.
        changed = await client.post(url, json={"content": "bye"}, headers=headers)
        assert changed.status_code == 422
        assert changed.json()["error"]["code"] == "idempotency_key_reused"
        # A new key runs a new turn.
        fresh = await client.post(url, json={"content": "hi"}, headers={"Idempotency-Key": "k2"})
        assert fresh.json() | {"turn": 0} != first.json() | {"turn": 0}
        assert fresh.json()["turn"] == 2


async def test_retry_while_the_first_runs_waits_for_it(tmp_path: Path) -> None:
    model = GatedModel(hold=threading.Event(), default="only once")
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        thread_id = await new_thread(client)
        url = f"/threads/{thread_id}/messages"
        headers = {"Idempotency-Key": "in-flight"}
        first = asyncio.create_task(client.post(url, json={"content": "hi"}, headers=headers))
        await started(model)
        retry = asyncio.create_task(client.post(url, json={"content": "hi"}, headers=headers))
        await asyncio.sleep(0.05)  # let the retry reach the key before the first finishes
        model.hold.set()
        a, b = await first, await retry
        assert a.json() == b.json()
        assert (await client.get(f"/threads/{thread_id}")).json()["thread"]["turns"] == 1


async def test_idempotent_stream_and_thread_creation(tmp_path: Path) -> None:
    model = ScriptedChatModel()
    model.enqueue("streamed once")
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        created = [
            await client.post("/threads", json={"title": "x"}, headers={"Idempotency-Key": "c"})
            for _ in range(2)
        ]
        assert created[0].json()["thread_id"] == created[1].json()["thread_id"]
        assert (await client.get("/threads")).json()["total"] == 1
        thread_id = created[0].json()["thread_id"]
        body = {"content": "hi", "stream": True}
        headers = {"Idempotency-Key": "s"}
        url = f"/threads/{thread_id}/messages"
        first = await client.post(url, json=body, headers=headers)
        retry = await client.post(url, json=body, headers=headers)
        done = [b for b in (first.text, retry.text) if "event: done" in b]
        assert len(done) == 2
        first_done = json.loads(first.text.split("event: done")[1].split("data:", 1)[1])
        retry_done = json.loads(retry.text.split("event: done")[1].split("data:", 1)[1])
        assert first_done == retry_done
        assert retry_done["reply"] == "streamed once"
        assert (await client.get(f"/threads/{thread_id}")).json()["thread"]["turns"] == 1


@pytest.mark.slow
async def test_disconnect_mid_stream_saves_nothing(tmp_path: Path) -> None:
    words = " ".join(f"w{i}" for i in range(400))
    model = GatedModel(token_delay=0.01)
    model.enqueue(words, "after the disconnect")
    async with (
        open_app(tmp_path, model) as app,
        live_server(app) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client,
    ):
        thread_id = await new_thread(client)
        tokens = 0
        async with client.stream(
            "POST",
            f"/threads/{thread_id}/messages",
            json={"content": "talk for a long time", "stream": True},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event: token"):
                    tokens += 1
                if tokens == 3:
                    break  # leaving the block closes the connection mid-stream
        assert tokens == 3
        # The next turn queues behind the cancelled one, so when it answers the first has
        # been rolled back: it is turn 1, and only its own exchange is in the window.
        after = await client.post(
            f"/threads/{thread_id}/messages", json={"content": "are you there?"}
        )
        assert after.status_code == 200
        assert after.json()["turn"] == 1
        # The generation itself saw the cancellation and stopped.
        assert await asyncio.to_thread(model.cancelled.wait, WAIT_S)
        window = (await client.get(f"/threads/{thread_id}")).json()["window"]
        assert [(m["role"], m["content"]) for m in window] == [
            ("user", "are you there?"),
            ("assistant", "after the disconnect"),
        ]


async def test_idempotency_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache = IdempotencyCache(max_entries=2, ttl_s=60, clock=lambda: now[0])
    body = fingerprint({"content": "hi"})
    for key in ("a", "b", "c"):
        claim = await cache.claim(owner="o", scope="s", key=key, body_hash=body)
        assert not claim.replayed
        await claim.finish({"key": key})
    assert len(cache) == 2
    # "a" was the least recently used: it was dropped, so it runs again.
    assert not (await cache.claim(owner="o", scope="s", key="a", body_hash=body)).replayed
    replay = await cache.claim(owner="o", scope="s", key="c", body_hash=body)
    assert replay.replayed and replay.result == {"key": "c"}
    # Another owner never sees this owner's keys.
    assert not (await cache.claim(owner="p", scope="s", key="c", body_hash=body)).replayed
    now[0] += 61
    assert not (await cache.claim(owner="o", scope="s", key="c", body_hash=body)).replayed


async def test_failed_request_frees_its_key() -> None:
    cache = IdempotencyCache()
    body = fingerprint({"b": 1, "a": 2})
    assert body == fingerprint({"a": 2, "b": 1})
    claim = await cache.claim(owner="o", scope="s", key="k", body_hash=body)
    await claim.release()
    retry = await cache.claim(owner="o", scope="s", key="k", body_hash=body)
    assert not retry.replayed


async def test_delete_during_a_turn_refuses_its_late_write(tmp_path: Path) -> None:
    model = GatedModel(hold=threading.Event())
    async with open_app(tmp_path, model) as app, asgi_client(app) as client:
        thread_id = await new_thread(client)
        turn = asyncio.create_task(
            client.post(f"/threads/{thread_id}/messages", json={"content": "slow one"})
        )
        await started(model)
        deletion = asyncio.create_task(client.delete(f"/threads/{thread_id}"))
        await asyncio.sleep(0.05)  # let the delete reach the thread while the turn runs
        model.hold.set()
        late, deleted = await turn, await deletion
        assert deleted.status_code == 204
        # For the client of the interrupted turn the thread is gone, not busy.
        assert late.status_code == 404, late.text
        assert late.json()["error"]["code"] == "thread_not_found"
        assert (await client.get(f"/threads/{thread_id}")).status_code == 404
        assert (await client.get("/threads")).json()["total"] == 0
