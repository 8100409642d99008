"""The readable-English check used on real models' replies tells prose from random tokens."""

from __future__ import annotations

from tests.english import english_problems


def test_plain_english_passes() -> None:
    reply = "Hello! I'm a helpful assistant. I can answer your questions or help you write."
    assert english_problems(reply) == []


def test_random_tokens_of_the_tiny_model_fail() -> None:
    # A reply of the random-weight tiny model to "Hello, who are you?".
    noise = "317Then 657 turn 没55 17 you25样 下z 面 面se 无 面 you.More 客X客 天 can手il于question"
    assert english_problems(noise) != []


def test_gibberish_made_of_ascii_letters_fails() -> None:
    assert english_problems("qzx vbnm rtyp lkjh wqer tyui opas dfgh jklz xcvb") != []


def test_too_short_fails() -> None:
    assert english_problems("Hello there.") != []
