"""``steadychat migrate`` for real: an embedded deployment built by running turns through the API
with the tiny model, moved to a real PostgreSQL and a real ``chroma run``, served from there."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from api.app import create_app
from bench.cluster import ChromaServer
from graph.compose import open_service
from graph.service import ChatService
from graph.settings import Settings
from nodes.errors import ThreadDeletedError
from nodes.memory import MemoryRecord
from store.checkpointer import open_checkpointer
from store.embeddings import load_embedder
from store.migration import Source, SourceError, TargetError, migrate
from store.vector_memory import DEFAULT_COLLECTION, ChromaMemory, http_client, local_client
from tests.fakes import ScriptedChatModel
from tests.postgres_server import create_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).parents[2]
KEYS = {"alpha": "key-alpha", "beta": "key-beta"}
QUESTION = "spare key hidden flowerpot"
PLANTED = "planted:0:fact"


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    # A small window, so that the first turns of a thread are recalled from vector memory.
    return Settings(
        model="tiny",
        data_dir=data_dir,
        embedder="hash",
        window_tokens=64,
        max_new_tokens=8,
        api_keys=list(KEYS.values()),
        **overrides,
    )


@asynccontextmanager
async def _serving(
    settings: Settings, model: Any
) -> AsyncIterator[tuple[ChatService, dict[str, httpx.AsyncClient]]]:
    """The service and the REST API on ``settings``, with a client per tenant."""
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        transport = httpx.ASGITransport(app=create_app(service, settings=settings))
        async with (
            httpx.AsyncClient(
                transport=transport,
                base_url="http://t",
                headers={"Authorization": f"Bearer {KEYS['alpha']}"},
            ) as alpha,
            httpx.AsyncClient(
                transport=transport,
                base_url="http://t",
                headers={"Authorization": f"Bearer {KEYS['beta']}"},
            ) as beta,
        ):
            yield service, {"alpha": alpha, "beta": beta}


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def _picture(clients: dict[str, httpx.AsyncClient]) -> dict[str, Any]:
    """What each tenant sees: its thread list, each thread's detail and its history."""
    seen: dict[str, Any] = {}
    for tenant, client in clients.items():
        listed = (await _ok(await client.get("/threads", params={"limit": 100})))["data"]
        seen[tenant] = {"threads": listed, "details": {}, "history": {}}
        for thread in listed:
            tid = thread["thread_id"]
            seen[tenant]["details"][tid] = await _ok(await client.get(f"/threads/{tid}"))
            history = await _ok(await client.get(f"/threads/{tid}/history?limit=1000"))
            seen[tenant]["history"][tid] = history["data"]
    return seen


def _vectors(client: Any) -> dict[str, Any]:
    got = client.get_collection(DEFAULT_COLLECTION).get(include=["embeddings"])
    return dict(zip(got["ids"], got["embeddings"], strict=True))


def _search(memory: Any, thread_id: str) -> list[tuple[str, str]]:
    hits = memory.search(QUESTION, thread_id=thread_id, user_id=None, k=4)
    return [(h.record.id, h.record.text) for h in hits]


@dataclass
class Embedded:
    """An embedded deployment (a data dir) and what its API showed before it was stopped."""

    folder: Path
    ada: str
    bob: str
    quiet: str
    gone: str
    canary: str
    picture: dict[str, Any]
    recall: list[tuple[str, str]]
    pending: list[tuple[str, str, Any]]
    checkpoints: int
    vectors: int

    def copy(self, where: Path) -> Source:
        """A copy of the data dir (each test migrates its own)."""
        shutil.copytree(self.folder, where)
        return Source.of_data_dir(where)


