"""Tests for the summary helpers: extractive and model L1 lines, pinned facts, the L2 fold."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from nodes.state import LongSummary, SummaryChunk
from nodes.summaries import (
    SummaryLimits,
    detect_language,
    extractive_line,
    fold_into_long,
    invents_identifiers,
    loses_pinned_fact,
    pinned_facts_from_slots,
    summarize_with_model,
)
from tests.fakes import ScriptedChatModel

PINNED = {"name": "Ann Lee", "order_id": "A-10023", "email": "ann@example.com"}


def _exchanges() -> list[BaseMessage]:
    return [
        HumanMessage("Hello. My name is Ann Lee and I ordered a blue kettle last week."),
        AIMessage("Hello Ann, thanks for reaching out. What happened with the kettle?"),
        HumanMessage("It arrived with a cracked lid. The order number is A-10023."),
        AIMessage("Sorry about that. I can offer a refund or a replacement kettle."),
        HumanMessage("Thanks. Can the replacement kettle ship to my office instead? Ok."),
        AIMessage("Yes, we can ship the replacement kettle to any address you give us."),
        HumanMessage("Please send the confirmation to ann@example.com then."),
        AIMessage("Done, the confirmation will go to that address."),
    ]


def _chunk(first: int, last: int, text: str) -> SummaryChunk:
    return SummaryChunk(first_turn=first, last_turn=last, text=text, method="extractive")


# --- extractive_line -------------------------------------------------------------------------


def test_extractive_line_is_one_bounded_line_of_user_sentences_with_every_value() -> None:
    line = extractive_line(_exchanges(), PINNED, limits=SummaryLimits(line_chars=200))

    assert len(line) <= 200
    assert "\n" not in line
    for value in PINNED.values():
        assert value in line
    # Assistant prose is not quoted; the user's own words are.
    assert "I can offer a refund" not in line
    assert "cracked lid" in line or "blue kettle" in line


def test_extractive_line_appends_values_that_no_kept_sentence_carries() -> None:
    # Too short for the sentences holding the values: they are appended as name: value.
    line = extractive_line(_exchanges(), PINNED, limits=SummaryLimits(line_chars=90))

    assert len(line) <= 90
    for name, value in PINNED.items():
        assert value in line, (name, line)


def test_extractive_line_leaves_out_values_the_range_does_not_mention() -> None:
    line = extractive_line(_exchanges(), {**PINNED, "phone": "+1 555 0100"})

    assert "555 0100" not in line
    assert "phone" not in line


def test_extractive_line_prefers_content_over_small_talk() -> None:
    turns = [
        HumanMessage("Hello there. Thanks a lot. Ok."),
        HumanMessage("The invoice for the kettle refund shows the wrong amount of 49.90 EUR."),
        HumanMessage("Yes, thanks."),
    ]
    # Room for everything: small talk is still left out.
    line = extractive_line(turns, {}, limits=SummaryLimits(line_chars=300))

    assert line == ("User: The invoice for the kettle refund shows the wrong amount of 49.90 EUR.")


def test_extractive_line_of_small_talk_only_keeps_the_small_talk() -> None:
    assert extractive_line([HumanMessage("Hello there. Thanks a lot")], {}) == (
        "User: Hello there. Thanks a lot."
    )


def test_extractive_line_handles_chinese() -> None:
    turns = [
        HumanMessage("你好，我叫李明。我想查询一下订单，订单号是20240815CN001。"),
        AIMessage("好的，请稍等，我来查询。"),
        HumanMessage("快递已经三天没有更新了，是不是丢件了？请用中文回复，不要用缩写。"),
    ]
    pinned = {"name": "李明", "order_id": "20240815CN001"}

    line = extractive_line(turns, pinned, limits=SummaryLimits(line_chars=60))

    assert line.startswith("用户：")
    assert len(line) <= 60
    assert "李明" in line and "20240815CN001" in line
    assert "请稍等" not in line


def test_extractive_line_of_nothing_is_empty() -> None:
    assert extractive_line([HumanMessage(""), AIMessage("")], PINNED) == ""


# --- pinned facts ----------------------------------------------------------------------------


def test_pinned_facts_come_from_slots_that_hold_a_value() -> None:
    slots = {
        "name": {
            "value": "Ann Lee",
            "turn": 1,
            "source": "rule:name",
            "evidence": "",
            "history": [],
        },
        "phone": {"value": None, "turn": 2, "source": "user", "evidence": "", "history": []},
    }
    assert pinned_facts_from_slots(slots) == {"name": "Ann Lee"}
    assert pinned_facts_from_slots(None) == {}


def test_loses_pinned_fact_only_counts_values_the_folded_text_holds() -> None:
    folded = "my name is Ann Lee, order A-10023"
    pinned = {"name": "Ann Lee", "order_id": "A-10023", "email": "ann@example.com"}

    assert loses_pinned_fact("Ann Lee asked about her order.", pinned, folded_text=folded)
    assert not loses_pinned_fact("ann  lee asked about order a-10023.", pinned, folded_text=folded)
    # Without the folded text every value is required.
    assert loses_pinned_fact("Ann Lee, order A-10023.", pinned)


def test_invents_identifiers_flags_numbers_and_addresses_the_text_lacks() -> None:
    source = "我叫李明，订单号是20240815CN001，邮箱 li@example.com，重 3.5 kg。"

    assert not invents_identifiers("李明的订单20240815CN001还没发货。", source)
    assert not invents_identifiers("Mail li@example.com about the 3.5 kg parcel.", source)
    assert invents_identifiers("订单20240815CN002还没发货。", source)
    assert invents_identifiers("Mail lee@example.com.", source)
    assert invents_identifiers("Delivery is due on 2026-03-01.", source)


def test_detect_language() -> None:
    assert detect_language("我想退货，订单号 A-1") == "zh"
    assert detect_language("I want to return order 12") == "en"


# --- summarize_with_model --------------------------------------------------------------------


def test_summarize_with_model_asks_for_one_precise_sentence_and_cleans_the_reply() -> None:
    model = ScriptedChatModel().enqueue(
        "<think>let me see</think>\nSummary: Ann Lee reported a cracked kettle lid;\n"
        "a replacement ships to her office."
    )

    text = summarize_with_model(model, _exchanges(), language_hint="en", pinned_facts=PINNED)

    assert text == "Ann Lee reported a cracked kettle lid; a replacement ships to her office."
    call = model.history[0]
    assert call["kwargs"]["profile"] == "precise"
    assert 0 < call["kwargs"]["max_new_tokens"] <= 128
    system, request = call["messages"]
    assert "one sentence" in str(system.content)
    assert "no" in str(system.content).lower() and "add" in str(system.content)
    assert "User: It arrived with a cracked lid." in str(request.content)
    assert "Ann Lee" in str(request.content)


def test_summarize_with_model_prompts_in_chinese_for_a_chinese_conversation() -> None:
    model = ScriptedChatModel().enqueue("李明询问订单物流，尚未解决。")
    turns = [HumanMessage("我叫李明，快递三天没更新了。"), AIMessage("我来查询。")]

    text = summarize_with_model(model, turns, language_hint=None)

    assert text == "李明询问订单物流，尚未解决。"
    system, request = model.history[0]["messages"]
    assert "一句" in str(system.content)
    assert "用户：我叫李明" in str(request.content)


@pytest.mark.parametrize("reply", ["", "   \n ", "<think>only thinking</think>"])
def test_summarize_with_model_returns_none_for_empty_output(reply: str) -> None:
    model = ScriptedChatModel().enqueue(reply)
    assert summarize_with_model(model, _exchanges(), language_hint="en") is None


def test_summarize_with_model_returns_none_when_the_model_fails() -> None:
    def boom(_: list[BaseMessage]) -> str:
        raise RuntimeError("out of memory")

    model = ScriptedChatModel(responder=boom)
    assert summarize_with_model(model, _exchanges(), language_hint="en") is None


def test_summarize_with_model_clips_a_rambling_reply() -> None:
    model = ScriptedChatModel().enqueue("word " * 400)
    text = summarize_with_model(
        model, _exchanges(), language_hint="en", limits=SummaryLimits(line_chars=120)
    )
    assert text is not None and len(text) <= 120


# --- fold_into_long --------------------------------------------------------------------------


def test_extractive_fold_keeps_turn_range_every_pinned_fact_and_the_lines() -> None:
    chunks = [
        _chunk(1, 4, "User: My kettle order A-10023 arrived broken."),
        _chunk(5, 8, "User: The replacement kettle should ship to my office."),
    ]

    long = fold_into_long(None, chunks, PINNED, None)

    assert (long["first_turn"], long["last_turn"]) == (1, 8)
    assert long["method"] == "extractive"
    for name, value in PINNED.items():
        assert f"{name}: {value}" in long["facts"]
    assert "arrived broken" in long["narrative"] and "(turns 5-8)" in long["narrative"]
    assert "kettle" in long["topics"]


def test_fold_replaces_a_slot_value_that_changed() -> None:
    first = fold_into_long(None, [_chunk(1, 2, "User: hi.")], {"email": "old@example.com"}, None)
    second = fold_into_long(
        first, [_chunk(3, 4, "User: new mail.")], {"email": "new@example.com"}, None
    )

    assert "email: new@example.com" in second["facts"]
    assert not any("old@example.com" in fact for fact in second["facts"])
    assert second["first_turn"] == 1 and second["last_turn"] == 4


def test_repeated_folds_stay_bounded_and_keep_every_pinned_fact() -> None:
    limits = SummaryLimits(narrative_chars=400, max_topics=5, max_questions=3)
    pinned = {"name": "Ann Lee", "city": "Lyon"}
    long: LongSummary | None = None
    sizes = []
    for i in range(60):
        text = f"User: Topic{i} needs work on component{i} and module{i}. Does part{i} fit?"
        long = fold_into_long(
            long,
            [_chunk(2 * i + 1, 2 * i + 2, text)],
            pinned,
            None,
            pending_questions=[f"Does part{i} fit?"],
            limits=limits,
        )
        sizes.append(len(json.dumps(long)))

    assert long is not None
    assert long["first_turn"] == 1 and long["last_turn"] == 120
    assert len(long["narrative"]) <= 400
    assert len(long["topics"]) <= 5 and len(long["open_questions"]) <= 3
    assert len(long["resolved"]) <= 3
    assert {"name: Ann Lee", "city: Lyon"} <= set(long["facts"])
    # The newest material survives, the oldest narrative was trimmed.
    assert "Topic59" in long["narrative"] and "Topic0 " not in long["narrative"]
    # Trimming drops whole labelled segments, never half of one.
    assert long["narrative"].startswith("(turns ")
    assert max(sizes[30:]) <= max(sizes[:30]) * 1.2


def test_extractive_fold_tracks_open_and_resolved_questions() -> None:
    chunks = [_chunk(1, 4, "User: Can I get a refund? Where is my parcel?")]

    first = fold_into_long(None, chunks, {}, None, pending_questions=["Where is my parcel?"])
    assert first["open_questions"] == ["Where is my parcel?"]
    assert first["resolved"] == ["Can I get a refund?"]

    later = fold_into_long(first, [_chunk(5, 6, "User: Fine.")], {}, None, pending_questions=[])
    assert later["open_questions"] == []
    assert "Where is my parcel?" in later["resolved"]


def test_model_fold_uses_validated_json_and_still_pins_every_fact() -> None:
    reply = {
        "topics": ["kettle replacement"],
        "facts": ["Ann prefers delivery to her office", "name: Someone Else"],
        "resolved": ["refund or replacement"],
        "open_questions": ["delivery date"],
        "narrative": "Ann reported a broken kettle and chose a replacement.",
    }
    model = ScriptedChatModel().enqueue("```json\n" + json.dumps(reply) + "\n```")

    long = fold_into_long(None, [_chunk(1, 8, "User: kettle broke.")], PINNED, model)

    assert long["method"] == "model"
    assert long["topics"] == ["kettle replacement"]
    assert long["narrative"] == reply["narrative"]
    assert long["open_questions"] == ["delivery date"]
    for name, value in PINNED.items():
        assert f"{name}: {value}" in long["facts"]
    # A model's "name: ..." that contradicts the slot does not survive.
    assert "name: Someone Else" not in long["facts"]
    assert "Ann prefers delivery to her office" in long["facts"]
    call = model.history[0]
    assert call["kwargs"]["profile"] == "precise"
    assert "A-10023" in str(call["messages"][-1].content)


@pytest.mark.parametrize(
    "reply",
    [
        "I could not summarize this.",
        '{"topics": "not a list", "facts": []}',
        '{"topics": [1, {"a": 2}]}',
        '["a", "b"]',
    ],
)
def test_model_fold_falls_back_to_extractive_on_invalid_output(reply: str) -> None:
    model = ScriptedChatModel().enqueue(reply)

    long = fold_into_long(None, [_chunk(1, 4, "User: kettle broke.")], PINNED, model)

    assert long["method"] == "extractive"
    assert "kettle broke" in long["narrative"]
    assert "email: ann@example.com" in long["facts"]


def test_model_fold_falls_back_when_the_model_raises() -> None:
    def boom(_: list[BaseMessage]) -> str:
        raise TimeoutError("generation timed out")

    long = fold_into_long(
        None, [_chunk(1, 4, "User: kettle broke.")], PINNED, ScriptedChatModel(responder=boom)
    )
    assert long["method"] == "extractive"


def test_model_fold_that_outgrows_the_window_folds_extractively_without_asking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = ScriptedChatModel(context_window=420).enqueue('{"topics": ["never asked"]}')
    chunks = [_chunk(1, 4, "User: kettle broke. " + "It leaks everywhere. " * 20)]

    with caplog.at_level("INFO", logger="nodes.summaries"):
        long = fold_into_long(None, chunks, PINNED, model)

    assert long["method"] == "extractive"
    assert "kettle broke" in long["narrative"]
    assert model.history == []  # the model never saw a prompt it could not hold
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    assert "window is 420" in caplog.text


def test_fold_without_chunks_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fold_into_long(None, [], PINNED, None)
