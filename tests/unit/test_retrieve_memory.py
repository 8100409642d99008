"""retrieve_memory node: query, thread and user filters, window exclusion, failures."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.memory import MemoryHit, MemoryRecord
from nodes.retrieve_memory import make_retrieve_memory, window_start_turn
from nodes.state import ChatState
from store.embeddings import CharFrequencyEmbedder
from store.vector_memory import ChromaMemory


def rec(thread: str, turn: int, text: str, *, role: str = "user", user: str = "u1") -> MemoryRecord:
    return MemoryRecord(
        id=f"{thread}:{turn}:{role}",
        text=text,
        thread_id=thread,
        user_id=user,
        turn=turn,
        role=role,
        timestamp=f"2025-01-{turn:02d}T12:00:00+00:00",
    )


def human(text: str, turn: int) -> HumanMessage:
    return HumanMessage(text, additional_kwargs={"turn": turn, "timestamp": "2025-02-01T00:00:00"})


def ai(text: str, turn: int) -> AIMessage:
    return AIMessage(text, additional_kwargs={"turn": turn})


def config(thread: str | None = "t1") -> Any:
    return {"configurable": {"thread_id": thread}} if thread else {"configurable": {}}


@pytest.fixture
def memory() -> ChromaMemory:
    store = ChromaMemory.ephemeral(CharFrequencyEmbedder())
    store.add(
        [
            rec("t1", 1, "My cat Miso hates the vacuum cleaner."),
            rec("t1", 1, "Noted: Miso dislikes the vacuum.", role="assistant"),
            rec("t1", 2, "I moved to Rotterdam last spring."),
            rec("t1", 3, "Please remind me to renew my passport."),
            rec("t1", 8, "Miso the cat knocked over a plant today."),
            rec("t2", 1, "My other thread mentions Miso the cat too."),
            rec("x9", 1, "Miso the cat belongs to someone else.", user="u2"),
        ]
    )
    return store


def test_recalls_relevant_turns_of_this_thread_with_turn_date_and_score(
    memory: ChromaMemory,
) -> None:
    node = make_retrieve_memory(memory)
    state: ChatState = {"messages": [human("What does Miso the cat hate?", 9)], "turn": 9}
    out = node(state, Runtime(context=Context(memory_neighbours=0, top_k=2)), config())
    recalled = out["recalled"]
    assert len(recalled) == 2
    assert {s["thread_id"] for s in recalled} == {"t1"}
    assert any("vacuum" in s["text"] for s in recalled)
    first = recalled[0]
    assert first["turn"] in (1, 8)
    assert first["timestamp"] is not None and first["timestamp"].startswith("2025-01-")
    assert 0.0 < first["score"] < 1.0
    assert recalled[0]["score"] >= recalled[1]["score"]


def test_turns_in_the_verbatim_window_are_not_recalled(memory: ChromaMemory) -> None:
    node = make_retrieve_memory(memory)
    messages = [human("Miso knocked a plant over", 8), ai("Oh no!", 8), human("Miso again?", 9)]
    assert window_start_turn(messages) == 8
    out = node(
        {"messages": messages, "turn": 9},
        Runtime(context=Context(memory_neighbours=0, top_k=10)),
        config(),
    )
    assert out["recalled"]
    assert all(s["turn"] < 8 for s in out["recalled"])


def test_cross_thread_memory_recalls_the_users_other_threads_only(memory: ChromaMemory) -> None:
    node = make_retrieve_memory(memory)
    messages = [human("Miso knocked a plant over", 8), human("Tell me about Miso the cat", 9)]
    ctx = Context(memory_neighbours=0, top_k=10, cross_thread_memory=True, user_id="u1")
    out = node({"messages": messages, "turn": 9}, Runtime(context=ctx), config())
    threads = {s["thread_id"] for s in out["recalled"]}
    assert threads == {"t1", "t2"}
    assert all(not (s["thread_id"] == "t1" and s["turn"] >= 8) for s in out["recalled"])


def test_without_cross_thread_memory_other_threads_stay_private(memory: ChromaMemory) -> None:
    node = make_retrieve_memory(memory)
    out = node(
        {"messages": [human("Miso the cat", 5)], "turn": 5},
        Runtime(context=Context(memory_neighbours=0, top_k=10)),
        config("t2"),
    )
    assert [s["thread_id"] for s in out["recalled"]] == ["t2"]


def test_score_floor_and_top_k_come_from_the_context(memory: ChromaMemory) -> None:
    node = make_retrieve_memory(memory)
    state: ChatState = {"messages": [human("passport renewal reminder", 9)], "turn": 9}
    everything = node(state, Runtime(context=Context(memory_neighbours=0, top_k=10)), config())[
        "recalled"
    ]
    assert len(everything) >= 3
    floor = everything[0]["score"] - 1e-6
    out = node(
        state, Runtime(context=Context(memory_neighbours=0, top_k=10, score_floor=floor)), config()
    )
    assert [s["text"] for s in out["recalled"]] == ["Please remind me to renew my passport."]
    assert node(state, Runtime(context=Context(memory_neighbours=0, top_k=0)), config()) == {
        "recalled": []
    }


def test_no_thread_no_text_or_no_context_recalls_nothing_safely(memory: ChromaMemory) -> None:
    node = make_retrieve_memory(memory)
    state: ChatState = {"messages": [human("Miso", 9)], "turn": 9}
    assert node(state, Runtime(context=None), config(None)) == {"recalled": []}
    assert node({"messages": [], "turn": 0}, Runtime(context=None), config()) == {"recalled": []}
    # runtime.context None means defaults: this thread, top k, each with one neighbour at most.
    assert 4 <= len(node(state, Runtime(context=None), config())["recalled"]) <= 8


class BrokenMemory:
    def search(self, *args: Any, **kwargs: Any) -> list[MemoryHit]:
        raise ConnectionError("chroma server unreachable")

    def add(self, records: Any) -> None: ...

    def delete_thread(self, thread_id: str) -> int:
        return 0

    def clear_thread(self, thread_id: str) -> int:
        return 0

    def count(self, *, thread_id: str | None = None) -> int:
        return 0


def test_a_memory_failure_is_logged_and_the_turn_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = make_retrieve_memory(BrokenMemory())
    with caplog.at_level(logging.ERROR, logger="nodes.retrieve_memory"):
        out = node({"messages": [human("hello", 1)], "turn": 1}, Runtime(context=None), config())
    assert out == {"recalled": []}
    assert "memory search failed" in caplog.text
    assert "unreachable" in caplog.text


def test_langgraph_injects_thread_id_and_context_into_the_node(memory: ChromaMemory) -> None:
    builder = StateGraph(ChatState, context_schema=Context)
    builder.add_node("retrieve_memory", make_retrieve_memory(memory))
    builder.add_edge(START, "retrieve_memory")
    builder.add_edge("retrieve_memory", END)
    graph = builder.compile()
    result = graph.invoke(
        {"messages": [human("Where did I move to?", 9)], "turn": 9},
        config={"configurable": {"thread_id": "t1"}},
        context=Context(memory_neighbours=0, top_k=1),
    )
    assert [s["text"] for s in result["recalled"]] == ["I moved to Rotterdam last spring."]


def test_neighbours_bring_the_reply_to_a_recalled_question() -> None:
    memory = ChromaMemory.ephemeral(CharFrequencyEmbedder())
    memory.add(
        [
            MemoryRecord(
                id="t1:1:user",
                text="Where did I park the red bicycle?",
                thread_id="t1",
                user_id="u",
                turn=1,
                role="user",
            ),
            MemoryRecord(
                id="t1:1:assistant",
                text="Behind the library, next to the fountain.",
                thread_id="t1",
                user_id="u",
                turn=1,
                role="assistant",
            ),
        ]
    )
    node = make_retrieve_memory(memory)
    state = {
        "messages": [HumanMessage("the red bicycle parking spot?", additional_kwargs={"turn": 5})],
        "turn": 5,
    }
    with_neighbours = node(state, Runtime(context=Context(top_k=1)), config())["recalled"]
    texts = [s["text"] for s in with_neighbours]
    assert any("fountain" in t for t in texts)


def test_cross_thread_recall_keeps_top_k_memories_and_their_neighbours() -> None:
    # top_k counts recalled memories, not their neighbours, across threads as within one.
    memory = ChromaMemory.ephemeral(CharFrequencyEmbedder())
    records = []
    for thread in ("a", "b"):
        for turn in (1, 2):
            records.append(rec(thread, turn, f"the red bicycle story {thread}{turn}"))
            records.append(rec(thread, turn, f"reply {thread}{turn} ok", role="assistant"))
    memory.add(records)
    node = make_retrieve_memory(memory)
    state = {"messages": [human("the red bicycle story", 5)], "turn": 5}
    for cross in (False, True):
        ctx = Context(top_k=2, memory_neighbours=1, cross_thread_memory=cross, user_id="u1")
        recalled = node(state, Runtime(context=ctx), config("a" if not cross else "c"))["recalled"]
        users = [s for s in recalled if s["role"] == "user"]
        replies = [s for s in recalled if s["role"] == "assistant"]
        assert len(users) == 2, cross
        assert {s["text"].split()[1] for s in replies} == {s["text"].split()[-1] for s in users}, (
            cross
        )


def _texts(out: dict[str, Any]) -> list[str]:
    return [s["text"] for s in out["recalled"]]


def test_diversity_recalls_something_new_instead_of_the_same_thing_again() -> None:
    store = ChromaMemory.ephemeral(CharFrequencyEmbedder())
    store.add(
        [
            rec("t1", 1, "Miso the cat hates the loud vacuum cleaner in the hall."),
            rec("t1", 2, "Miso the cat still hates that loud vacuum cleaner, I said."),
            rec("t1", 3, "Miso the cat sleeps on the warm radiator all afternoon."),
            rec("t1", 4, "I renewed my passport at the town hall."),
        ]
    )
    node = make_retrieve_memory(store)
    state: ChatState = {"messages": [human("Tell me about Miso the cat and the vacuum.", 9)]}
    plain = _texts(
        node(
            state,
            Runtime(context=Context(memory_neighbours=0, top_k=2, memory_diversity=0.0)),
            config(),
        )
    )
    assert all("vacuum" in t for t in plain)
    diverse = _texts(
        node(
            state,
            Runtime(context=Context(memory_neighbours=0, top_k=2, memory_diversity=0.5)),
            config(),
        )
    )
    assert len(diverse) == 2 and any("radiator" in t for t in diverse)
