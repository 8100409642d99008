"""Two API processes on one PostgreSQL and one Chroma server: one turn at a time per thread and
Idempotency-Keys hold across processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from api.errors import ApiError
from api.idempotency import IdempotencyCache, fingerprint
from bench.cluster import ApiProcess, ChromaServer, api_processes
from store.checkpointer import open_checkpointer
from store.idempotency import open_idempotency_store
from store.locks import ThreadBusy, advisory_key, open_postgres_locks
from store.threads import open_thread_registry
from tests.postgres_server import create_database
from tests.sse import sse_events

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def cluster(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[ApiProcess], str]]:
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
            yield apis, dsn
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


async def test_two_processes_take_turns_on_one_thread(
    cluster: tuple[list[ApiProcess], str],
) -> None:
    (a, b), _ = cluster
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
    cluster: tuple[list[ApiProcess], str],
) -> None:
    (a, b), _ = cluster
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
