"""The memory write happens after the turn's stream closed; order and failures are kept."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from graph.compose import memory_from_settings, open_service
from graph.settings import Settings
from nodes.memory import MemoryHit, MemoryRecord
from store.embeddings import load_embedder
from tests.fakes import ScriptedChatModel


class WatchedMemory:
    """A real Chroma store whose writes can be held back or made to fail, with a log."""

    def __init__(self, settings: Settings) -> None:
        self.inner = memory_from_settings(settings, load_embedder("hash"))
        self.gate = threading.Event()
        self.gate.set()
        self.failures = 0
        self.events: list[str] = []

    def add(self, records: Sequence[MemoryRecord]) -> None:
        assert self.gate.wait(30)
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("the vector store is unreachable")
        self.inner.add(records)
        self.events.append(f"add t{records[0].turn}")

    def search(self, query: str, **kwargs: Any) -> list[MemoryHit]:
        self.events.append("search")
        return self.inner.search(query, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, embedder="hash", checkpointer_url="memory")


async def test_the_turn_is_done_before_its_memory_is_written(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    memory = WatchedMemory(settings)
    async with open_service(
        settings, chat_model=ScriptedChatModel(default="Noted."), memory=memory
    ) as service:
        await service.create_thread(thread_id="t")
        memory.gate.clear()  # the store answers nothing until the gate opens
        result = await service.run_turn("t", "My locker code is 4471.")
        assert result.reply == "Noted."
        assert memory.inner.count(thread_id="t") == 0  # done, and nothing written yet
        memory.gate.set()
        assert service.memory is not None
        assert service.memory.count(thread_id="t") > 0  # reads wait for the write


async def test_the_next_turn_on_the_thread_recalls_after_the_write(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    memory = WatchedMemory(settings)
    async with open_service(
        settings, chat_model=ScriptedChatModel(default="Noted."), memory=memory
    ) as service:
        await service.create_thread(thread_id="t")
        memory.gate.clear()
        await service.run_turn("t", "My locker code is 4471.")
        threading.Timer(0.3, memory.gate.set).start()
        await service.run_turn("t", "What is my locker code?")
    # The second turn's retrieval ran only once the first turn's records were in the store.
    assert memory.events.index("add t1") < memory.events.index("search", 1)


async def test_a_failed_write_is_retried_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    memory = WatchedMemory(settings)
    async with open_service(
        settings, chat_model=ScriptedChatModel(default="Noted."), memory=memory
    ) as service:
        await service.create_thread(thread_id="t")
        memory.failures = 2  # two failures, then the store is back
        with caplog.at_level(logging.WARNING, logger="graph.memory_writes"):
            await service.run_turn("t", "My locker code is 4471.")
            assert service.memory is not None
            assert service.memory.count(thread_id="t") > 0
        assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


async def test_a_write_that_keeps_failing_is_kept_for_the_next_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    memory = WatchedMemory(settings)
    async with open_service(
        settings, chat_model=ScriptedChatModel(default="Noted."), memory=memory
    ) as service:
        await service.create_thread(thread_id="t")
        memory.failures = 3  # every try of the write fails
        with caplog.at_level(logging.ERROR, logger="graph.memory_writes"):
            await service.run_turn("t", "My locker code is 4471.")
            assert service.memory is not None
            service.memory.wait("t")  # waits for the tries; the retry before reading works
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "thread t after 3 tries" in errors[0]
        assert memory.inner.count(thread_id="t") > 0
