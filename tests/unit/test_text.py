"""The text toolkit: message text, folding, sentences, terms and think blocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage

from nodes.text import (
    CONTENT_STOPWORDS,
    ThinkStripper,
    fold,
    message_text,
    sentence_pieces,
    split_sentences,
    strip_think,
    terms,
    word_key,
)


def test_message_text_joins_text_blocks_and_leaves_out_the_rest() -> None:
    blocks = [
        {"type": "text", "text": "My order is "},
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
        {"type": "text", "text": "#A1001."},
    ]
    assert message_text(HumanMessage(content=blocks)) == "My order is #A1001."
    assert message_text(AIMessage("plain")) == "plain"


def test_strict_message_text_refuses_what_is_not_text() -> None:
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x"}}])
    with pytest.raises(ValueError, match="text content only, not 'image_url'"):
        message_text(image, strict=True)


def test_fold_ignores_width_case_and_spacing() -> None:
    assert fold("  Ann\tLEE ") == fold("ａｎｎ lee") == "ann lee"
    assert fold("Ann  Lee", spaces=False) == "annlee"


def test_sentences_end_at_marks_but_numbers_and_addresses_stay_whole() -> None:
    text = (
        "Version 3.14 is out. Mail ann@example.com? See https://x.io/a?q=1 now!Ok\n你好。我是张三！"
    )
    assert split_sentences(text) == [
        "Version 3.14 is out.",
        "Mail ann@example.com?",
        "See https://x.io/a?q=1 now!Ok",
        "你好。",
        "我是张三！",
    ]
    assert split_sentences('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


@given(st.text(alphabet=st.sampled_from(list("ab .!?;。…\n\"'3"))))
def test_sentence_pieces_lose_nothing(text: str) -> None:
    assert "".join(sentence_pieces(text)) == text


def test_index_terms_keep_digits_and_stem() -> None:
    assert terms("Running to order 20931 at the cafés") == ["run", "order", "20931", "café"]


def test_content_terms_leave_out_function_words_in_both_languages() -> None:
    found = terms("Could you help me with my market reports?", stopwords=CONTENT_STOPWORDS)
    assert found == ["market", "report"]
    # Bigrams that hold a function character (我, 在) say nothing about the topic.
    assert terms("我在写市场报告", stopwords=CONTENT_STOPWORDS) == ["写市", "市场", "场报", "报告"]


def test_terms_shown_to_people_can_stay_unstemmed() -> None:
    assert terms("kettle lids", stopwords=CONTENT_STOPWORDS, stem_words=False) == ["kettle", "lids"]


@given(st.text(), st.text())
def test_the_word_key_of_a_beginning_is_a_prefix_of_the_whole_key(head: str, tail: str) -> None:
    assert word_key(head + tail).startswith(word_key(head))


def test_whole_text_think_stripping_matches_the_incremental_stripper() -> None:
    raw = "Sure<think>secret plan</think>\n\nHello <b> there<think>never closed"
    stripper = ThinkStripper()
    streamed = "".join(stripper.feed(ch) for ch in raw) + stripper.finish()
    assert strip_think(raw) == streamed.strip() == "SureHello <b> there"