async def _build(folder: Path, model: Any) -> Embedded:
    settings = _settings(folder)
    canary = f"canary{uuid.uuid4().hex}"
    async with _serving(settings, model) as (_, clients):
        alpha, beta = clients["alpha"], clients["beta"]

        async def thread(client: httpx.AsyncClient, turns: list[str], **body: Any) -> str:
            tid = str((await _ok(await client.post("/threads", json=body), 201))["thread_id"])
            for text in turns:
                await _ok(await client.post(f"/threads/{tid}/messages", json={"content": text}))
            return tid

        ada = await thread(
            alpha,
            ["The spare key is hidden under the blue flowerpot."]
            + [f"Unrelated remark number {i} about the weather today." for i in range(4)],
            title="Ada's flat",
            metadata={"channel": "web", "tags": ["vip"]},
        )
        bob = await thread(beta, ["My name is Bob.", "My email is bob@example.com."], title="Bob")
        quiet = await thread(alpha, [], title="Nothing said yet")
        gone = await thread(
            alpha, [f"Remember the code {canary}.", f"And {canary} again."], title=canary
        )
        await _ok(await alpha.delete(f"/threads/{gone}"), 204)
    # A run that stopped after a task wrote: pending writes on the newest checkpoint.
    pending = [
        ("pending-task", "topic", "a topic not yet applied"),
        ("pending-task", "entities", ["x"]),
    ]
    async with open_checkpointer(f"sqlite:///{folder / 'checkpoints.sqlite'}") as saver:
        latest = await saver.aget_tuple({"configurable": {"thread_id": bob}})
        assert latest is not None
        await saver.aput_writes(latest.config, [(c, v) for _, c, v in pending], "pending-task")
        checkpoints = 0
        for tid in (ada, bob, quiet):
            checkpoints += len([t async for t in saver.alist({"configurable": {"thread_id": tid}})])
    # A vector that no embedder made: the target must hold this one, not an embedding of its text.
    memory = local_client(folder / "chroma").get_collection(DEFAULT_COLLECTION)
    memory.upsert(
        ids=[PLANTED],
        embeddings=np.eye(1, memory.metadata["dimension"], 7, dtype=np.float32),
        documents=["a record whose vector no embedder made"],
        metadatas=[{"thread_id": "planted", "user_id": "u", "turn": 0, "role": "fact"}],
    )
    async with _serving(settings, model) as (service, clients):
        picture = await _picture(clients)
        assert service.memory is not None
        recall = await asyncio.to_thread(_search, service.memory, ada)
        vectors = await asyncio.to_thread(service.memory.count)
    assert any("flowerpot" in text for _, text in recall)
    return Embedded(
        folder, ada, bob, quiet, gone, canary, picture, recall, pending, checkpoints, vectors
    )


