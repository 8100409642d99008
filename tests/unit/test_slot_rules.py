"""The deterministic slot rules: each rule in English and Chinese, positive and negative."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodes.slot_rules import (
    SlotFinding,
    extract_rule_slots,
    is_question,
    memo_key,
    style_dimension,
)
from nodes.text import normalize_text

# A Monday, so weekday arithmetic is easy to check by hand.
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def slots(text: str, *, now: datetime | None = NOW) -> dict[str, str]:
    return {f.name: f.value for f in extract_rule_slots(text, now=now)}


POSITIVE = [
    # names
    ("Hi, my name is Alice Smith and I need help.", "name", "Alice Smith"),
    ("my name is li ming", "name", "li ming"),
    ("Call me Bob.", "name", "Bob"),
    ("Hello, I'm Alice.", "name", "Alice"),
    ("I'm Alice from support", "name", "Alice"),
    ("我叫李明，今年30岁。", "name", "李明"),
    ("我的名字是王芳", "name", "王芳"),
    ("你好，我是李明。", "name", "李明"),
    ("你可以叫我小李", "name", "小李"),
    ("My name is 李明.", "name", "李明"),
    # a sentence-final particle or "就行" after the name is not part of it
    ("叫我小王就行", "name", "小王"),
    ("叫我老李吧", "name", "老李"),
    ("我叫王芳啊", "name", "王芳"),
    ("你可以叫我小张哦", "name", "小张"),
    ("我是李明呀", "name", "李明"),
    # emails
    ("My email is li.ming@example.com.", "email", "li.ming@example.com"),
    ("邮箱是li@example.cn，谢谢", "email", "li@example.cn"),
    # a value the user says is not theirs is not taken (the other one is)
    ("my email is a@x.com, not b@x.com", "email", "a@x.com"),
    ("不对，我的邮箱是 new@x.com，不是 old@x.com", "email", "new@x.com"),
    ("my phone is +1 415 555 2671, not +1 415 555 2672", "phone", "+1 415 555 2671"),
    ("it's order #A1002, not #A1001", "order_id", "A1002"),
    # phones
    ("Call me at +1 415-555-0132 please", "phone", "+1 415-555-0132"),
    ("you can reach me on +44 20 7946 0958", "phone", "+44 20 7946 0958"),
    ("我的手机是13812345678", "phone", "13812345678"),
    ("手机：+86 138 1234 5678", "phone", "+86 138 1234 5678"),
    ("电话 138-1234-5678", "phone", "138-1234-5678"),
    # order and ticket numbers
    ("My order #20240815CN001 hasn't arrived.", "order_id", "20240815CN001"),
    ("order number 4471-A is late", "order_id", "4471-A"),
    ("订单号 20240815CN001 到哪了？", "order_id", "20240815CN001"),
    ("订单号是#20240815CN001", "order_id", "20240815CN001"),
    ("ticket 4521", "ticket_id", "4521"),
    ("Any news on ticket #T-889?", "ticket_id", "T-889"),
    ("工单号：T-889", "ticket_id", "T-889"),
    ("工单 4521 还没处理", "ticket_id", "4521"),
    # dates
    ("Let's meet on 2024-08-15.", "date", "2024-08-15"),
    ("I fly on March 3.", "date", "March 3"),
    ("The deadline is 3rd of March, 2027.", "date", "3rd of March, 2027"),
    ("我3月5日出发", "date", "3月5日"),
    ("2025年3月5日交付", "date", "2025年3月5日"),
    ("I'll come tomorrow.", "date", "tomorrow (2026-11-24)"),
    ("next Friday works", "date", "next Friday (2026-12-04)"),
    ("明天见", "date", "明天 (2026-11-24)"),
    ("下周一开会", "date", "下周一 (2026-11-30)"),
    ("上星期日我下单了", "date", "上星期日 (2026-11-22)"),
    # language
    ("reply in English", "language", "English"),
    ("please answer in Chinese", "language", "Chinese"),
    ("Can you reply in English?", "language", "English"),
    ("From now on, respond in Japanese.", "language", "Japanese"),
    ("请用中文回答", "language", "中文"),
    ("用英文", "language", "英文"),
    ("以后都用英语回复我吧", "language", "英语"),
    # style
    ("no abbreviations please", "style:abbreviations", "no abbreviations"),
    ("Please don't use acronyms.", "style:abbreviations", "don't use acronyms"),
    ("不要用缩写", "style:abbreviations", "不要用缩写"),
    ("不要使用缩写", "style:abbreviations", "不要使用缩写"),
    ("be concise", "style:length", "be concise"),
    ("简洁一点", "style:length", "简洁一点"),
    ("回答详细一点", "style:length", "回答详细一点"),
    ("use bullet points", "style:format", "use bullet points"),
    ("请分点回答", "style:format", "分点回答"),
    ("formal tone", "style:tone", "formal tone"),
    ("请用正式的语气", "style:tone", "用正式的语气"),
    # task
    (
        "I'm writing a market report about EV batteries.",
        "task",
        "writing a market report about EV batteries",
    ),
    ("We are planning a product launch, and I need ideas.", "task", "planning a product launch"),
    ("Help me write a cover letter", "task", "write a cover letter"),
    ("我正在写一份市场报告，需要一些数据。", "task", "写一份市场报告"),
    ("我的任务是整理季度数据", "task", "整理季度数据"),
    # memos
    ("remember that my flight is on Friday", "memo:flight", "my flight is on Friday"),
    (
        "Please remember: the wifi password is tulip42.",
        "memo:wifi-password",
        "the wifi password is tulip42",
    ),
    ("请记住我的航班是周五", "memo:航班", "我的航班是周五"),
]


@pytest.mark.parametrize(("text", "name", "value"), POSITIVE)
def test_rule_reads_the_value(text: str, name: str, value: str) -> None:
    assert slots(text).get(name) == value


NEGATIVE = [
    ("I'm tired.", "name"),
    ("I'm writing a market report.", "name"),
    ("I am Chinese.", "name"),
    ("what is my name?", "name"),
    ("Do you know my name?", "name"),
    ("Call me at 6pm.", "name"),
    ("我是学生。", "name"),
    ("我是高中生", "name"),
    ("您好，我是王经理。", "name"),
    ("我叫什么名字？", "name"),
    ("他叫我去吃饭。", "name"),
    ("我叫了一辆车", "name"),
    ("reach me at user at example dot com", "email"),
    ("follow @steadychat for news", "email"),
    ("I need 3 apples", "phone"),
    ("My order #20240815CN001 hasn't arrived.", "phone"),
    ("Call me at 13812345678", "order_id"),
    ("my phone is 13812345678 and I have an order question", "order_id"),
    ("I want to order 100 units.", "order_id"),
    ("My order arrived.", "order_id"),
    ("我的手机是13812345678", "order_id"),
    ("I bought a ticket to Paris.", "ticket_id"),
    ("我买了一张票", "ticket_id"),
    ("How are you today?", "date"),
    ("I'll come tomorrow.", None),  # see test_relative_dates_need_the_message_time
    ("我今天很忙", "date"),
    ("February 30 does not exist", "date"),
    ("I may 5 times try", "date"),
    ("I'm learning English.", "language"),
    ("Do you speak French?", "language"),
    ("translate this into English", "language"),
    ("I use English at work.", "language"),
    ("Write a poem in French", "language"),
    ("用英文怎么说？", "language"),
    ("我喜欢用英文写日记", "language"),
    ("What does this abbreviation mean?", "style:abbreviations"),
    ("缩写是什么意思？", "style:abbreviations"),
    ("这个设计很简洁", "style:length"),
    ("what is a bullet point?", "style:format"),
    ("这个列表有问题", "style:format"),
    ("I have a formal dinner tonight.", "style:tone"),
    ("他是正式员工", "style:tone"),
    ("I'm working", "task"),
    ("What am I working on?", "task"),
    ("I'm writing to complain.", "task"),
    ("我在家", "task"),
    ("你在写什么？", "task"),
    ("do you remember my name?", "memo"),
    ("I can't remember the password.", "memo"),
    ("你还记得我叫什么吗？", "memo"),
    ("我记住了", "memo"),
]


@pytest.mark.parametrize(("text", "name"), NEGATIVE)
def test_rule_sets_nothing(text: str, name: str | None) -> None:
    found = slots(text) if name is not None else slots(text, now=None)
    if name is None:
        assert "date" not in found
    elif name == "memo":
        assert not any(key.startswith("memo:") for key in found)
    else:
        assert name not in found


def test_relative_dates_need_the_message_time() -> None:
    assert "date" not in slots("I'll come tomorrow.", now=None)
    assert slots("I'll come tomorrow.")["date"] == "tomorrow (2026-11-24)"


def test_values_are_never_invented() -> None:
    for text, _, _ in POSITIVE:
        normalised = normalize_text(text)
        for finding in extract_rule_slots(text, now=NOW):
            literal = finding.value.split(" (")[0] if finding.name == "date" else finding.value
            assert literal in normalised, (text, finding)
            assert finding.evidence and finding.evidence in normalised


def test_correction_in_the_same_message_keeps_the_last_value() -> None:
    assert slots("My email is a@x.com, sorry, b@x.com")["email"] == "b@x.com"
    assert slots("不对，我叫王芳")["name"] == "王芳"
    assert slots("actually my email is new.mail@example.org")["email"] == "new.mail@example.org"


def test_style_preferences_accumulate_one_slot_per_dimension() -> None:
    found = slots("Please be concise, use bullet points, and no abbreviations.")
    assert found == {
        "style:length": "be concise",
        "style:format": "use bullet points",
        "style:abbreviations": "no abbreviations",
    }
    assert style_dimension("be more detailed") == "length"
    assert style_dimension("the weather is nice") is None


def test_memo_keys_follow_the_subject() -> None:
    assert memo_key("my flight is on Friday") == memo_key("My flight is on Saturday.")
    assert memo_key("my flight is on Friday") != memo_key("my hotel is the Hilton")
    assert memo_key("我对花生过敏") == memo_key("我对花生过敏。")
    assert memo_key("我对花生过敏").startswith("memo:")
    assert memo_key("我对花生过敏") != memo_key("我不吃辣")


def test_full_width_text_is_normalised() -> None:
    found = slots("订单号：２０２４０８１５ＣＮ００１")
    assert found["order_id"] == "20240815CN001"


def test_one_message_with_many_slots() -> None:
    found = extract_rule_slots(
        "Hi, I'm Alice. My email is alice@example.com, order #A1234 is late, "
        "please reply in English.",
        now=NOW,
    )
    assert [f.name for f in found] == ["name", "email", "order_id", "language"]
    assert all(isinstance(f, SlotFinding) for f in found)
    assert found[1].rule == "email"
    assert found[0].evidence == "Hi, I'm Alice."
    assert found[3].evidence.endswith("please reply in English.")


@pytest.mark.parametrize(
    "text",
    [
        "Кстати, меня зовут Иван.",
        "مرحبا اسمي أحمد",
        "🙂🙂🙂",
        "",
        "   ",
        "私の名前は田中です。",
        "x" * 50_000,
        "?" * 1000,
        "订单号" * 500,
    ],
)
def test_other_languages_and_odd_input_never_crash(text: str) -> None:
    assert isinstance(extract_rule_slots(text, now=NOW), list)


def test_non_text_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="text must be a string"):
        extract_rule_slots(None)  # type: ignore[arg-type]


def test_is_question() -> None:
    assert is_question("What is my name?")
    assert is_question("你是谁")
    assert is_question("这样可以吗")
    assert not is_question("My name is Bob.")
    assert not is_question("What a day!")
