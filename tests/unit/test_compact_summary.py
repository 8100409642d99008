"""Tests for the compact_summary node: when it folds, what it removes, L1 lines and the L2 fold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime

from nodes.compact_summary import count_window_tokens, group_exchanges, make_compact_summary
from nodes.context import Context
from nodes.state import ChatState, Slot, SummaryChunk
from tests.fakes import ScriptedChatModel


def _stamp(message: BaseMessage, turn: int) -> BaseMessage:
    message.additional_kwargs = {"turn": turn, "timestamp": f"2026-01-01T00:{turn % 60:02d}:00Z"}
    return message


def _filler(turn: int, words: int) -> str:
    return " ".join(f"w{turn}x{i}" for i in range(words))


def _window(exchanges: int, *, words: int = 10, current: bool = True) -> list[BaseMessage]:
    """``exchanges`` complete exchanges (turns 1..n) and, optionally, the current user turn."""
    messages: list[BaseMessage] = []
    for turn in range(1, exchanges + 1):
        messages.append(_stamp(HumanMessage(_filler(turn, words)), turn))
        messages.append(_stamp(AIMessage(_filler(turn, words)), turn))
    if current:
        messages.append(_stamp(HumanMessage(_filler(exchanges + 1, words)), exchanges + 1))
    return add_messages([], messages)  # assigns ids, as the graph does


def _slot(value: str, turn: int = 1) -> Slot:
    return Slot(value=value, turn=turn, source="rule:test", evidence=value, history=[])


def _state(messages: list[BaseMessage], **extra: Any) -> ChatState:
    turns = [m.additional_kwargs.get("turn", 0) for m in messages]
    return ChatState(messages=messages, turn=max(turns, default=0), **extra)


def _run(node: Any, state: ChatState, **ctx: Any) -> dict[str, Any]:
    return node(state, Runtime(context=Context(**ctx)))


def _turns(messages: list[BaseMessage]) -> list[int]:
    return [m.additional_kwargs["turn"] for m in messages]


# --- when it runs, what it removes -----------------------------------------------------------


def test_nothing_happens_under_budget() -> None:
    model = ScriptedChatModel()
    messages = _window(3)
    before = model.get_num_tokens_from_messages(messages)

    update = _run(make_compact_summary(model), _state(messages), window_tokens=before)

    assert update == {
        "compaction": {
            "ran": False,
            "folded_turns": None,
            "method": None,
            "l2_folded": False,
            "window_tokens_before": before,
            "window_tokens_after": before,
        }
    }
    assert model.history == []


def test_over_budget_removes_the_oldest_whole_exchanges_until_under_budget() -> None:
    model = ScriptedChatModel(default="A summary of the earlier exchanges.")
    messages = _window(6)  # 13 messages of 14 tokens each, plus 2: 184 tokens
    state = _state(messages)

    update = _run(
        make_compact_summary(model), state, window_tokens=100, fold_turns=2, min_window_turns=2
    )

    removed = update["messages"]
    assert all(isinstance(m, RemoveMessage) for m in removed)
    # Two chunks of two exchanges were needed (184 -> 128 -> 72 tokens).
    assert [m.id for m in removed] == [m.id for m in messages[:8]]
    assert [(c["first_turn"], c["last_turn"]) for c in update["summary_l1"]] == [(1, 2), (3, 4)]
    assert update["compaction"]["ran"] is True
    assert update["compaction"]["folded_turns"] == [1, 4]
    assert update["compaction"]["window_tokens_before"] == 184
    assert update["compaction"]["window_tokens_after"] == 72
    remaining = add_messages(messages, removed)
    assert _turns(remaining) == [5, 5, 6, 6, 7]
    assert model.get_num_tokens_from_messages(remaining) <= 100


def test_min_window_turns_and_the_current_message_stay_even_over_budget() -> None:
    messages = _window(5)

    update = _run(make_compact_summary(None), _state(messages), window_tokens=5, min_window_turns=2)

    remaining = add_messages(messages, update["messages"])
    assert _turns(remaining) == [4, 4, 5, 5, 6]
    assert remaining[-1] is messages[-1]
    assert update["compaction"]["folded_turns"] == [1, 3]
    assert update["compaction"]["window_tokens_after"] > 5


def test_a_huge_current_message_alone_is_never_folded() -> None:
    messages = _window(0, words=500)

    update = _run(make_compact_summary(ScriptedChatModel()), _state(messages), window_tokens=50)

    assert "messages" not in update
    assert update["compaction"]["ran"] is False
    assert update["compaction"]["window_tokens_before"] > 50


def test_an_exchange_is_never_split_even_with_several_replies() -> None:
    first = [_stamp(HumanMessage("order question"), 1), _stamp(AIMessage("part one"), 1)]
    first.append(_stamp(AIMessage("part two"), 1))
    rest = [_stamp(HumanMessage(_filler(2, 30)), 2), _stamp(AIMessage("ok"), 2)]
    messages = add_messages([], [*first, *rest, _stamp(HumanMessage("now"), 3)])

    update = _run(
        make_compact_summary(None),
        _state(messages),
        window_tokens=20,
        min_window_turns=0,
        fold_turns=1,
    )

    assert [m.id for m in update["messages"]][:3] == [m.id for m in messages[:3]]
    assert update["summary_l1"][0]["first_turn"] == 1
    assert update["summary_l1"][0]["last_turn"] == 1


def test_group_exchanges_keeps_a_leading_reply_with_the_first_exchange() -> None:
    messages = [AIMessage("welcome"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("q")]
    assert [len(e) for e in group_exchanges(messages)] == [3, 1]


def test_the_window_is_counted_with_the_reply_model_when_another_model_summarizes() -> None:
    class DoubleCounter(ScriptedChatModel):
        def get_num_tokens_from_messages(self, messages: Any, tools: Any = None) -> int:
            return 2 * super().get_num_tokens_from_messages(messages)

    messages = _window(3)  # 7 messages: 100 tokens for the summarizer, 200 for the reply model
    node = make_compact_summary(ScriptedChatModel(), count_with=DoubleCounter())

    # Counted by the summarizer the window (100) would fit 120; counted right it does not.
    update = _run(node, _state(messages), window_tokens=120, fold_turns=1, min_window_turns=0)

    assert update["compaction"]["window_tokens_before"] == 200
    assert update["compaction"]["folded_turns"] == [1, 2]
    assert update["compaction"]["window_tokens_after"] == 2 * (3 * 14 + 2)


def test_the_transformers_chat_model_counts_and_summarizes_for_real(tiny_chat_model: Any) -> None:
    window = _customer_window()
    tokens = tiny_chat_model.get_num_tokens_from_messages(window)

    update = _run(
        make_compact_summary(tiny_chat_model, summary_tokens=8),
        _state(window, slots=CUSTOMER_SLOTS),
        window_tokens=tokens - 1,
        fold_turns=2,
        min_window_turns=2,
    )

    compaction = update["compaction"]
    assert compaction["window_tokens_before"] == tokens
    assert compaction["window_tokens_after"] == tiny_chat_model.get_num_tokens_from_messages(
        window[4:]
    )
    (chunk,) = update["summary_l1"]
    # The tiny model writes random text: whichever line wins, the slot values are in it.
    assert "Ann Lee" in chunk["text"] and "A-10023" in chunk["text"]


# --- how a chunk is summarized ---------------------------------------------------------------


def _customer_window() -> list[BaseMessage]:
    texts = [
        ("My name is Ann Lee and my kettle order A-10023 arrived broken.", "Sorry, Ann."),
        ("Can you send a replacement kettle to my office?", "Yes, it ships tomorrow."),
        (_filler(3, 20), _filler(3, 20)),
        (_filler(4, 20), _filler(4, 20)),
    ]
    messages: list[BaseMessage] = []
    for turn, (user, reply) in enumerate(texts, start=1):
        messages += [_stamp(HumanMessage(user), turn), _stamp(AIMessage(reply), turn)]
    messages.append(_stamp(HumanMessage("And the invoice?"), 5))
    return add_messages([], messages)


CUSTOMER_SLOTS = {"name": _slot("Ann Lee"), "order_id": _slot("A-10023")}
FOLD_FIRST_TWO = {"window_tokens": 140, "fold_turns": 2, "min_window_turns": 2}


def test_the_model_summary_becomes_the_l1_line_when_it_keeps_every_slot_value() -> None:
    model = ScriptedChatModel().enqueue(
        "Ann Lee's kettle order A-10023 broke; a replacement ships."
    )
    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)

    update = _run(make_compact_summary(model), state, **FOLD_FIRST_TWO)

    assert update["summary_l1"] == [
        SummaryChunk(
            first_turn=1,
            last_turn=2,
            text="Ann Lee's kettle order A-10023 broke; a replacement ships.",
            method="model",
        )
    ]
    assert update["compaction"]["method"] == "model"
    call = model.history[0]
    assert call["kwargs"]["profile"] == "precise"
    assert "arrived broken" in str(call["messages"][-1].content)


def test_a_model_summary_that_drops_a_slot_value_is_replaced_by_the_extractive_line() -> None:
    model = ScriptedChatModel().enqueue("Ann Lee's kettle broke; a replacement ships.")
    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)

    update = _run(make_compact_summary(model), state, **FOLD_FIRST_TWO)

    (chunk,) = update["summary_l1"]
    assert chunk["method"] == "extractive"
    assert "A-10023" in chunk["text"] and "Ann Lee" in chunk["text"]
    assert update["compaction"]["method"] == "extractive"


def test_a_model_summary_that_invents_a_number_is_replaced_by_the_extractive_line() -> None:
    model = ScriptedChatModel().enqueue("Ann Lee's order A-10023 broke; refund of 80 EUR agreed.")
    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)

    update = _run(make_compact_summary(model), state, **FOLD_FIRST_TWO)

    (chunk,) = update["summary_l1"]
    assert chunk["method"] == "extractive"
    assert "80 EUR" not in chunk["text"]


def test_the_extractive_line_is_used_when_the_model_raises() -> None:
    def boom(_: list[BaseMessage]) -> str:
        raise RuntimeError("CUDA out of memory")

    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)
    update = _run(make_compact_summary(ScriptedChatModel(responder=boom)), state, **FOLD_FIRST_TWO)

    (chunk,) = update["summary_l1"]
    assert chunk["method"] == "extractive"
    assert chunk["text"].startswith("User: My name is Ann Lee")
    assert len(update["messages"]) == 4


def test_without_a_model_the_line_is_extractive() -> None:
    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)

    update = _run(make_compact_summary(None), state, **FOLD_FIRST_TWO)

    (chunk,) = update["summary_l1"]
    assert chunk["method"] == "extractive"
    assert "replacement kettle" in chunk["text"]


def test_model_summaries_off_never_calls_the_model() -> None:
    model = ScriptedChatModel()
    state = _state(_customer_window(), slots=CUSTOMER_SLOTS)

    update = _run(make_compact_summary(model), state, model_summaries=False, **FOLD_FIRST_TWO)

    assert update["summary_l1"][0]["method"] == "extractive"
    assert model.history == []


def test_a_chinese_conversation_is_folded_with_a_chinese_line() -> None:
    texts = [
        ("你好，我叫李明。我的订单号是20240815CN001，快递三天没有更新了。", "好的，我来查询。"),
        ("请用中文回复，不要用缩写。能不能改成送到公司？", "可以，已经帮您修改地址。"),
        ("谢谢。另外发票什么时候开？", "发货后三天内开具。"),
    ]
    messages: list[BaseMessage] = []
    for turn, (user, reply) in enumerate(texts, start=1):
        messages += [_stamp(HumanMessage(user), turn), _stamp(AIMessage(reply), turn)]
    messages = add_messages([], [*messages, _stamp(HumanMessage("发票抬头写公司名称。"), 4)])
    slots = {"name": _slot("李明"), "order_id": _slot("20240815CN001")}
    model = ScriptedChatModel().enqueue("用户询问物流并修改了收货地址。")

    update = _run(
        make_compact_summary(model),
        _state(messages, slots=slots),
        window_tokens=60,
        fold_turns=2,
        min_window_turns=1,
    )

    (chunk,) = update["summary_l1"]
    # The model's line lost the name and the order number, so the extractive line is kept.
    assert chunk["method"] == "extractive"
    assert chunk["text"].startswith("用户：")
    assert "李明" in chunk["text"] and "20240815CN001" in chunk["text"]
    assert "一句" in str(model.history[0]["messages"][0].content)
    assert (chunk["first_turn"], chunk["last_turn"]) == (1, 2)


# --- L1 overflow into L2 ---------------------------------------------------------------------


def test_l1_overflow_folds_the_oldest_lines_into_a_bounded_l2_keeping_pinned_facts() -> None:
    old_l1 = [
        SummaryChunk(first_turn=1, last_turn=2, text="User: asked about kettles.", method="model"),
        SummaryChunk(first_turn=3, last_turn=4, text="User: compared prices.", method="model"),
    ]
    messages = [m for m in _customer_window() if m.additional_kwargs["turn"] >= 1]
    for m in messages:  # renumber the window after the two folded L1 ranges
        m.additional_kwargs["turn"] += 4
    state = _state(messages, slots=CUSTOMER_SLOTS, summary_l1=old_l1, summary_l2=None)

    update = _run(make_compact_summary(None), state, l1_max_chunks=2, **FOLD_FIRST_TWO)

    assert update["compaction"]["l2_folded"] is True
    l2 = update["summary_l2"]
    assert (l2["first_turn"], l2["last_turn"]) == (1, 2)
    assert {"name: Ann Lee", "order_id: A-10023"} <= set(l2["facts"])
    assert "asked about kettles" in l2["narrative"]
    assert [(c["first_turn"], c["last_turn"]) for c in update["summary_l1"]] == [(3, 4), (5, 6)]


def test_pending_questions_of_folded_turns_reach_l2() -> None:
    old_l1 = [SummaryChunk(first_turn=1, last_turn=2, text="User: When is delivery?", method="x")]
    messages = _window(4)
    for m in messages:
        m.additional_kwargs["turn"] += 2
    pending = [{"text": "When is delivery?", "turn": 2}, {"text": "Later question?", "turn": 6}]
    state = _state(messages, summary_l1=old_l1, pending_questions=pending)

    update = _run(
        make_compact_summary(None),
        state,
        window_tokens=60,
        fold_turns=1,
        l1_max_chunks=1,
        min_window_turns=1,
    )

    assert update["summary_l2"]["open_questions"] == ["When is delivery?"]


def test_without_question_tracking_no_question_is_called_resolved() -> None:
    old_l1 = [SummaryChunk(first_turn=1, last_turn=2, text="User: Is it in stock?", method="x")]
    messages = _window(4)
    for m in messages:
        m.additional_kwargs["turn"] += 2
    state = _state(messages, summary_l1=old_l1)  # no pending_questions in state

    update = _run(
        make_compact_summary(None),
        state,
        window_tokens=60,
        fold_turns=1,
        l1_max_chunks=1,
        min_window_turns=1,
    )

    assert update["summary_l2"]["resolved"] == []
    assert update["summary_l2"]["open_questions"] == []
    assert "Is it in stock?" in update["summary_l2"]["narrative"]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "value"),
    [("window_tokens", 0), ("fold_turns", 0), ("min_window_turns", -1), ("l1_max_chunks", -2)],
)
def test_invalid_settings_are_rejected_with_a_clear_error(knob: str, value: int) -> None:
    with pytest.raises(ValueError, match=knob):
        _run(make_compact_summary(None), _state(_window(2)), **{knob: value})


def test_messages_without_ids_cannot_be_folded() -> None:
    messages = [_stamp(HumanMessage(_filler(1, 30)), 1), _stamp(AIMessage("ok"), 1)]
    messages.append(_stamp(HumanMessage("next"), 2))

    with pytest.raises(ValueError, match="message ids"):
        _run(make_compact_summary(None), _state(messages), window_tokens=5, min_window_turns=0)


def test_token_counting_falls_back_when_the_model_cannot_count() -> None:
    class NoCounter(ScriptedChatModel):
        def get_num_tokens_from_messages(self, messages: Any, tools: Any = None) -> int:
            raise NotImplementedError

        def get_num_tokens(self, text: str) -> int:
            raise OSError("tokenizer files not available offline")

    assert count_window_tokens(NoCounter(), [HumanMessage("x" * 400)]) > 50
    assert count_window_tokens(None, []) == 0


# --- long conversations ----------------------------------------------------------------------


def _summarizer(messages: list[BaseMessage]) -> str:
    """A model that answers summary prompts: JSON for L2 (without the pinned facts), a short
    sentence for L1 (which loses any slot value, forcing the extractive fallback then)."""
    if "JSON" in str(messages[0].content):
        return json.dumps(
            {
                "topics": ["orders"],
                "facts": ["the user shops often"],
                "resolved": [],
                "open_questions": [],
                "narrative": "The user kept asking about orders. " * 3,
            }
        )
    return "The user asked about several orders and got answers."


def _user_text(turn: int) -> str:
    if turn == 5:
        return "My name is Ann Lee and I need help with an order."
    if turn == 120:
        return "Please write to ann@example.com from now on."
    if turn == 200:
        return "Actually my name is Ann Smith now, I got married."
    return f"Question {turn} about item{turn}: " + _filler(turn, 5 + turn % 11)


@pytest.mark.parametrize("with_model", [True, False], ids=["model", "extractive"])
def test_three_hundred_turns_keep_window_l1_and_l2_bounded_and_pinned_facts_alive(
    with_model: bool,
) -> None:
    ctx = {"window_tokens": 300, "min_window_turns": 2, "fold_turns": 4, "l1_max_chunks": 4}
    node = make_compact_summary(ScriptedChatModel(responder=_summarizer) if with_model else None)
    state: dict[str, Any] = {"messages": [], "slots": {}, "summary_l1": [], "summary_l2": None}
    largest_window = largest_l2 = 0
    methods: set[str] = set()

    for turn in range(1, 301):
        if turn == 5:
            state["slots"] = {**state["slots"], "name": _slot("Ann Lee", 5)}
        if turn == 120:
            state["slots"] = {**state["slots"], "email": _slot("ann@example.com", 120)}
        if turn == 200:
            state["slots"] = {**state["slots"], "name": _slot("Ann Smith", 200)}
        state["turn"] = turn
        user = _stamp(HumanMessage(_user_text(turn)), turn)
        state["messages"] = add_messages(state["messages"], [user])

        update = _run(node, state, **ctx)  # type: ignore[arg-type]

        state["messages"] = add_messages(state["messages"], update.get("messages", []))
        state["summary_l1"] = update.get("summary_l1", state["summary_l1"])
        state["summary_l2"] = update.get("summary_l2", state["summary_l2"])
        compaction = update["compaction"]
        if compaction["ran"]:
            methods.add(compaction["method"])
            assert compaction["window_tokens_after"] <= ctx["window_tokens"]
        reply = _stamp(AIMessage(f"Answer {turn}: " + _filler(turn, 8)), turn)
        state["messages"] = add_messages(state["messages"], [reply])

        l1, l2 = state["summary_l1"], state["summary_l2"]
        assert len(l1) <= ctx["l1_max_chunks"]
        window_turns = _turns(state["messages"])
        # Every turn is in exactly one place: L2, then L1 in order, then the window.
        covered = [t for c in l1 for t in range(c["first_turn"], c["last_turn"] + 1)]
        if l2 is not None:
            covered = list(range(l2["first_turn"], l2["last_turn"] + 1)) + covered
        assert covered + sorted(set(window_turns)) == list(range(1, turn + 1))
        largest_window = max(largest_window, len(state["messages"]))
        largest_l2 = max(largest_l2, len(json.dumps(l2 or {})))

    assert largest_window <= 30
    assert largest_l2 <= 2500
    assert methods == ({"model", "extractive"} if with_model else {"extractive"})
    facts = state["summary_l2"]["facts"]
    assert "name: Ann Smith" in facts and "email: ann@example.com" in facts
    assert "name: Ann Lee" not in facts


# --- inside a compiled graph -----------------------------------------------------------------


def test_in_a_graph_folded_messages_leave_the_checkpoint_and_summaries_are_not_streamed() -> None:
    def responder(messages: list[BaseMessage]) -> str:
        system = str(messages[0].content)
        if "JSON" in system:
            return "LONGMARKER is not JSON"
        if "summarize" in system:
            return "SUMMARYLINE of earlier turns."
        return "reply words here"

    model = ScriptedChatModel(responder=responder)

    def reply(state: ChatState) -> dict[str, Any]:
        answer = model.invoke(state["messages"])
        return {"messages": [_stamp(AIMessage(str(answer.content)), state["turn"])]}

    builder = StateGraph(ChatState, context_schema=Context)
    builder.add_node("compact_summary", make_compact_summary(model))
    builder.add_node("reply", reply)
    builder.add_edge(START, "compact_summary")
    builder.add_edge("compact_summary", "reply")
    builder.add_edge("reply", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    ctx = Context(window_tokens=80, fold_turns=2, min_window_turns=1, l1_max_chunks=2)

    streamed: list[str] = []
    for turn in range(1, 13):
        user = _stamp(HumanMessage(_filler(turn, 12)), turn)
        for chunk, _meta in graph.stream(
            {"messages": [user], "turn": turn}, config, context=ctx, stream_mode="messages"
        ):
            streamed.append(str(chunk.content))

    values = graph.get_state(config).values
    assert len(values["messages"]) <= 8
    assert values["summary_l1"] and values["summary_l2"] is not None
    assert any(c["method"] == "model" for c in values["summary_l1"])
    assert "SUMMARYLINE" in json.dumps(values["summary_l1"]) + json.dumps(values["summary_l2"])
    # Both summary calls happened, yet only the reply's tokens reached the stream.
    prompts = [str(call["messages"][0].content) for call in model.history]
    assert any("JSON" in p for p in prompts) and any("summarize" in p for p in prompts)
    assert "reply words here" in "".join(streamed)
    assert "SUMMARYLINE" not in "".join(streamed)
    assert "LONGMARKER" not in "".join(streamed)