@pytest.fixture(scope="module")
def embedded(tiny_chat_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Embedded:
    """Built once per module by running turns through the API; tests migrate copies of it."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("STEADYCHAT_"):
                env.delenv(name)
        return asyncio.run(_build(tmp_path_factory.mktemp("embedded") / "data", tiny_chat_model))


def _steadychat(*args: str) -> subprocess.CompletedProcess[str]:
    """``steadychat ARGS`` in a process of its own, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _dump_target(dsn: str, chroma_url: str) -> dict[str, Any]:
    """Every row of the target's tables and every Chroma record, to compare two states."""
    tables = ["checkpoints", "checkpoint_blobs", "checkpoint_writes", "steadychat_threads"]
    dump: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for table in tables:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            dump[table] = sorted(repr(r) for r in rows)
    client = http_client(chroma_url)
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas", "embeddings"])
        dump[collection.name] = sorted(
            (i, d, repr(sorted((m or {}).items())), repr(list(e)))
            for i, d, m, e in zip(
                got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
            )
        )
    return dump


_PUBLIC_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"


def _tables(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return len(conn.execute(_PUBLIC_TABLES).fetchall())


def _target_holds(dsn: str, chroma_url: str, text: str) -> list[str]:
    """Where ``text`` appears in the target: PostgreSQL rows and Chroma records."""
    needle = text.encode()
    found = []
    with psycopg.connect(dsn) as conn:
        for (table,) in conn.execute(_PUBLIC_TABLES).fetchall():
            for row in conn.execute(f"SELECT * FROM {table}"):
                cells = [v if isinstance(v, bytes) else str(v).encode() for v in row]
                if any(needle in cell for cell in cells):
                    found.append(table)
    for collection in http_client(chroma_url).list_collections():
        got = collection.get(include=["documents", "metadatas"])
        if text in repr(got["documents"]) or text in repr(got["metadatas"]):
            found.append(collection.name)
    return found


async def test_a_migrated_deployment_serves_the_same_threads_memories_and_history(
    embedded: Embedded, postgres_db: str, tmp_path: Path, tiny_chat_model: Any
) -> None:
    source = embedded.copy(tmp_path / "data")
    data = str(source.checkpoints.parent)
    with ChromaServer(tmp_path / "chroma").running() as chroma:
        target = ["--to-checkpointer-url", postgres_db, "--to-chroma-url", chroma.url]
        done = await asyncio.to_thread(_steadychat, "migrate", "--from", data, *target)
        assert done.returncode == 0, done.stderr
        assert "threads: 4 (3 live, 1 deleted)" in done.stdout
        assert f"checkpoints: {embedded.checkpoints} (pending writes: 2)" in done.stdout
        assert f"{DEFAULT_COLLECTION} {embedded.vectors}" in done.stdout
        assert "copied: 4 thread(s)" in done.stdout
        assert "verified: the target holds every thread, checkpoint and vector" in done.stdout
        assert "threads: 4/4 copied" in done.stderr  # progress
        # The stored embeddings came, not new ones: the planted vector is there as it was.
        mine = _vectors(local_client(source.chroma))
        theirs = _vectors(http_client(chroma.url))
        assert mine.keys() == theirs.keys() and PLANTED in theirs
        for doc_id, vector in mine.items():
            assert np.allclose(theirs[doc_id], vector, atol=1e-6), doc_id
        assert int(np.argmax(theirs[PLANTED])) == 7 and np.count_nonzero(theirs[PLANTED]) == 1

        # A second run finds everything in place and writes nothing.
        before = await asyncio.to_thread(_dump_target, postgres_db, chroma.url)
        again = await migrate(source, checkpointer_url=postgres_db, chroma_url=chroma.url)
        assert (again.threads_copied, again.threads_unchanged, again.vectors_copied) == (0, 4, 0)
        assert again.verified
        assert await asyncio.to_thread(_dump_target, postgres_db, chroma.url) == before

        worker = _settings(tmp_path / "worker", checkpointer_url=postgres_db, chroma_url=chroma.url)
        async with _serving(worker, tiny_chat_model) as (service, clients):
            # Same threads, titles, metadata, turns and dates for each tenant; same windows,
            # slots and summaries; the same history, checkpoint by checkpoint.
            assert await _picture(clients) == embedded.picture
            alpha = clients["alpha"]
            # The pending writes of the stopped run came too.
            latest = await service.checkpointer.aget_tuple(
                {"configurable": {"thread_id": embedded.bob}}
            )
            assert latest is not None and sorted(latest.pending_writes, key=repr) == sorted(
                embedded.pending, key=repr
            )
            # The vector memory answers a search with the same documents.
            assert await asyncio.to_thread(_search, service.memory, embedded.ada) == (
                embedded.recall
            )

            # The deleted thread stays deleted: not listed, not readable, not writable, its
            # id not reusable, nothing of its text anywhere in the target.
            assert (await alpha.get(f"/threads/{embedded.gone}")).status_code == 404
            late = await alpha.post(f"/threads/{embedded.gone}/messages", json={"content": "hi"})
            assert late.status_code == 404
            assert await service.registry.is_deleted(embedded.gone)
            memory = ChromaMemory.from_url(chroma.url, load_embedder("hash"))
            assert memory.count(thread_id=embedded.gone) == 0
            with pytest.raises(ThreadDeletedError):
                memory.add(
                    [
                        MemoryRecord(
                            id=f"{embedded.gone}:9:user",
                            text="a late write",
                            thread_id=embedded.gone,
                            user_id="u",
                            turn=9,
                            role="user",
                        )
                    ]
                )
            assert (
                await asyncio.to_thread(_target_holds, postgres_db, chroma.url, embedded.canary)
                == []
            )

            # A new turn on a migrated thread continues it and recalls what was said before.
            reply = await _ok(
                await alpha.post(
                    f"/threads/{embedded.ada}/messages",
                    json={"content": "Where is the spare key hidden?"},
                )
            )
            assert reply["turn"] == 6
            recalled = reply["context_account"]["recalled"]
            assert any("flowerpot" in snippet["text"] for snippet in recalled), recalled
            history = await _ok(await alpha.get(f"/threads/{embedded.ada}/history?limit=1000"))
            old = embedded.picture["alpha"]["history"][embedded.ada]
            assert history["data"][1:] == old and history["data"][0]["turn"] == 6

        # Now the target has moved on: migrating again is a conflict and writes nothing.
        moved_on = await asyncio.to_thread(_dump_target, postgres_db, chroma.url)
        done = await asyncio.to_thread(_steadychat, "migrate", "--from", data, *target)
        assert done.returncode == 3, done.stderr
        message = [line for line in done.stderr.splitlines() if "steadychat migrate:" in line]
        assert len(message) == 1 and f"thread {embedded.ada}" in message[0]
        assert "--overwrite" in message[0] and "nothing was written" in message[0]
        assert await asyncio.to_thread(_dump_target, postgres_db, chroma.url) == moved_on

        # --overwrite puts the source's version back, the new turn's memories removed.
        forced = await migrate(
            source, checkpointer_url=postgres_db, chroma_url=chroma.url, overwrite=True
        )
        assert (forced.threads_overwritten, forced.threads_unchanged) == (1, 3)
        assert forced.vectors_removed == 2 and forced.verified
        assert await asyncio.to_thread(_dump_target, postgres_db, chroma.url) != moved_on
        async with _serving(worker, tiny_chat_model) as (service, clients):
            assert await _picture(clients) == embedded.picture
            assert await asyncio.to_thread(_search, service.memory, embedded.ada) == (
                embedded.recall
            )


async def test_a_dry_run_writes_nothing_and_an_interrupted_run_resumes(
    embedded: Embedded, postgres_dsn: str, tmp_path: Path
) -> None:
    source = embedded.copy(tmp_path / "data")
    dsn = create_database(postgres_dsn)
    with ChromaServer(tmp_path / "chroma").running() as chroma:
        dry = await migrate(source, checkpointer_url=dsn, chroma_url=chroma.url, dry_run=True)
        assert (dry.threads, dry.deleted_threads) == (4, 1)
        assert (dry.checkpoints, dry.pending_writes) == (embedded.checkpoints, 2)
        assert dry.vectors[DEFAULT_COLLECTION] == embedded.vectors
        assert dry.summary()[-2:] == [
            "target: PostgreSQL and Chroma answer",
            "dry run: nothing was written",
        ]
        assert _tables(dsn) == 0
        assert http_client(chroma.url).list_collections() == []

        # A run that stops after its second thread (here: interrupted from its progress).
        class Interrupted(Exception):
            pass

        def stop_after_two(line: str) -> None:
            if line == "threads: 2/4 copied":
                raise Interrupted

        with pytest.raises(Interrupted):
            await migrate(
                source, checkpointer_url=dsn, chroma_url=chroma.url, progress=stop_after_two
            )
        # Another stopped in the middle of a thread: its oldest checkpoint is there.
        async with (
            open_checkpointer(f"sqlite:///{source.checkpoints}") as mine,
            open_checkpointer(dsn) as theirs,
        ):
            history = [t async for t in mine.alist({"configurable": {"thread_id": embedded.ada}})]
            oldest = history[-1]
            if (await theirs.aget_tuple(oldest.config)) is None:
                await theirs.aput(
                    {"configurable": {"thread_id": embedded.ada, "checkpoint_ns": ""}},
                    oldest.checkpoint,
                    oldest.metadata,
                    dict(oldest.checkpoint["channel_versions"]),
                )
        resumed = await migrate(source, checkpointer_url=dsn, chroma_url=chroma.url, batch_size=3)
        assert (resumed.threads_copied, resumed.threads_unchanged) == (2, 2)
        assert resumed.vectors_copied == sum(resumed.vectors.values()) and resumed.verified
        async with open_checkpointer(dsn) as theirs:
            copied = [t async for t in theirs.alist({"configurable": {"thread_id": embedded.ada}})]
        assert [t.checkpoint["id"] for t in copied] == [t.checkpoint["id"] for t in history]


async def test_a_source_in_use_or_an_unreachable_chroma_is_refused_before_any_write(
    embedded: Embedded, postgres_db: str, tmp_path: Path
) -> None:
    source = embedded.copy(tmp_path / "data")
    settings = Settings(data_dir=source.checkpoints.parent, embedder="hash")
    async with open_service(settings, chat_model=ScriptedChatModel()):
        with pytest.raises(SourceError, match="in use by another process"):
            await migrate(source, checkpointer_url=postgres_db, chroma_url="http://127.0.0.1:9")
    with pytest.raises(
        TargetError, match=r"cannot reach the Chroma server at http://127\.0\.0\.1:9"
    ):
        await migrate(source, checkpointer_url=postgres_db, chroma_url="http://127.0.0.1:9")
    assert _tables(postgres_db) == 0
