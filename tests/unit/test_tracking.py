"""Conversation tracking: topic stability and change, bounded entities, pending questions."""

from __future__ import annotations

from nodes.state import PendingQuestion
from nodes.tracking import (
    MAX_ENTITIES,
    MAX_PENDING,
    add_pending,
    detect_questions,
    extract_entities,
    next_topic,
    resolve_pending,
    update_entities,
)


def run_topics(turns: list[str], *, tasks: dict[int, str] | None = None) -> list[str | None]:
    topic: str | None = None
    seen: list[str] = []
    out: list[str | None] = []
    for i, text in enumerate(turns):
        seen.append(text)
        topic = next_topic(topic, seen[-3:], task=(tasks or {}).get(i))
        out.append(topic)
    return out


def test_topic_comes_from_the_task_and_stays_while_the_user_stays_on_it() -> None:
    topics = run_topics(
        [
            "I'm writing a market report about EV batteries.",
            "What growth rate should I assume for battery demand?",
            "ok thanks",
            "How do lithium prices affect the report?",
        ],
        tasks={0: "writing a market report about EV batteries"},
    )
    assert topics == ["market report about EV batteries"] * 4


def test_topic_changes_when_the_user_names_a_new_one() -> None:
    topics = run_topics(
        [
            "I'm writing a market report about EV batteries.",
            "Let's talk about my vacation plans.",
            "I want to visit Japan in spring.",
        ],
        tasks={0: "writing a market report about EV batteries"},
    )
    assert topics[1] == "my vacation plans"
    assert topics[2] == "my vacation plans"


def test_topic_changes_when_the_old_one_is_not_mentioned_for_two_turns() -> None:
    topics = run_topics(
        [
            "How do I bake sourdough bread?",
            "My sourdough bread is too dense.",
            "Which laptop is best for video editing?",
            "Does the laptop need a dedicated GPU?",
        ]
    )
    assert "sourdough bread" in (topics[0] or "")
    assert topics[1] == topics[0]
    # One turn on something else does not move the topic; a second one does.
    assert topics[2] == topics[0]
    assert topics[3] == "laptop"


def test_chinese_topic_from_task_and_explicit_change() -> None:
    topics = run_topics(
        [
            "我正在准备一份关于电动车电池的市场报告",
            "锂价格对电池成本有什么影响？",
            "好的",
            "换个话题，我想去日本旅游",
        ],
        tasks={0: "准备一份关于电动车电池的市场报告"},
    )
    assert topics[0] == "关于电动车电池的市场报告"
    assert topics[1] == topics[2] == topics[0]
    assert topics[3] == "去日本旅游"


def test_no_content_keeps_no_topic() -> None:
    assert run_topics(["ok", "thanks!"]) == [None, None]


def test_entities_capitalised_quoted_ids_and_cjk() -> None:
    found = extract_entities(
        "I met John Smith in Beijing and ordered an iPhone from Apple Store. "
        'Order 20240815CN001 shipped. Ticket #4521 is called "Battery Drain".'
    )
    assert found == [
        "John Smith",
        "Beijing",
        "iPhone",
        "Apple Store",
        "20240815CN001",
        "#4521",
        "Battery Drain",
    ]
    assert extract_entities("我在北京市工作，想买《三体》和iPhone，订单20240815CN001。") == [
        "北京市",
        "三体",
        "iPhone",
        "20240815CN001",
    ]


def test_entities_skip_sentence_openers_and_plain_words() -> None:
    assert extract_entities("Please check my order. What is the status? Thanks, I am here.") == []
    assert extract_entities("it is 3pm and I bought the 2nd one") == []


def test_entities_are_deduped_most_recent_last_and_bounded() -> None:
    entities = update_entities(["Beijing", "Apple"], ["apple", "Tokyo"])
    assert entities == ["Beijing", "apple", "Tokyo"]
    many = update_entities(entities, [f"Product{i}" for i in range(40)])
    assert len(many) == MAX_ENTITIES
    assert many[-1] == "Product39"
    assert "Beijing" not in many


