"""Two API processes on one PostgreSQL and one Chroma server: one turn at a time per thread,
Idempotency-Keys and a deletion stopping a running turn hold across processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
import pytest

from api.errors import ApiError
from api.idempotency import IdempotencyCache, fingerprint
from bench.cluster import ApiProcess, ChromaServer, api_processes
from graph.compose import memory_from_settings
from graph.settings import Settings
from store.checkpointer import open_checkpointer
from store.embeddings import load_embedder
from store.idempotency import open_idempotency_store
from store.locks import ThreadBusy, advisory_key, open_postgres_locks
from store.threads import open_thread_registry
from tests.integration.test_forgetting import _rows_holding
from tests.postgres_server import create_database
from tests.sse import sse_events

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class Cluster(NamedTuple):
    """The running deployment: its API processes, database and Chroma server."""

    apis: list[ApiProcess]
    dsn: str
    chroma_url: str


@pytest.fixture(scope="module")
def cluster(postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two API processes (busy policy: wait) sharing a fresh database and a Chroma server."""
    folder = tmp_path_factory.mktemp("cluster")
    dsn = create_database(postgres_dsn)
    with ChromaServer(folder / "chroma").running() as chroma:
        env = {
            "STEADYCHAT_CHECKPOINTER_URL": dsn,
            "STEADYCHAT_CHROMA_URL": chroma.url,
            "STEADYCHAT_EMBEDDER": "hash",
            "STEADYCHAT_MAX_NEW_TOKENS": "6",
            "STEADYCHAT_LOG_LEVEL": "warning",
        }
        with api_processes(folder, 2, env=env) as apis:
            yield Cluster(apis, dsn, chroma.url)
            logs = "\n".join(api.log_text() for api in apis)
    assert "Traceback" not in logs, logs
    assert "database is locked" not in logs, logs


