"""The extract_slots node end to end, and the slot helpers it merges findings with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.extract_slots import make_extract_slots
from nodes.slots import MAX_HISTORY, apply_slot_value, clear_slot, render_slots
from nodes.state import ChatState, Slot
from tests.fakes import ScriptedChatModel

STAMP = "2026-11-23T10:00:00+00:00"  # a Monday


def human(text: str | list[Any], turn: int, timestamp: str = STAMP) -> HumanMessage:
    return HumanMessage(content=text, additional_kwargs={"turn": turn, "timestamp": timestamp})


def run_node(
    state: dict[str, Any], *, model: ScriptedChatModel | None = None, **ctx: Any
) -> dict[str, Any]:
    node = make_extract_slots(model)
    return node(state, Runtime(context=Context(**ctx)))  # type: ignore[arg-type]


# -- slot helpers ----------------------------------------------------------------------------


def test_new_value_creates_a_slot_with_provenance() -> None:
    slot = apply_slot_value(None, " Li Ming ", turn=2, source="rule:name", evidence="我叫Li Ming")
    assert slot == Slot(
        value="Li Ming", turn=2, source="rule:name", evidence="我叫Li Ming", history=[]
    )


def test_same_value_is_no_change() -> None:
    slot = apply_slot_value(None, "a@x.com", turn=1, source="rule:email", evidence="a@x.com")
    assert apply_slot_value(slot, "a@x.com", turn=4, source="model", evidence="") is None


def test_replacement_keeps_the_old_value_with_its_turns() -> None:
    first = apply_slot_value(None, "a@x.com", turn=1, source="rule:email", evidence="e1")
    second = apply_slot_value(first, "b@x.com", turn=3, source="rule:email", evidence="e2")
    third = apply_slot_value(second, "c@x.com", turn=6, source="user", evidence="")
    assert third is not None
    assert third["value"] == "c@x.com"
    assert third["turn"] == 6
    assert third["history"] == [
        {"value": "a@x.com", "turn": 1, "source": "rule:email", "replaced_at": 3},
        {"value": "b@x.com", "turn": 3, "source": "rule:email", "replaced_at": 6},
    ]


def test_history_is_bounded() -> None:
    slot: Slot | None = None
    for turn in range(1, MAX_HISTORY + 10):
        slot = apply_slot_value(slot, f"v{turn}", turn=turn, source="model", evidence="") or slot
    assert slot is not None
    assert len(slot["history"]) == MAX_HISTORY
    assert slot["history"][-1]["value"] == f"v{MAX_HISTORY + 8}"


def test_clear_forgets_the_value_and_its_history_and_clearing_twice_is_no_change() -> None:
    slot = apply_slot_value(None, "English", turn=1, source="rule:language", evidence="x")
    slot = apply_slot_value(slot, "French", turn=2, source="rule:language", evidence="y")
    assert slot is not None and [h["value"] for h in slot["history"]] == ["English"]
    cleared = clear_slot(slot, turn=5)
    assert cleared is not None
    assert cleared["value"] is None
    assert cleared["source"] == "user"
    assert cleared["history"] == []
    assert clear_slot(cleared, turn=6) is None
    assert clear_slot(None, turn=6) is None
    again = apply_slot_value(cleared, "中文", turn=7, source="rule:language", evidence="用中文")
    assert again is not None
    assert again["value"] == "中文" and again["history"] == []


@pytest.mark.parametrize(("value", "turn"), [("", 1), ("   ", 1), ("x", -1)])
def test_bad_values_are_clear_errors(value: str, turn: int) -> None:
    with pytest.raises(ValueError, match="must"):
        apply_slot_value(None, value, turn=turn, source="user", evidence="")


def test_non_string_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="string"):
        apply_slot_value(None, 42, turn=1, source="user", evidence="")  # type: ignore[arg-type]


def test_render_slots_in_a_stable_readable_order() -> None:
    def make(value: str | None) -> Slot:
        return Slot(value=value, turn=1, source="user", evidence="", history=[])

    slots = {
        "memo:flight": make("my flight is on Friday"),
        "order_id": make("20240815CN001"),
        "style:length": make("简洁一点"),
        "phone": make(None),
        "name": make("李明"),
        "task": make("writing a\nmarket report"),
        "style:abbreviations": make("不要用缩写"),
    }
    assert render_slots(slots) == "\n".join(
        [
            "- Name: 李明",
            "- Style (abbreviations): 不要用缩写",
            "- Style (length): 简洁一点",
            "- Current task: writing a market report",
            "- Order number: 20240815CN001",
            "- Remember: my flight is on Friday",
        ]
    )
    assert render_slots(dict(reversed(list(slots.items())))) == render_slots(slots)
    assert render_slots({}) == ""


# -- the node --------------------------------------------------------------------------------


def test_node_reads_slots_and_tracking_from_the_last_user_message() -> None:
    state = {
        "turn": 1,
        "messages": [
            human(
                "Hi, I'm Alice. I'm writing a market report on Tesla. My order #A1234 is "
                "late, where is it? Please reply in English and be concise.",
                1,
            )
        ],
    }
    update = run_node(state)
    assert {name: slot["value"] for name, slot in update["slots"].items()} == {
        "name": "Alice",
        "task": "writing a market report on Tesla",
        "order_id": "A1234",
        "language": "English",
        "style:length": "be concise",
    }
    assert update["slots"]["name"]["source"] == "rule:name"
    assert update["slots"]["name"]["turn"] == 1
    assert update["topic"] == "market report on Tesla"
    assert update["entities"] == ["Alice", "Tesla", "A1234"]
    assert update["pending_questions"] == [
        {"text": "My order #A1234 is late, where is it?", "turn": 1}
    ]


def test_node_returns_only_changed_slots() -> None:
    existing = apply_slot_value(None, "Alice", turn=1, source="rule:name", evidence="")
    assert existing is not None
    state = {
        "turn": 2,
        "slots": {"name": existing},
        "messages": [human("My name is Alice, my email is alice@example.com", 2)],
    }
    update = run_node(state)
    assert set(update["slots"]) == {"email"}


def test_node_resolves_relative_dates_against_the_message_time() -> None:
    state = {"turn": 1, "messages": [human("明天下午能送到吗？", 1)]}
    assert run_node(state)["slots"]["date"]["value"] == "明天 (2026-11-24)"
    no_stamp = {"turn": 1, "messages": [HumanMessage(content="明天下午能送到吗？")]}
    assert "date" not in run_node(no_stamp)["slots"]


def test_node_reads_text_blocks() -> None:
    state = {"turn": 1, "messages": [human([{"type": "text", "text": "请用中文回答"}], 1)]}
    assert run_node(state)["slots"]["language"]["value"] == "中文"


def test_node_without_a_user_message_changes_nothing() -> None:
    assert run_node({"turn": 0, "messages": []}) == {}


def test_model_pass_runs_only_when_asked() -> None:
    model = ScriptedChatModel().enqueue(json.dumps({"name": "Li Ming", "task": "a novel"}))
    state = {"turn": 1, "messages": [human("Li Ming here, and my email is li@example.com", 1)]}
    assert set(run_node(state, model=model)["slots"]) == {"email"}
    assert model.history == []
    update = run_node(state, model=model, model_slot_pass=True)
    assert set(update["slots"]) == {"email", "name"}
    assert update["slots"]["name"]["source"] == "model"
    assert update["slots"]["email"]["source"] == "rule:email"


def test_rules_win_over_the_model() -> None:
    model = ScriptedChatModel().enqueue(json.dumps({"email": "example.com"}))
    state = {"turn": 1, "messages": [human("my email is li@example.com", 1)]}
    update = run_node(state, model=model, model_slot_pass=True)
    assert update["slots"]["email"]["value"] == "li@example.com"


class BrokenModel(ScriptedChatModel):
    def _next_reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        raise RuntimeError("model unavailable")


def test_model_pass_failure_does_not_fail_the_turn() -> None:
    state = {"turn": 1, "messages": [human("Call me Bob. What can you do?", 1)]}
    update = run_node(state, model=BrokenModel(), model_slot_pass=True)
    assert update["slots"]["name"]["value"] == "Bob"
    assert update["pending_questions"] == [{"text": "What can you do?", "turn": 1}]


# -- several turns on one thread through a compiled graph -----------------------------------


def _begin(state: ChatState) -> dict[str, Any]:
    # Stands in for the begin_turn node: number the turn and stamp the message.
    turn = int(state.get("turn") or 0) + 1
    last = state["messages"][-1]
    stamped = last.model_copy(update={"additional_kwargs": {"turn": turn, "timestamp": STAMP}})
    return {"turn": turn, "messages": [stamped]}


def _reply(state: ChatState) -> dict[str, Any]:
    return {"messages": [AIMessage(content="noted")]}


@pytest.fixture
def graph() -> Iterator[CompiledStateGraph]:
    builder = StateGraph(ChatState, context_schema=Context)
    builder.add_node("begin_turn", _begin)
    builder.add_node("extract_slots", make_extract_slots())
    builder.add_node("reply", _reply)
    builder.add_edge(START, "begin_turn")
    builder.add_edge("begin_turn", "extract_slots")
    builder.add_edge("extract_slots", "reply")
    builder.add_edge("reply", END)
    yield builder.compile(checkpointer=InMemorySaver())


def test_corrections_across_turns_keep_history_with_the_right_turns(
    graph: CompiledStateGraph,
) -> None:
    config = {"configurable": {"thread_id": "t1"}}
    turns = [
        "我叫李明，我的邮箱是 li@example.com",
        "不要用缩写",
        "不对，我叫王芳",
        "my new email is wang@example.com, and be concise",
    ]
    for text in turns:
        graph.invoke({"messages": [HumanMessage(content=text)]}, config, context=Context())
    slots = graph.get_state(config).values["slots"]
    assert slots["name"]["value"] == "王芳"
    assert slots["name"]["turn"] == 3
    assert slots["name"]["history"] == [
        {"value": "李明", "turn": 1, "source": "rule:name", "replaced_at": 3}
    ]
    assert slots["email"]["value"] == "wang@example.com"
    assert slots["email"]["history"][0]["turn"] == 1
    assert slots["email"]["history"][0]["replaced_at"] == 4
    assert slots["style:abbreviations"]["value"] == "不要用缩写"
    assert slots["style:length"]["value"] == "be concise"
    assert "- Name: 王芳" in render_slots(slots)


def test_unrelated_memos_do_not_overwrite_each_other(graph: CompiledStateGraph) -> None:
    config = {"configurable": {"thread_id": "t2"}}
    for text in [
        "Remember that my flight is on Friday.",
        "Please remember my hotel is the Hilton.",
        "Remember: my flight is on Saturday now.",
    ]:
        graph.invoke({"messages": [HumanMessage(content=text)]}, config, context=Context())
    slots = graph.get_state(config).values["slots"]
    memos = {k: v["value"] for k, v in slots.items() if k.startswith("memo:")}
    assert memos == {
        "memo:flight": "my flight is on Saturday now",
        "memo:hotel": "my hotel is the Hilton",
    }
    assert slots["memo:flight"]["history"][0]["value"] == "my flight is on Friday"


def test_the_users_name_is_not_taken_for_the_topic() -> None:
    node = make_extract_slots()
    state: ChatState = {
        "messages": [HumanMessage("Hi, my name is Ada Lovelace and my order number is #A1001.")],
        "turn": 1,
    }
    out = node(state, Runtime(context=Context()))
    assert out["slots"]["name"]["value"] == "Ada Lovelace"
    assert out["topic"] is not None and "Ada" not in out["topic"]
    only_name = node(
        {"messages": [HumanMessage("hello, my name is Bob")], "turn": 1}, Runtime(context=Context())
    )
    assert only_name["topic"] is None


def test_the_model_slot_pass_is_not_streamed_to_the_client() -> None:
    # stream_mode="messages" (the service, Studio) must carry the reply, not the slot JSON.
    from graph.builder import Deps, compile_graph

    def responder(messages: list[Any]) -> str:
        if "extract facts" in str(messages[0].content):
            return '{"name": "Ada"}'
        return "the reply"

    model = ScriptedChatModel(responder=responder)
    graph = compile_graph(Deps(chat_model=model), checkpointer=InMemorySaver())
    streamed = [
        str(chunk.content)
        for chunk, _meta in graph.stream(
            {"messages": [HumanMessage("hello, I am Ada")]},
            {"configurable": {"thread_id": "t1"}},
            context=Context(model_slot_pass=True),
            stream_mode="messages",
        )
    ]
    assert any("extract facts" in str(c["messages"][0].content) for c in model.history)
    assert "the reply" in "".join(streamed)
    assert "Ada" not in "".join(streamed)
