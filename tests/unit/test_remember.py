"""remember node: records written per turn, idempotent retries, facts, failures."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from nodes.context import Context, with_cancel_event
from nodes.errors import ThreadDeletedError
from nodes.memory import MemoryHit, MemoryRecord
from nodes.remember import exchange_records, make_remember
from nodes.state import ChatState, Slot
from store.embeddings import CharFrequencyEmbedder
from store.vector_memory import ChromaMemory

STAMP = "2025-05-04T18:30:00+00:00"


def turn_state(turn: int, user: str, reply: str | None, **extra: Any) -> ChatState:
    messages: list[Any] = [
        HumanMessage("an earlier question", additional_kwargs={"turn": turn - 1}),
        AIMessage("an earlier answer", additional_kwargs={"turn": turn - 1}),
        HumanMessage(user, additional_kwargs={"turn": turn, "timestamp": STAMP}),
    ]
    if reply is not None:
        messages.append(AIMessage(reply, additional_kwargs={"turn": turn}))
    return {"messages": messages, "turn": turn, **extra}  # type: ignore[typeddict-item]


def slot(value: str | None, turn: int) -> Slot:
    return Slot(value=value, turn=turn, source="rule:email", evidence=value or "", history=[])


def config(thread: str | None = "t1") -> Any:
    return {"configurable": {"thread_id": thread}} if thread else {"configurable": {}}


@pytest.fixture
def memory() -> ChromaMemory:
    return ChromaMemory.ephemeral(CharFrequencyEmbedder())


def test_writes_user_turn_and_reply_as_separate_records(memory: ChromaMemory) -> None:
    node = make_remember(memory)
    state = turn_state(7, "I booked flights to Oslo for March.", "Great, Oslo in March it is!")
    assert node(state, Runtime(context=Context(user_id="ann")), config()) == {}
    assert memory.count(thread_id="t1") == 2
    hits = memory.search("Oslo flights", thread_id="t1", user_id="ann", k=5)
    by_role = {h.record.role: h.record for h in hits}
    assert set(by_role) == {"user", "assistant"}
    user = by_role["user"]
    assert (user.id, user.turn, user.timestamp) == ("t1:7:user", 7, STAMP)
    assert user.text == "I booked flights to Oslo for March."
    assert by_role["assistant"].id == "t1:7:assistant"
    # The reply has no timestamp of its own: it takes the user turn's.
    assert by_role["assistant"].timestamp == STAMP


def test_a_retried_turn_overwrites_instead_of_duplicating(memory: ChromaMemory) -> None:
    node = make_remember(memory)
    node(turn_state(3, "What is 2+2?", "five"), Runtime(context=None), config())
    node(turn_state(3, "What is 2+2?", "four"), Runtime(context=None), config())
    assert memory.count(thread_id="t1") == 2
    hits = memory.search("2+2", thread_id="t1", user_id=None, k=5)
    assert sorted(h.record.text for h in hits) == ["What is 2+2?", "four"]


def test_slots_set_this_turn_become_fact_records() -> None:
    state = turn_state(
        5,
        "my email is ann@example.com",
        "Thanks!",
        slots={"email": slot("ann@example.com", 5), "name": slot("Ann", 2)},
    )
    records = exchange_records(state, thread_id="t1", user_id="ann")
    facts = [r for r in records if r.role == "fact"]
    assert [(f.id, f.text, f.turn) for f in facts] == [
        ("t1:fact:email", "email: ann@example.com", 5)
    ]
    assert facts[0].extra == {"slot": "email", "source": "rule:email"}


def test_a_corrected_fact_replaces_the_old_one_in_memory(memory: ChromaMemory) -> None:
    node = make_remember(memory)
    node(
        turn_state(2, "mail me at a@old.example", "ok", slots={"email": slot("a@old.example", 2)}),
        Runtime(context=None),
        config(),
    )
    node(
        turn_state(6, "new address b@new.example", "ok", slots={"email": slot("b@new.example", 6)}),
        Runtime(context=None),
        config(),
    )
    facts = [
        h.record
        for h in memory.search("email address", thread_id="t1", user_id=None, k=10)
        if h.record.role == "fact"
    ]
    assert [(f.text, f.turn) for f in facts] == [("email: b@new.example", 6)]


def test_nothing_is_written_without_a_thread_or_a_user_turn(memory: ChromaMemory) -> None:
    node = make_remember(memory)
    assert node(turn_state(1, "hi", "hello"), Runtime(context=None), config(None)) == {}
    assert node({"messages": [], "turn": 0}, Runtime(context=None), config()) == {}
    assert memory.count() == 0


def test_an_empty_reply_is_not_remembered(memory: ChromaMemory) -> None:
    make_remember(memory)(turn_state(4, "are you there?", "  "), Runtime(context=None), config())
    records = memory.search("there", thread_id="t1", user_id=None, k=5)
    assert [h.record.role for h in records] == ["user"]


def test_writes_to_a_deleted_thread_are_refused(memory: ChromaMemory) -> None:
    node = make_remember(memory)
    node(turn_state(1, "first", "reply"), Runtime(context=None), config())
    memory.delete_thread("t1")
    with pytest.raises(ThreadDeletedError):
        node(turn_state(2, "late", "late reply"), Runtime(context=None), config())
    assert memory.count(thread_id="t1") == 0


class FailingMemory:
    def add(self, records: Any) -> None:
        raise OSError("disk full")

    def search(self, *args: Any, **kwargs: Any) -> list[MemoryHit]:
        return []

    def delete_thread(self, thread_id: str) -> int:
        return 0

    def clear_thread(self, thread_id: str) -> int:
        return 0

    def count(self, *, thread_id: str | None = None) -> int:
        return 0


def test_other_write_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    node = make_remember(FailingMemory())
    with caplog.at_level(logging.ERROR, logger="nodes.remember"):
        assert node(turn_state(3, "hello", "hi"), Runtime(context=None), config()) == {}
    assert "memory write failed" in caplog.text
    assert "disk full" in caplog.text


def test_runs_as_a_graph_node_with_the_users_id(memory: ChromaMemory) -> None:
    builder = StateGraph(ChatState, context_schema=Context)
    builder.add_node("remember", make_remember(memory))
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    graph = builder.compile()
    graph.invoke(
        turn_state(2, "I like jazz", "Noted."),
        config={"configurable": {"thread_id": "g1"}},
        context=Context(user_id="zoe"),
    )
    hits = memory.search("jazz", thread_id=None, user_id="zoe", k=5)
    assert {h.record.id for h in hits} == {"g1:2:user", "g1:2:assistant"}


def test_records_are_memory_records() -> None:
    records = exchange_records(turn_state(1, "x", "y"), thread_id="t", user_id="u")
    assert all(isinstance(r, MemoryRecord) for r in records)


def test_a_cancelled_turn_writes_nothing(memory: ChromaMemory) -> None:
    # The client went away: the service rolls the turn back, so memory must not keep it.
    import threading

    from nodes.errors import TurnCancelled

    cancel = threading.Event()
    cancel.set()
    node = make_remember(memory)
    state = turn_state(
        3, "my email is ann@example.com", "Noted.", slots={"email": slot("ann@example.com", 3)}
    )
    with pytest.raises(TurnCancelled):
        node(state, Runtime(context=Context(user_id="ann")), with_cancel_event(config(), cancel))
    assert memory.count(thread_id="t1") == 0


def test_relative_dates_are_remembered_with_the_day_they_meant() -> None:
    state = turn_state(
        4,
        "I went to the dentist yesterday and I fly to Oslo next week.",
        "Good luck with the trip tomorrow!",
    )
    user, reply = exchange_records(state, thread_id="t1", user_id="ann")
    # STAMP is Sunday 4 May 2025; the reply has no time of its own and takes the turn's.
    assert user.text == (
        "I went to the dentist yesterday (3 May 2025) and I fly to Oslo next week (5-11 May 2025)."
    )
    assert reply.text == "Good luck with the trip tomorrow (5 May 2025)!"


def test_questions_and_generic_replies_weigh_less_in_recall() -> None:
    from nodes.remember import LOW_INFORMATION_WEIGHT, information_weight

    low = LOW_INFORMATION_WEIGHT
    assert information_weight("When did I go to the dentist?") == low
    assert information_weight("上周我去哪儿了？") == low
    assert information_weight("I went to the dentist on Friday.") == 1.0
    asked = "When did I go to the dentist?"
    assert (
        information_weight("I'm not sure I remember; could you remind me?", answering=asked) == low
    )
    assert information_weight("You asked about the dentist.", answering=asked) == low
    assert information_weight("You went to the dentist on 3 May 2025.", answering=asked) == 1.0
    assert information_weight("抱歉，我不记得了。", answering="我上周去哪儿了？") == low

    state = turn_state(6, asked, "I'm not sure I remember that, sorry.")
    user, reply = exchange_records(state, thread_id="t1", user_id="ann")
    assert user.extra == {"weight": low} and reply.extra == {"weight": low}
    told = exchange_records(
        turn_state(7, "I went to the dentist.", "Noted."), thread_id="t1", user_id="a"
    )
    assert told[0].extra == {}


def test_an_earlier_question_does_not_crowd_out_the_fact_it_asked_about(
    memory: ChromaMemory,
) -> None:
    node = make_remember(memory)
    node(turn_state(2, "My sister Lena lives in Porto.", "Nice!"), Runtime(context=None), config())
    for turn in range(3, 7):
        node(
            turn_state(turn, "Where does my sister Lena live?", "I'm not sure, sorry."),
            Runtime(context=None),
            config(),
        )
    [hit] = memory.search("Where does my sister Lena live?", thread_id="t1", user_id=None, k=1)
    assert hit.record.text == "My sister Lena lives in Porto."