async def _post(
    client: httpx.AsyncClient,
    api: ApiProcess,
    thread: str,
    text: str,
    *,
    stream: bool = False,
    key: str | None = None,
) -> tuple[dict[str, Any], httpx.Response]:
    headers = {"Idempotency-Key": key} if key else {}
    response = await client.post(
        f"{api.url}/threads/{thread}/messages",
        json={"content": text, "stream": stream},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    if not stream:
        return response.json(), response
    events = sse_events(response.text)
    assert events[-1][0] == "done", events
    return json.loads(events[-1][1]), response


async def _window(client: httpx.AsyncClient, api: ApiProcess, thread: str) -> dict[str, Any]:
    response = await client.get(f"{api.url}/threads/{thread}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _check_linear(detail: dict[str, Any], sent: list[str]) -> None:
    """Each sent message once, every one answered, turn after turn."""
    window = detail["window"]
    users = [m["content"] for m in window if m["role"] == "user"]
    assert sorted(users) == sorted(sent), (users, sent)
    assert [m["role"] for m in window] == ["user", "assistant"] * len(sent)
    assert [m["turn"] for m in window] == [t for t in range(1, len(sent) + 1) for _ in (0, 1)]
    assert detail["thread"]["turns"] == len(sent)


async def test_two_processes_take_turns_on_one_thread(cluster: Cluster) -> None:
    a, b = cluster.apis
    async with httpx.AsyncClient(timeout=120) as client:
        created = await client.post(f"{a.url}/threads", json={"title": "shared"})
        assert created.status_code == 201
        thread = created.json()["thread_id"]
        sent: list[str] = []
        # Alternate turns: each process continues from what the other saved.
        for i in range(4):
            text = f"alternate {i} {uuid.uuid4().hex[:6]}"
            reply, _ = await _post(client, (a, b)[i % 2], thread, text, stream=i == 3)
            assert reply["turn"] == i + 1
            sent.append(text)
        # Double texts: one message to each process at the same moment, streamed or not.
        for r in range(3):
            first, second = f"double {r} to a", f"double {r} to b"
            replies = await asyncio.gather(
                _post(client, a, thread, first, stream=r == 1),
                _post(client, b, thread, second, stream=r == 2),
            )
            assert sorted(reply["turn"] for reply, _ in replies) == [len(sent) + 1, len(sent) + 2]
            sent += [first, second]
        _check_linear(await _window(client, a, thread), sent)
        _check_linear(await _window(client, b, thread), sent)


async def test_an_idempotency_key_retried_on_the_other_process_returns_the_first_result(
    cluster: Cluster,
) -> None:
    a, b = cluster.apis
    async with httpx.AsyncClient(timeout=120) as client:
        thread = (await client.post(f"{b.url}/threads", json={})).json()["thread_id"]
        first, response = await _post(client, a, thread, "book a table", key="retry-1")
        assert "idempotent-replayed" not in response.headers
        again, response = await _post(client, b, thread, "book a table", key="retry-1")
        assert again == first and response.headers["idempotent-replayed"] == "true"
        # The same key with another body is refused on the other process too.
        reused = await client.post(
            f"{b.url}/threads/{thread}/messages",
            json={"content": "something else"},
            headers={"Idempotency-Key": "retry-1"},
        )
        assert reused.status_code == 422
        assert reused.json()["error"]["code"] == "idempotency_key_reused"
        # A duplicate sent to both processes at once runs once; both get its result.
        one, two = await asyncio.gather(
            _post(client, a, thread, "and a taxi", key="dup-2"),
            _post(client, b, thread, "and a taxi", key="dup-2"),
        )
        assert one[0] == two[0]
        assert {
            one[1].headers.get("idempotent-replayed"),
            two[1].headers.get("idempotent-replayed"),
        } == {None, "true"}
        _check_linear(await _window(client, a, thread), ["book a table", "and a taxi"])


LONG_TOKENS = 6000
"""A reply length the tiny model needs half a minute or more for on two cores (it is stopped
long before)."""
DELETE_WITHIN_S = 10.0
"""How long a deletion may take while the other process runs a turn on the thread: the turn
stops within a fraction of a second, the bound leaves room for a loaded machine."""


def _end_tokens(api: ApiProcess) -> dict[str, float]:
    """``logit_bias`` that keeps the tiny model from ever ending its reply by itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(api.log).parent / "models" / "tiny")
    specials = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
    return {str(tokenizer.convert_tokens_to_ids(token)): -100.0 for token in specials}


async def _first_turn(client: httpx.AsyncClient, api: ApiProcess, canary: str) -> str:
    """A thread with one finished turn (its exchange remembered in Chroma)."""
    thread = (await client.post(f"{api.url}/threads", json={"title": canary})).json()["thread_id"]
    await _post(client, api, thread, f"my locker code is {canary}")
    return thread


async def _timed_delete(client: httpx.AsyncClient, api: ApiProcess, thread: str) -> float:
    started = time.monotonic()
    deleted = await client.delete(f"{api.url}/threads/{thread}")
    assert deleted.status_code == 204, deleted.text
    return time.monotonic() - started


async def _assert_gone(
    cluster: Cluster, client: httpx.AsyncClient, thread: str, *canaries: str
) -> None:
    """The thread is gone on every process, and nothing of it is left in either store."""
    for api in cluster.apis:
        detail = await client.get(f"{api.url}/threads/{thread}")
        assert detail.status_code == 404, detail.text
        listed = (await client.get(f"{api.url}/threads", params={"limit": 100})).json()
        assert thread not in [item["thread_id"] for item in listed["data"]]
    with psycopg.connect(cluster.dsn) as conn:
        for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"):
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE thread_id = %s", (thread,))
            assert row.fetchone() == (0,), table
    for canary in canaries:
        assert _rows_holding(cluster.dsn, canary) == {}, canary
    settings = Settings(chroma_url=cluster.chroma_url, embedder="hash")
    memory = memory_from_settings(settings, load_embedder("hash"))
    assert memory.count(thread_id=thread) == 0


async def test_a_delete_on_one_process_stops_a_streamed_turn_on_the_other(
    cluster: Cluster,
) -> None:
    a, b = cluster.apis
    before, during = f"canary-{uuid.uuid4().hex[:8]}", f"canary-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=300) as client:
        thread = await _first_turn(client, a, before)
        first_token = asyncio.Event()

        async def stream() -> list[Any]:
            body = {
                "model": "steadychat",
                "messages": [{"role": "user", "content": f"tell me about {during} at length"}],
                "stream": True,
                "max_tokens": LONG_TOKENS,
                "temperature": 1.0,
                "logit_bias": _end_tokens(a),
            }
            events: list[Any] = []
            async with client.stream(
                "POST", f"{a.url}/v1/chat/completions", json=body, headers={"X-Thread-Id": thread}
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    event = data if data == "[DONE]" else json.loads(data)
                    events.append(event)
                    choices = [] if data == "[DONE]" else event.get("choices", [])
                    if any(choice["delta"].get("content") for choice in choices):
                        first_token.set()
            return events

        turn = asyncio.create_task(stream())
        await asyncio.wait_for(first_token.wait(), 120)
        took = await _timed_delete(client, b, thread)
        events = await asyncio.wait_for(turn, 60)
        # The deletion did not wait for the turn to end by itself: the turn was stopped.
        assert took < DELETE_WITHIN_S, took
        # Its client saw tokens, then the thread-gone error, as when deleted in one process.
        assert events[-1] == "[DONE]", events[-3:]
        error = events[-2]["error"]
        assert error["code"] == "thread_not_found", error
        assert not any(
            choice.get("finish_reason")
            for event in events[:-2]
            for choice in event.get("choices", [])
        ), "the turn ran to its end"
        await _assert_gone(cluster, client, thread, before, during)


async def test_a_delete_on_one_process_stops_a_json_turn_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.apis
    before, during = f"canary-{uuid.uuid4().hex[:8]}", f"canary-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=300) as client:
        thread = await _first_turn(client, b, before)
        # Greedy, the tiny model writes white space for as many tokens as it is allowed.
        body = {"content": f"and {during}?", "max_tokens": LONG_TOKENS, "temperature": 0}
        turn = asyncio.create_task(client.post(f"{a.url}/threads/{thread}/messages", json=body))
        await _generating(client, a)
        took = await _timed_delete(client, b, thread)
        late = await asyncio.wait_for(turn, 60)
        assert took < DELETE_WITHIN_S, took
        # For the client of the stopped turn the thread is gone, not busy (as in one process).
        assert late.status_code == 404, late.text
        assert late.json()["error"]["code"] == "thread_not_found"
        await _assert_gone(cluster, client, thread, before, during)


async def _generating(client: httpx.AsyncClient, api: ApiProcess) -> None:
    """Wait until the process runs a turn, and a moment more for its generation to start."""
    deadline = time.monotonic() + 60
    while "steadychat_turns_in_flight 1.0" not in (await client.get(f"{api.url}/metrics")).text:
        assert time.monotonic() < deadline, "the turn never started"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)


async def test_a_reset_on_one_process_waits_for_the_turn_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.apis
    async with httpx.AsyncClient(timeout=300) as client:
        thread = await _first_turn(client, a, "first")
        body = {"content": "one more", "max_tokens": 1500, "temperature": 0}

        async def run_turn() -> tuple[httpx.Response, float]:
            response = await client.post(f"{a.url}/threads/{thread}/messages", json=body)
            return response, time.monotonic()

        turn = asyncio.create_task(run_turn())
        await _generating(client, a)
        reset_sent = time.monotonic()
        reset = await client.post(f"{b.url}/threads/{thread}/reset")
        finished, finished_at = await turn
        # A reset does not stop a running turn (in one process neither): the turn ends as it
        # would have, then the reset clears the thread.
        assert finished_at > reset_sent, "the turn ended before the reset was sent"
        assert finished.status_code == 200, finished.text
        assert finished.json()["turn"] == 2
        assert reset.status_code == 200 and reset.json()["turns"] == 0
        for api in cluster.apis:
            assert (await _window(client, api, thread))["window"] == []


async def test_advisory_locks_wait_reject_and_survive_a_cancelled_waiter(
    postgres_db: str,
) -> None:
    async with (
        open_postgres_locks(postgres_db, max_connections=4) as one,
        open_postgres_locks(postgres_db, max_connections=4) as other,
    ):
        async with one.hold("t1"):
            # Another process (its own pool) finds the thread busy, or queues behind it.
            with pytest.raises(ThreadBusy):
                async with other.hold("t1", wait=False):
                    pass
            async with other.hold("t2", wait=False):
                pass  # another thread is free
            waiter = asyncio.create_task(_hold_briefly(other, "t1"))
            await asyncio.sleep(0.3)
            assert not waiter.done() and other.waiting == 1
            abandoned = asyncio.create_task(_hold_briefly(other, "t1"))
            await asyncio.sleep(0.1)
            abandoned.cancel()
        assert await asyncio.wait_for(waiter, 10) == "held"
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        # Nothing is left locked on the server, whatever the cancelled waiter did.
        async with one.hold("t1", wait=False):
            pass
    with psycopg.connect(postgres_db) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert row == (0,)
    assert advisory_key("t1") != advisory_key("t2")


async def _hold_briefly(locks: Any, thread: str) -> str:
    async with locks.hold(thread):
        return "held"


async def test_shared_idempotency_keys_across_two_caches(postgres_db: str) -> None:
    async with (
        open_idempotency_store(postgres_db) as left,
        open_idempotency_store(postgres_db) as right,
    ):
        here, there = IdempotencyCache(shared=left), IdempotencyCache(shared=right)
        body = fingerprint({"content": "hi"})
        claim = await here.claim(owner="o", scope="s", key="k", body_hash=body)
        assert not claim.replayed
        duplicate = asyncio.create_task(there.claim(owner="o", scope="s", key="k", body_hash=body))
        await asyncio.sleep(0.3)
        assert not duplicate.done()  # waits for the first request, on the other process
        await claim.finish({"reply": "hello"})
        replay = await asyncio.wait_for(duplicate, 10)
        assert replay.replayed and replay.result == {"reply": "hello"}
        with pytest.raises(ApiError) as info:
            await there.claim(owner="o", scope="s", key="k", body_hash=fingerprint({}))
        assert info.value.status == 422
        # A failed request frees its key everywhere.
        failed = await there.claim(owner="o", scope="s", key="f", body_hash=body)
        await failed.release()
        assert not (await here.claim(owner="o", scope="s", key="f", body_hash=body)).replayed


async def test_workers_starting_together_on_a_fresh_database(postgres_dsn: str) -> None:
    async def start(dsn: str) -> None:
        async with open_checkpointer(dsn), open_thread_registry(dsn):
            pass

    # LangGraph's migrations of a fresh database collide unless one setup runs at a time.
    for _ in range(3):
        dsn = create_database(postgres_dsn)
        await asyncio.gather(*(start(dsn) for _ in range(4)))
