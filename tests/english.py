"""Is a reply readable English? Shape checks that random tokens fail and plain prose passes."""

from __future__ import annotations

import re

# The most frequent English words (function words and everyday verbs): any few sentences of
# English are full of them, a stream of random subword tokens is not.
_COMMON = """
    a about all also am an and any are as ask at be been but by can could do does for from get
    give going good great has have he hello help her here hi him his how i if in into is it its
    just know like look looking make may me more my need new no not now of on one or other our
    out over please question questions say see she should so some something sure tell than thank
    thanks that the their them then there these they thing things this those to today up us use
    very want was way we well were what when where which while who why will with would yes you
    your assist assistant designed here help helpful information language model name named
    provide answer chat support able happy questions today
"""
COMMON_WORDS = frozenset(_COMMON.split())

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def english_problems(text: str) -> list[str]:
    """What keeps ``text`` from reading as English; empty when it reads as English.

    Args:
        text: A model's reply.

    Returns:
        Human-readable reasons (too short, not ASCII, not words, too few common words).
    """
    problems: list[str] = []
    tokens = text.split()
    if len(tokens) < 6:
        problems.append(f"only {len(tokens)} words")
        return problems
    ascii_share = sum(ch.isascii() for ch in text) / len(text)
    if ascii_share < 0.97:
        problems.append(f"{ascii_share:.0%} ASCII characters")
    words = [t.strip(".,;:!?\"'()[]-*") for t in tokens]
    wordlike = [w for w in words if _WORD.fullmatch(w)]
    if len(wordlike) / len(tokens) < 0.85:
        problems.append(f"{len(wordlike)}/{len(tokens)} tokens are plain words")
    common = [w for w in wordlike if w.lower() in COMMON_WORDS]
    if len(common) / len(tokens) < 0.3:
        problems.append(f"{len(common)}/{len(tokens)} tokens are common English words")
    return problems
