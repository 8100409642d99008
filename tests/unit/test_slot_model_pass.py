"""The model pass for slots: JSON validated, one retry, values the text lacks are dropped."""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage

from nodes.slot_model_pass import extract_model_slots, merge_findings, text_contains
from nodes.slot_rules import SlotFinding, extract_rule_slots
from tests.fakes import ScriptedChatModel

TEXT = "Hi, I'm Li Ming from Shenzhen, my number is +86 138 1234 5678 and I prefer short answers"


def test_valid_json_gives_findings_and_the_call_is_precise() -> None:
    model = ScriptedChatModel().enqueue(json.dumps({"name": "Li Ming", "style": "short answers"}))
    findings = extract_model_slots(model, TEXT)
    assert {(f.name, f.value) for f in findings} == {
        ("name", "Li Ming"),
        ("style:length", "short answers"),
    }
    assert all(f.rule == "model" for f in findings)
    kwargs = model.history[0]["kwargs"]
    assert kwargs["profile"] == "precise"
    assert kwargs["temperature"] == 0
    assert 0 < kwargs["max_new_tokens"] <= 256
    assert TEXT in model.history[0]["messages"][-1].content


def test_a_value_not_in_the_text_is_dropped() -> None:
    reply = {"name": "Li Ming", "email": "liming@example.com", "task": "writing a report"}
    model = ScriptedChatModel().enqueue(json.dumps(reply))
    findings = extract_model_slots(model, TEXT)
    assert [(f.name, f.value) for f in findings] == [("name", "Li Ming")]


def test_phone_written_differently_is_accepted_but_other_digits_are_not() -> None:
    model = ScriptedChatModel().enqueue(
        json.dumps({"phone": "+8613812345678"}), json.dumps({"phone": "+86 139 0000 0000"})
    )
    assert [f.value for f in extract_model_slots(model, TEXT)] == ["+8613812345678"]
    assert extract_model_slots(model, TEXT) == []


def test_invalid_json_then_valid_on_retry() -> None:
    model = ScriptedChatModel().enqueue(
        "Sure! The name is Li Ming.", '```json\n{"name": "Li Ming"}\n```'
    )
    findings = extract_model_slots(model, TEXT)
    assert [(f.name, f.value) for f in findings] == [("name", "Li Ming")]
    assert len(model.history) == 2
    retry = model.history[1]["messages"]
    assert retry[-2].content == "Sure! The name is Li Ming."
    assert isinstance(retry[-1], HumanMessage)
    assert "not valid" in retry[-1].content
    assert "no JSON object" in retry[-1].content


def test_unknown_keys_are_shown_in_the_retry() -> None:
    model = ScriptedChatModel().enqueue('{"city": "Shenzhen"}', '{"name": "Li Ming"}')
    findings = extract_model_slots(model, TEXT)
    assert [f.value for f in findings] == ["Li Ming"]
    assert "city" in model.history[1]["messages"][-1].content


def test_invalid_twice_gives_no_slots_and_no_crash() -> None:
    model = ScriptedChatModel().enqueue("{name: Li Ming", '{"name": ["Li", "Ming"]}')
    assert extract_model_slots(model, TEXT) == []
    assert len(model.history) == 2


def test_empty_text_does_not_call_the_model() -> None:
    model = ScriptedChatModel()
    assert extract_model_slots(model, "   ") == []
    assert model.history == []


def test_chinese_memo_gets_a_memo_slot() -> None:
    text = "请记住我的航班是周五下午三点"
    model = ScriptedChatModel().enqueue(
        json.dumps({"memo": "我的航班是周五下午三点"}, ensure_ascii=False)
    )
    findings = extract_model_slots(model, text)
    assert [(f.name, f.value) for f in findings] == [("memo:航班", "我的航班是周五下午三点")]
    assert findings[0].evidence == text


def test_rules_win_over_the_model_in_the_same_turn() -> None:
    text = "my email is a@example.com"
    rules = extract_rule_slots(text)
    model = [
        SlotFinding("email", "example.com", text, "model"),
        SlotFinding("task", "email", text, "model"),
    ]
    merged = merge_findings(rules, model)
    assert [(f.name, f.value, f.rule) for f in merged] == [
        ("email", "a@example.com", "email"),
        ("task", "email", "model"),
    ]


def test_text_contains_normalises_case_width_and_spaces() -> None:
    assert text_contains("My name is  LI   Ming", "li ming")
    assert text_contains("订单号：ＡＢ１２３", "AB123")
    assert not text_contains("order AB-123", "AB123")
    assert text_contains("order AB-123", "AB123", loose=True)
    assert not text_contains("anything", "")


def test_numbers_written_as_json_numbers_are_read_as_text() -> None:
    # Models often write ids and phone numbers as JSON numbers: still a value, not an error.
    model = ScriptedChatModel().enqueue(json.dumps({"order_id": 20240815, "phone": 13812345678}))
    findings = extract_model_slots(model, "订单号 20240815，手机 13812345678")
    assert {(f.name, f.value) for f in findings} == {
        ("order_id", "20240815"),
        ("phone", "13812345678"),
    }
    assert len(model.history) == 1
