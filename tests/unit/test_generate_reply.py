"""The generate_reply node: prompt within budget, context account (fake model, one token/word)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.runtime import Runtime
from pydantic import PrivateAttr

from nodes.context import Context, with_cancel_event
from nodes.errors import ContextOverflowError, TurnCancelled
from nodes.generate_reply import REPLY_DELTA, make_generate_reply
from nodes.state import ChatState, Snippet
from tests.fakes import ScriptedChatModel


def _snippet(text: str, *, turn: int, role: str, ident: str, score: float) -> Snippet:
    return Snippet(
        id=ident, text=text, thread_id="t", turn=turn, role=role, timestamp=None, score=score
    )


def _run(model: ScriptedChatModel, state: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    node = make_generate_reply(model, profile_max_new_tokens=lambda _p: 10)
    return node(state, Runtime(context=Context(**ctx)), {})  # type: ignore[arg-type]


def test_a_dropped_fact_is_not_reported_as_recalled_when_another_fact_of_its_turn_stays() -> None:
    model = ScriptedChatModel(default="fine")
    long_fact = "email: " + " ".join(["x"] * 60)
    recalled = [
        _snippet("name: Alice", turn=1, role="fact", ident="t:fact:name", score=0.9),
        _snippet(long_fact, turn=1, role="fact", ident="t:fact:email", score=0.1),
    ]
    state = {"messages": [HumanMessage("hello there", id="h1")], "turn": 2, "recalled": recalled}
    full = _run(model, state, context_window=10_000)["context_account"]
    assert [s["id"] for s in full["recalled"]] == ["t:fact:name", "t:fact:email"]

    # A budget that fits everything but the long, low-scoring fact.
    budget = full["total"] - 30
    account = _run(model, state, context_window=budget + 10)["context_account"]
    assert account["total"] <= account["budget"]
    prompt = "\n".join(str(m.content) for m in model.history[-1]["messages"])
    assert "name: Alice" in prompt and long_fact not in prompt
    assert [s["id"] for s in account["recalled"]] == ["t:fact:name"]
    assert account["dropped"] == ["memory:t1:fact:email"]


def test_a_profile_reply_length_never_takes_the_whole_context_window() -> None:
    # STEADYCHAT_CONTEXT_WINDOW=2048 with the creative profile (2048 reply tokens): the reply
    # budget is capped so that the prompt keeps room, instead of every turn failing.
    model = ScriptedChatModel(default="fine")
    node = make_generate_reply(model, profile_max_new_tokens=lambda _p: 2048)
    state = {"messages": [HumanMessage("hello there", id="h1")], "turn": 1}
    out = node(state, Runtime(context=Context(context_window=2048, profile="creative")), {})  # type: ignore[arg-type]
    account = out["context_account"]
    max_new = model.history[-1]["kwargs"]["max_new_tokens"]
    assert 0 < max_new < 2048
    assert account["budget"] == 2048 - max_new
    assert account["total"] <= account["budget"]


def test_the_prompt_is_counted_as_it_is_sent_when_thinking_is_switched_per_call(
    tiny_chat_model: Any,
) -> None:
    # enable_thinking=False makes the chat template add an empty think block: the budget must
    # count that prompt, not the one without it.
    node = make_generate_reply(tiny_chat_model, profile_max_new_tokens=lambda _p: 4)
    state = {"messages": [HumanMessage("hello there", id="h1")], "turn": 1}
    ctx = Context(generation={"enable_thinking": False, "temperature": 0})
    account = node(state, Runtime(context=ctx), {})["context_account"]  # type: ignore[arg-type]
    assert account["usage"]["prompt_tokens"] == account["total"]


def test_a_reply_longer_than_the_window_is_refused_with_a_clear_message() -> None:
    node = make_generate_reply(ScriptedChatModel(), profile_max_new_tokens=lambda _: 512)
    state: ChatState = {"messages": [HumanMessage("hi", additional_kwargs={"turn": 1})], "turn": 1}
    ctx = Context(context_window=1024, max_new_tokens=4096)
    with pytest.raises(ContextOverflowError, match="leaves no room for the prompt"):
        node(state, Runtime(context=ctx), {})


def test_old_memos_are_dropped_before_the_state_block() -> None:
    model = ScriptedChatModel()
    node = make_generate_reply(model, profile_max_new_tokens=lambda _: 64)
    slots = {
        "name": {"value": "Ada", "turn": 1, "source": "rule:name", "evidence": "", "history": []},
    }
    for t in range(1, 41):
        slots[f"memo:item{t}"] = {
            "value": f"remember item number {t} " + "detail " * 20,
            "turn": t,
            "source": "rule:memo",
            "evidence": "",
            "history": [],
        }
    state: ChatState = {
        "messages": [HumanMessage("what do you remember?", additional_kwargs={"turn": 41})],
        "turn": 41,
        "slots": slots,
    }
    out = node(state, Runtime(context=Context(context_window=700)), {})
    account = out["context_account"]
    dropped = account["dropped"]
    assert "state" not in dropped
    assert "slot:memo:item1" in dropped
    assert "slot:memo:item40" not in dropped
    system = "\n".join(str(m.content) for m in model.history[-1]["messages"])
    assert "Ada" in system and "item number 40" in system
    assert account["total"] <= 700 - 64


def test_the_reply_is_written_to_the_stream_as_it_is_saved() -> None:
    model = ScriptedChatModel(default="  Hello there friend. Hello there friend. Bye for now.  ")
    written: list[Any] = []
    node = make_generate_reply(model, profile_max_new_tokens=lambda _p: 32)
    state = {"messages": [HumanMessage("hi", id="h1")], "turn": 1}
    out = node(state, Runtime(context=Context(), stream_writer=written.append), {})  # type: ignore[arg-type]
    deltas = [event[REPLY_DELTA] for event in written]
    assert len(deltas) > 2  # piece by piece, not the whole reply at the end
    assert "".join(deltas) == out["messages"][0].content == "Hello there friend. Bye for now."


class _ClosableModel(ScriptedChatModel):
    """Streams its words and notes how many it produced and whether its stream was closed."""

    _produced: list[str] = PrivateAttr(default_factory=list)
    _closed: threading.Event = PrivateAttr(default_factory=threading.Event)

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        try:
            for chunk in super()._stream(*args, **kwargs):
                self._produced.append(str(chunk.message.content))
                yield chunk
        finally:
            self._closed.set()


def test_a_cancelled_turn_stops_reading_and_closes_the_model_stream() -> None:
    model = _ClosableModel(default=" ".join(f"word{i}" for i in range(50)))
    cancel = threading.Event()
    node = make_generate_reply(model, profile_max_new_tokens=lambda _p: 64)
    state = {"messages": [HumanMessage("hi", id="h1")], "turn": 1}
    runtime = Runtime(context=Context(), stream_writer=lambda _e: cancel.set())
    with pytest.raises(TurnCancelled):
        node(state, runtime, with_cancel_event({}, cancel))  # type: ignore[arg-type]
    assert model._closed.is_set()
    assert len(model._produced) < 10
    assert model.history[-1]["kwargs"]["cancel_event"] is cancel


def test_a_recalled_snippet_shows_its_date_as_a_reader_says_it() -> None:
    model = ScriptedChatModel(default="fine")
    snippet = Snippet(
        id="t:3:user",
        text="I went to the support group yesterday (7 May 2023).",
        thread_id="t",
        turn=3,
        role="user",
        timestamp="2023-05-08T13:56:00",
        score=0.5,
    )
    state = {
        "messages": [HumanMessage("when was that?", id="h1")],
        "turn": 9,
        "recalled": [snippet],
    }
    _run(model, state)
    prompt = "\n".join(str(m.content) for m in model.history[-1]["messages"])
    assert "[Mon 8 May 2023, turn 3, user] I went to the support group yesterday (7 May 2023)." in (
        prompt
    )
    assert "2023-05-08" not in prompt
