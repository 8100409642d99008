"""Reply post-processing: thinking blocks and repeated sentences, whole or streamed."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.postprocess import ReplyStream, collapse_repeats, postprocess_reply
from nodes.text import strip_think


def test_think_block_is_removed() -> None:
    assert strip_think("<think>plan the answer</think>\n\nParis.") == "Paris."


def test_unterminated_think_block_is_removed() -> None:
    assert strip_think("Answer first.<think>still thinking") == "Answer first."


def test_reply_without_opening_tag_keeps_only_text_after_closer() -> None:
    assert strip_think("reasoning here</think>The answer is 4.") == "The answer is 4."


def test_repeated_sentences_collapse_to_one() -> None:
    text = "I can help with that. I can help with that. I can help with that. Here is how."
    assert collapse_repeats(text) == "I can help with that. Here is how."


def test_chinese_repeats_collapse() -> None:
    text = "我可以帮你处理这个订单。我可以帮你处理这个订单。请提供订单号。"
    assert collapse_repeats(text) == "我可以帮你处理这个订单。请提供订单号。"


def test_short_repeats_and_lists_are_kept() -> None:
    text = "Yes. Yes.\n1. Open the app.\n2. Open the menu."
    assert collapse_repeats(text) == text


def test_postprocess_combines_both() -> None:
    assert postprocess_reply("<think>x</think>Hello there friend. Hello there friend.") == (
        "Hello there friend."
    )


def test_code_blocks_keep_their_repeated_lines() -> None:
    text = (
        "Before:\n```python\nimport os\nprint(os.getcwd())\n```\n"
        "After:\n```python\nimport os\nprint(os.getcwd())\nprint(os.listdir())\n```"
    )
    assert postprocess_reply(text) == text


def test_repeated_prose_around_a_code_block_still_collapses() -> None:
    text = "Here is the fix. Here is the fix.\n```\nx = 1\n```\nHere is the fix. Done."
    assert collapse_repeats(text) == "Here is the fix. \n```\nx = 1\n```\nDone."


# -- the same post-processing as the reply streams ---------------------------------------------

_PARTS = st.sampled_from(
    [
        "I can help with that. ",
        "I can help with that.",
        "Here is how! ",
        "Yes. ",
        "Version 3.14 is out. ",
        "What now?",
        "我可以帮你处理这个订单。",
        "请提供订单号！",
        "好的…",
        "\n",
        "\n\n\n",
        "  ",
        "\t",
        "```python\n",
        "```\n",
        "~~~\n",
        "  ```\n",
        "x = 1\n",
        "<think>",
        "</think>",
        "plan ",
        "<",
        "`",
    ]
)


@st.composite
def _chunked_replies(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = "".join(draw(st.lists(_PARTS, max_size=14)))
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(_chunked_replies())
def test_streamed_pieces_join_to_the_post_processed_whole(reply: tuple[str, list[str]]) -> None:
    text, pieces = reply
    stream = ReplyStream()
    deltas = [stream.feed(piece) for piece in pieces]
    deltas.append(stream.finish())
    assert "".join(deltas) == postprocess_reply(text)


def _deltas(pieces: list[str]) -> list[str]:
    stream = ReplyStream()
    deltas = [stream.feed(piece) for piece in pieces]
    deltas.append(stream.finish())
    return deltas


def test_leading_white_space_is_dropped_and_trailing_held_until_text_follows() -> None:
    assert _deltas(["\n\n  Hello", " ", "there", "\n\n"]) == ["Hello", "", " there", "", ""]


def test_a_reply_of_only_newlines_streams_nothing() -> None:
    assert _deltas(["\n"] * 24) == [""] * 25


def test_the_first_sentence_streams_before_it_ends_and_a_repeat_is_dropped_whole() -> None:
    pieces = ["I can ", "help with that. ", "I can ", "help with that. ", "Here ", "is how."]
    assert _deltas(pieces) == ["I can", " help with that.", "", "", " Here", " is how.", ""]


def test_a_fenced_code_block_streams_unchanged() -> None:
    code = "```python\nprint(1)\nprint(1)\n\n\n\nprint(2)\n```"
    assert "".join(_deltas(["Run:\n", *code])) == "Run:\n" + code
