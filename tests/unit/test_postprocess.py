"""Reply post-processing: thinking blocks and repeated sentences."""

from nodes.postprocess import collapse_repeats, postprocess_reply
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
