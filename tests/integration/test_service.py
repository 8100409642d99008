"""ChatService over the real graph, SQLite and Chroma, with the scripted model."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import PrivateAttr

from graph.compose import open_service
from graph.errors import (
    ContextLengthError,
    ServiceError,
    ThreadBusyError,
    ThreadNotFoundError,
    TurnFailedError,
)
from graph.service import ChatService
from graph.settings import Settings
from tests.fakes import ScriptedChatModel


@pytest.fixture
async def model() -> ScriptedChatModel:
    return ScriptedChatModel(default="Noted, thank you.")


@pytest.fixture
async def service(tmp_path: Path, model: ScriptedChatModel) -> AsyncIterator[ChatService]:
    settings = Settings(data_dir=tmp_path, embedder="hash", context_window=2048, max_new_tokens=128)
    async with open_service(settings, chat_model=model) as svc:
        yield svc


async def test_threads_and_users_are_isolated(service: ChatService, model: ScriptedChatModel):
    await service.create_thread(thread_id="a", owner="alice")
    await service.create_thread(thread_id="b", owner="bob")
    await service.run_turn(
        "a", "My name is Alice and my email is alice@example.com.", owner="alice"
    )
    await service.run_turn("b", "My name is Bob.", owner="bob")
    await service.run_turn("b", "What is my email address?", owner="bob")
    prompt = " ".join(str(m.content) for m in model.history[-1]["messages"])
    assert "alice@example.com" not in prompt and "Alice" not in prompt
    assert (await service.get_thread("b")).slots["name"]["value"] == "Bob"
    with pytest.raises(ThreadNotFoundError):
        await service.get_thread("a", owner="bob")
    threads, total = await service.list_threads(owner="alice")
    assert total == 1 and threads[0].thread_id == "a"


async def test_recall_finds_old_turns_of_the_same_thread(
    service: ChatService, model: ScriptedChatModel
):
    await service.create_thread(thread_id="t")
    await service.run_turn("t", "The spare key is hidden under the blue flowerpot.")
    for i in range(6):
        await service.run_turn("t", f"Unrelated remark number {i} about the weather today.")
    ctx = service.context(window_tokens=40, min_window_turns=1)
    result = await service.run_turn("t", "Where is the spare key hidden?", context=ctx)
    recalled = result.context_account["recalled"]
    assert any("flowerpot" in s["text"] for s in recalled)
    prompt = "\n".join(str(m.content) for m in model.history[-1]["messages"])
    assert "flowerpot" in prompt


async def test_delete_cascades_and_refuses_late_writes(service: ChatService):
    await service.create_thread(thread_id="keep")
    await service.create_thread(thread_id="gone")
    await service.run_turn("keep", "My order number is #A1001.")
    await service.run_turn("gone", "My order number is #B2002.")
    assert service.memory is not None and service.memory.count(thread_id="gone") > 0
    await service.delete_thread("gone")
    assert service.memory.count(thread_id="gone") == 0
    assert (await service.checkpointer.aget_tuple({"configurable": {"thread_id": "gone"}})) is None
    with pytest.raises(ThreadNotFoundError):
        await service.run_turn("gone", "hello again")
    with pytest.raises(ThreadNotFoundError):
        await service.get_thread("gone")
    with pytest.raises(ServiceError):
        await service.create_thread(thread_id="gone")
    kept = await service.get_thread("keep")
    assert kept.slots["order_id"]["value"].endswith("A1001")
    assert service.memory.count(thread_id="keep") > 0


async def test_failed_turn_saves_nothing(service: ChatService, model: ScriptedChatModel):
    await service.create_thread(thread_id="t")
    await service.run_turn("t", "first message")

    def broken(messages: list[BaseMessage]) -> str:
        raise RuntimeError("model crashed")

    model.responder = broken
    with pytest.raises(TurnFailedError):
        await service.run_turn("t", "My name is Mallory.")
    view = await service.get_thread("t")
    assert [m.content for m in view.window] == ["first message", "Noted, thank you."]
    assert "name" not in view.slots
    model.responder = None
    result = await service.run_turn("t", "second message")
    assert result.turn == 2


async def test_closing_the_stream_cancels_the_turn(service: ChatService, model: ScriptedChatModel):
    await service.create_thread(thread_id="t")
    await service.run_turn("t", "first")
    model.enqueue("a long reply " * 50)
    stream = service.stream_turn("t", "tell me a story")
    async for event in stream:
        assert event.type == "token"
        break
    await stream.aclose()
    view = await service.get_thread("t")
    assert len(view.window) == 2
    assert (await service.run_turn("t", "next")).turn == 2


async def test_turns_on_one_thread_are_serialised(service: ChatService):
    await service.create_thread(thread_id="t")
    results = await asyncio.gather(*(service.run_turn("t", f"message {i}") for i in range(5)))
    assert sorted(r.turn for r in results) == [1, 2, 3, 4, 5]
    view = await service.get_thread("t")
    assert [m.turn for m in view.window if m.role == "user"] == [1, 2, 3, 4, 5]


async def test_busy_thread_rejects_when_asked_not_to_wait(
    service: ChatService, model: ScriptedChatModel
):
    await service.create_thread(thread_id="t")
    model.enqueue("word " * 400)
    stream = service.stream_turn("t", "long one")
    first = await stream.__anext__()
    assert first.type == "token"
    with pytest.raises(ThreadBusyError):
        await service.run_turn("t", "impatient", wait=False)
    async for _ in stream:
        pass


async def test_slot_correction_keeps_history(service: ChatService):
    await service.create_thread(thread_id="t")
    await service.run_turn("t", "My email is old@example.com")
    slots = await service.update_slots("t", {"email": "new@example.com", "name": "Ada"})
    assert slots["email"]["value"] == "new@example.com"
    assert slots["email"]["history"][-1]["value"] == "old@example.com"
    slots = await service.update_slots("t", {"name": None})
    assert slots["name"]["value"] is None
    view = await service.get_thread("t")
    assert view.slots["email"]["source"] == "user"


async def test_reset_clears_but_keeps_the_thread(service: ChatService):
    await service.create_thread(thread_id="t", title="Support")
    await service.run_turn("t", "My name is Ada.")
    assert service.memory is not None and service.memory.count(thread_id="t") > 0
    info = await service.reset_thread("t")
    assert info.title == "Support" and info.turns == 0
    view = await service.get_thread("t")
    assert view.window == [] and view.slots == {}
    assert service.memory.count(thread_id="t") == 0
    assert (await service.run_turn("t", "hello")).turn == 1
    # The reset thread is remembered again.
    assert service.memory.count(thread_id="t") > 0


async def test_message_that_cannot_fit_is_a_context_error(service: ChatService):
    await service.create_thread(thread_id="t")
    with pytest.raises(ContextLengthError):
        await service.run_turn("t", "word " * 5000)
    assert (await service.get_thread("t")).window == []


@pytest.mark.parametrize("bad", ["", " ", "\n", "a\x00b", "x" * 129])
async def test_impossible_thread_ids_are_not_found_or_refused(service: ChatService, bad: str):
    with pytest.raises(ThreadNotFoundError):
        await service.get_thread(bad)
    with pytest.raises(ThreadNotFoundError):
        await service.run_turn(bad, "hello")
    with pytest.raises(ServiceError):
        await service.ensure_thread(bad)
    if bad:  # an empty id means "generate one"
        with pytest.raises(ServiceError):
            await service.create_thread(thread_id=bad)


class _GatedModel(ScriptedChatModel):
    """Holds every reply until ``gate`` is set, so that a turn keeps its thread busy."""

    _gate: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def gate(self) -> threading.Event:
        return self._gate

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        self._gate.wait(10)
        yield from super()._stream(*args, **kwargs)


async def test_a_queued_turn_closed_before_its_turn_never_runs(tmp_path: Path) -> None:
    # A client that gives up while its turn waits behind another must not get the model run
    # (prompt and all) once the thread is free.
    model = _GatedModel()
    settings = Settings(data_dir=tmp_path, embedder="hash", context_window=2048, max_new_tokens=128)
    async with open_service(settings, chat_model=model) as service:
        await service.create_thread(thread_id="t")
        running = asyncio.create_task(service.run_turn("t", "first message"))
        await asyncio.sleep(0.2)
        queued = service.stream_turn("t", "the queued message")
        waiting = asyncio.create_task(anext(queued))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        waiting.cancel()
        model.gate.set()
        assert (await running).turn == 1
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        prompts = [str(m.content) for call in model.history for m in call["messages"]]
        assert not any("the queued message" in p for p in prompts)
        window = (await service.get_thread("t")).window
        assert [m.content for m in window if m.role == "user"] == ["first message"]
        assert (await service.run_turn("t", "next")).turn == 2


async def test_slot_correction_replaces_the_remembered_fact(service: ChatService):
    # The fact a turn stored ("email: old@...") stayed in vector memory after a correction,
    # so recall could keep offering the old value next to the corrected slot.
    await service.create_thread(thread_id="t")
    await service.run_turn("t", "My email is old@example.com")
    assert service.memory is not None

    def fact() -> str:
        # Read by id: search would fold the fact into the near-identical user turn. Writes
        # land after the turn: wait for the thread's before reading the collection directly.
        service.memory.wait("t")  # type: ignore[union-attr]
        stored = service.memory._collection.get(ids=["t:fact:email"])  # type: ignore[union-attr]
        return " ".join(stored["documents"] or [])

    assert "old@example.com" in fact()
    await service.update_slots("t", {"email": "new@example.com"})
    assert "new@example.com" in fact() and "old@example.com" not in fact()
    await service.run_turn("t", "Thanks.")
    assert "new@example.com" in fact() and "old@example.com" not in fact()
    # Clearing the slot forgets its fact too.
    await service.update_slots("t", {"email": None})
    assert fact() == ""
    assert service.memory.count(thread_id="t") > 0  # the turns themselves stay


async def test_slot_corrections_keep_checkpoints_bounded(tmp_path: Path) -> None:
    # Every correction writes a checkpoint; only turns used to prune, so a thread corrected
    # often (a CRM syncing its fields) grew without bound.
    settings = Settings(data_dir=tmp_path, embedder="hash", keep_checkpoints=3)
    async with open_service(settings, chat_model=ScriptedChatModel()) as service:
        await service.create_thread(thread_id="t")
        await service.run_turn("t", "My name is Ada.")
        for i in range(8):
            await service.update_slots("t", {"name": f"Ada {i}"})
        assert len(await service.history("t", limit=100)) <= 3
        assert (await service.get_thread("t")).slots["name"]["value"] == "Ada 7"


async def test_a_deletion_elsewhere_seen_only_after_the_last_token_saves_nothing(tmp_path: Path):
    loop = asyncio.get_running_loop()
    parts: dict[str, ChatService] = {}

    def deleted_elsewhere_meanwhile(messages: list[BaseMessage]) -> str:
        # Another process tombstones the thread while this reply is generated; this process
        # learns it only from the registry, when the turn records itself.
        registry = parts["service"].registry
        asyncio.run_coroutine_threadsafe(registry.mark_deleted("t"), loop).result(10)
        return "A reply nobody will read."

    model = ScriptedChatModel(responder=deleted_elsewhere_meanwhile).enqueue("First reply.")
    settings = Settings(data_dir=tmp_path, embedder="hash", context_window=2048, max_new_tokens=128)
    async with open_service(settings, chat_model=model) as service:
        parts["service"] = service
        await service.create_thread(thread_id="t")
        await service.run_turn("t", "Hello there.")
        # For the client the thread is gone, not a failed turn, and the turn left nothing.
        with pytest.raises(ThreadNotFoundError):
            await service.run_turn("t", "And a second question?")
        values = (await service.graph.aget_state({"configurable": {"thread_id": "t"}})).values
        assert values["turn"] == 1
        assert "And a second question?" not in repr(values["messages"])
