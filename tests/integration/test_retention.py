"""Retention: idle threads swept the way a delete goes, and a cap on a thread's memories."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from api.cli import main
from api.maintenance import run_sweep
from graph.compose import open_service
from graph.errors import ThreadNotFoundError
from graph.settings import Settings
from nodes.memory import MemoryRecord
from store.embeddings import CharFrequencyEmbedder
from store.vector_memory import ChromaMemory
from tests.fakes import ScriptedChatModel


async def test_idle_threads_are_swept_like_a_delete(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        for thread in ("old", "new"):
            await service.create_thread(thread_id=thread)
            await service.run_turn(thread, f"My name is Ada, this is {thread}.")
        assert service.memory is not None and service.memory.count(thread_id="old") > 0
        newer = await service.registry.get("new")
        assert newer is not None
        # As seen at the moment "new" was last active, with no idle time allowed.
        deleted = await service.sweep_idle(timedelta(0), now=newer.updated_at)
        assert deleted == ["old"]
        with pytest.raises(ThreadNotFoundError):
            await service.get_thread("old")
        assert service.memory.count(thread_id="old") == 0
        assert [
            c async for c in service.checkpointer.alist({"configurable": {"thread_id": "old"}})
        ] == []
        assert (await service.get_thread("new")).window  # the active thread is untouched
        assert service.memory.count(thread_id="new") > 0
        # Gone for good, as after a delete: the id takes no late write.
        with pytest.raises(ThreadNotFoundError):
            await service.run_turn("old", "hello again")


async def test_the_running_service_sweeps_periodically(tmp_path: Path) -> None:
    settings = Settings(
        checkpointer_url="memory",
        data_dir=tmp_path,
        embedder="hash",
        retention_idle_days=0.5 / 86400,  # half a second
        retention_sweep_seconds=0.1,
    )
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        await service.create_thread(thread_id="idle")
        for _ in range(50):
            if await service.registry.get("idle") is None:
                break
            await asyncio.sleep(0.1)
        assert await service.registry.get("idle") is None
        assert await service.registry.is_deleted("idle")


async def test_the_sweep_command(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        await service.create_thread(thread_id="stale")
        await service.run_turn("stale", "hello")
    await asyncio.sleep(0.2)
    # Nothing is that old yet with a generous age; all of it with a tiny one.
    assert await asyncio.to_thread(run_sweep, settings, days=30) == 0
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        assert await service.registry.get("stale") is not None
    assert await asyncio.to_thread(run_sweep, settings, days=0.1 / 86400) == 0
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        assert await service.registry.is_deleted("stale")
        assert service.memory is not None and service.memory.count(thread_id="stale") == 0
    assert main(["sweep"]) == 2  # no age given and none set


def _record(thread: str, turn: int, role: str, text: str) -> MemoryRecord:
    return MemoryRecord(
        id=f"{thread}:{turn}:{role}", text=text, thread_id=thread, user_id="u", turn=turn, role=role
    )


def test_a_thread_keeps_at_most_its_cap_oldest_forgotten_first() -> None:
    memory = ChromaMemory.ephemeral(CharFrequencyEmbedder(), max_records_per_thread=4)
    memory.add([_record("other", 1, "user", "the other thread's walrus")])
    for turn in range(1, 4):
        memory.add(
            [
                _record("t", turn, "user", f"turn {turn} mentions giraffe{turn}"),
                _record("t", turn, "assistant", f"reply {turn} about giraffe{turn}"),
            ]
        )
        # Searching between writes builds the keyword index, which must learn of evictions.
        memory.search("giraffe1", thread_id="t", user_id=None, k=8)
    assert memory.count(thread_id="t") == 4
    assert memory.count(thread_id="other") == 1
    hits = memory.search("giraffe1", thread_id="t", user_id=None, k=8)
    assert all(h.record.turn >= 2 for h in hits) and hits
    with pytest.raises(ValueError, match="max_records_per_thread"):
        ChromaMemory.ephemeral(CharFrequencyEmbedder(), max_records_per_thread=0)