def test_questions_are_detected_in_english_and_chinese() -> None:
    assert detect_questions("How do I reset my password? And what is your refund policy? ok?") == [
        "How do I reset my password?",
        "And what is your refund policy?",
    ]
    assert detect_questions("我的订单到哪了？退款要多久呢。我很好。") == [
        "我的订单到哪了?",
        "退款要多久呢。",
    ]
    assert detect_questions("I'd like a refund. Thanks!") == []


def test_requests_read_as_preferences_are_not_pending() -> None:
    text = "Can you reply in English? Where is my parcel?"
    assert detect_questions(text, exclude=["Can you reply in English?"]) == ["Where is my parcel?"]


def test_pending_added_and_resolved_by_the_answering_reply() -> None:
    pending = add_pending(
        [], detect_questions("How do I reset my password? And what is your refund policy?"), 3
    )
    left = resolve_pending(pending, "Open Settings and click Reset password.", "stop", 3)
    assert left == [PendingQuestion(text="And what is your refund policy?", turn=3)]
    left = resolve_pending(left, "Our refund policy allows returns within 30 days.", "stop", 4)
    assert left == []


def test_chinese_question_resolved_by_chinese_answer() -> None:
    pending = add_pending([], detect_questions("退款政策是什么？"), 2)
    assert resolve_pending(pending, "我们的退款政策是30天内可以无理由退货。", "stop", 2) == []
    # A later reply about something else does not answer it.
    assert resolve_pending(pending, "今天天气不错。", "stop", 3) == pending


def test_direct_answer_to_the_turns_only_question_resolves_it() -> None:
    # Direct answers seldom repeat the question's words.
    for question, reply in [
        ("What is the capital of France?", "It is Paris."),
        ("Where is my parcel?", "It left our warehouse yesterday and arrives on Friday."),
        ("Hello, who are you?", "I am a helpful assistant. How can I help you today?"),
        ("你叫什么名字？", "我是一个助手，有什么可以帮你的吗？"),
    ]:
        pending = add_pending([], detect_questions(question), 4)
        assert pending, question
        assert resolve_pending(pending, reply, "stop", 4) == [], question
        # The same words a turn later are not its answer.
        assert resolve_pending(pending, reply, "stop", 5) == pending, question


def test_reply_cut_off_by_length_leaves_the_question_pending() -> None:
    pending = add_pending([], ["How do I reset my password?"], 5)
    assert (
        resolve_pending(pending, "Open Settings and click Reset password", "length", 5) == pending
    )


def test_reply_asking_back_leaves_the_question_pending() -> None:
    pending = add_pending([], ["How do I reset my password?"], 5)
    reply = "Do you mean the account password or the Wi-Fi password?"
    assert resolve_pending(pending, reply, "stop", 5) == pending
    assert resolve_pending(pending, "您是指哪个密码呢？", "stop", 5) == pending


def test_courtesy_closing_question_does_not_block_resolution() -> None:
    pending = add_pending([], ["What is your refund policy?"], 2)
    reply = "Our refund policy allows returns within 30 days. Anything else I can help with?"
    assert resolve_pending(pending, reply, "stop", 2) == []


def test_bare_follow_up_question_is_answered_by_the_next_reply_only() -> None:
    pending = add_pending([], ["Why?"], 7)
    assert resolve_pending(pending, "Because the cache was stale.", "stop", 7) == []
    assert resolve_pending(pending, "Because the cache was stale.", "stop", 8) == pending


def test_pending_is_bounded_and_a_repeated_question_moves_to_the_end() -> None:
    pending: list[PendingQuestion] = []
    for turn in range(1, 12):
        pending = add_pending(pending, [f"What about option {turn}?"], turn)
    assert len(pending) == MAX_PENDING
    assert pending[0]["text"] == f"What about option {12 - MAX_PENDING}?"
    again = add_pending(pending, ["what about option 5?"], 12)
    assert again[-1] == PendingQuestion(text="what about option 5?", turn=12)
    assert len(again) == MAX_PENDING
