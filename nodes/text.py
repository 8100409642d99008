"""The text toolkit: message text, normalisation, sentences, terms, think blocks."""

from __future__ import annotations

import re
import string
import threading
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

import snowballstemmer
from langchain_core.messages import BaseMessage

__all__ = [
    "CONTENT_STOPWORDS",
    "INDEX_STOPWORDS",
    "SENTENCE",
    "THINK_CLOSE",
    "THINK_OPEN",
    "ThinkStripper",
    "fold",
    "held_prefix",
    "message_text",
    "normalize_text",
    "sentence_pieces",
    "split_sentences",
    "stem",
    "strip_think",
    "terms",
    "word_key",
]

# -- message text ----------------------------------------------------------------------------


def message_text(message: BaseMessage, *, strict: bool = False) -> str:
    """The plain text of a message: its string content, or its text blocks joined.

    Args:
        message: Any LangChain message.
        strict: Refuse content blocks that are not text (images, audio...) instead of
            leaving them out; for callers that must not silently drop part of a message.

    Returns:
        The text (LangChain's ``message.text``).

    Raises:
        ValueError: ``strict`` and the message holds a block that is not text.
    """
    if strict and not isinstance(message.content, str):
        for block in message.content:
            if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text"):
                continue
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"a message may hold text content only, not {kind!r} blocks")
    return message.text


# -- normalisation ---------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFKC-normalise text (full-width letters, digits and punctuation become ASCII).

    Args:
        text: Any text.

    Returns:
        The normalised text.
    """
    return unicodedata.normalize("NFKC", text)


def fold(text: str, *, spaces: bool = True) -> str:
    """Text as it is compared: NFKC, case-folded, white space runs as one space.

    Args:
        text: Any text.
        spaces: Keep one space where the text had white space; False removes white space
            entirely (so "ann  lee" and "AnnLee" compare equal).

    Returns:
        The folded text, without white space at either end.
    """
    words = normalize_text(text).casefold().split()
    return (" " if spaces else "").join(words)


_NON_WORD = re.compile(r"\W+")


def word_key(text: str) -> str:
    """The words of a text only, case-folded: equal for texts that say the same words.

    Punctuation and white space runs become one space. The key of a text's beginning is a
    prefix of the key of the whole text, so it can be compared while the text still grows.

    Args:
        text: Any text.

    Returns:
        The key ("Hello, World!" -> "hello world").
    """
    return _NON_WORD.sub(" ", text).strip().casefold()


# -- sentences -------------------------------------------------------------------------------

_ENDS = ".!?;。！？；…"
_CLOSERS = "\"'”’」』)）\\]"
# One match per sentence, and every character of a text belongs to exactly one match: the
# sentence, its end marks and closing quotes, and the white space after them; or a line and
# its line breaks. CJK marks end a sentence on their own. "." needs white space (or the end)
# after it, so that decimals, versions and addresses stay whole, and "!", "?" and ";" glued
# to a following ASCII word ("?q=1") do not end one either. Possessive runs keep matching
# linear on long runs of dots.
SENTENCE = re.compile(
    rf"(?:[^{_ENDS}\n]++|\.++(?![{_CLOSERS}]*+(?:\s|\Z))|[!?;](?=[A-Za-z0-9_]))*+"
    rf"(?:[{_ENDS}]+[{_CLOSERS}]*\s*|\n+|\Z)"
)
"""A sentence with what follows it up to the next one (white space, line breaks)."""


def sentence_pieces(text: str) -> Iterator[str]:
    """Cut a text into sentences without losing a character: ``"".join`` gives it back.

    Args:
        text: Any text.

    Yields:
        Each sentence with its end marks and the white space after it.
    """
    for match in SENTENCE.finditer(text):
        if match.group():
            yield match.group()


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (end marks kept, blank ones dropped).

    Sentences end at 。！？；… (and their ASCII forms), at "." followed by white space, and at
    line breaks.

    Args:
        text: Any text (rule passes hand it in NFKC-normalised).

    Returns:
        Sentences in order, each stripped.
    """
    return [piece.strip() for piece in sentence_pieces(text) if piece.strip()]


# -- terms -----------------------------------------------------------------------------------

# Han, Hiragana/Katakana, Hangul and the CJK compatibility blocks: scripts written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002a6df"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*")
_CJK_START = re.compile(rf"[{_CJK}]")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


INDEX_STOPWORDS = _words(
    """
    a an and are as at be been but by did do does for from had has have he her hers him his i if
    in into is it its me my of on or our she so than that the their them then there these they
    this those to was we were what when where which who whom why will with you your yours s t
    just about also very really oh yeah
    """
)
"""Function words left out of a search index; kept short on purpose (BM25's IDF does the rest)."""

CONTENT_STOPWORDS = _words(
    """
    a an the and or but if then so of to in on at by for with from about into over after
    before as is are was were be been being am do does did done have has had having i me my
    mine we us our you your yours he him his she her it its they them their this that these
    those there here what which who whom whose when where why how can could would will shall
    should may might must not no yes ok okay please thanks thank hi hello hey just also very
    really too more most some any all each every other such only own same than up down out
    off again further once now today tomorrow yesterday i'm i've i'd i'll you're it's that's
    don't doesn't didn't can't won't isn't aren't let let's like want need know think tell
    give get got make go going come help sure well right good great much many one two lot
    something anything everything nothing thing things way answer question reply say said
    maybe still even yet sorry fine bye goodbye see
    我们 你们 他们 一个 这个 那个 什么 可以 怎么 就是 还是 因为 所以 但是 如果 已经 没有 不是
    自己 我的 你的 请问 谢谢 你好 一下 现在 时候 然后 这样 那么 我想 我要 帮我
    """
) | frozenset(
    # Chinese function characters, and single letters and digits: no content on their own.
    "的了吗呢吧啊呀嘛么是在我你您他她它们这那个一些什么怎么为什么如何可以能会要想请帮给和与及或也都就还很太"
    "把被让对从到于有没不过着哦嗯好" + string.ascii_lowercase + string.digits
)
"""Words (and Chinese function characters) that say nothing about what a text is about."""

_stemmer_local = threading.local()


def _stemmer() -> snowballstemmer.stemmer:
    # Snowball stemmer objects keep per-call state, so each thread gets its own.
    stemmer = getattr(_stemmer_local, "stemmer", None)
    if stemmer is None:
        stemmer = snowballstemmer.stemmer("english")
        _stemmer_local.stemmer = stemmer
    return stemmer


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The Snowball (Porter 2) stem of an English word ("painting" -> "paint").

    Args:
        word: One lowercase word.

    Returns:
        Its stem.
    """
    return str(_stemmer().stemWord(word))


def _cjk_terms(run: str, stopwords: frozenset[str]) -> Iterator[str]:
    # Character bigrams (as Lucene's CJK analyzer does): no dictionary, no network, and
    # robust for Chinese words of two characters, the most common length. A bigram that is,
    # or holds, a function word or character carries no content.
    if len(run) == 1:
        if run not in stopwords:
            yield run
        return
    for i in range(len(run) - 1):
        gram = run[i : i + 2]
        if gram not in stopwords and gram[0] not in stopwords and gram[1] not in stopwords:
            yield gram


def terms(
    text: str, *, stopwords: frozenset[str] = INDEX_STOPWORDS, stem_words: bool = True
) -> list[str]:
    """Split text into terms: words and CJK character bigrams.

    The text is NFKC-normalised and case-folded. Latin-script words lose a possessive ``'s``
    and their apostrophes, words in ``stopwords`` are left out, and the rest are
    Snowball-stemmed; runs of CJK characters become overlapping character bigrams (a lone
    character stays a unigram). Digits are kept, so dates and order numbers match.

    Args:
        text: Any text.
        stopwords: What to leave out: ``INDEX_STOPWORDS`` (the default) for a search index,
            ``CONTENT_STOPWORDS`` for the words that say what a text is about.
        stem_words: Stem words; False keeps them as written (lowercased), for terms shown to
            people, such as topics.

    Returns:
        The terms in text order (repeats kept: they are term frequencies).
    """
    normalized = normalize_text(text).casefold().replace("\u2019", "'")
    out: list[str] = []
    for match in _TOKEN.finditer(normalized):
        token = match.group()
        if _CJK_START.match(token):
            out.extend(_cjk_terms(token, stopwords))
            continue
        if token in stopwords:
            continue
        if token.endswith("'s"):
            token = token[:-2]
        token = token.replace("'", "")
        if not token or token in stopwords:
            continue
        out.append(stem(token) if stem_words and token.isalpha() else token)
    return out


# -- think blocks ----------------------------------------------------------------------------

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def held_prefix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``.

    Text arriving in pieces must hold such a tail back: the next piece may complete the marker.

    Args:
        text: The text so far.
        marker: A tag or stop sequence.

    Returns:
        How many characters at the end of ``text`` could still begin ``marker``.
    """
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ThinkStripper:
    """Removes ``<think>...</think>`` blocks from text that arrives in pieces.

    A tail that could be the start of a tag is held back until the next piece decides it, and an
    unterminated block at the end is dropped. Whitespace right after a closed block is dropped
    too, since the reply proper starts there.

    Args:
        in_think: The text starts inside a block (the prompt opened it).
    """

    def __init__(self, *, in_think: bool = False) -> None:
        self._buffer = ""
        self._in_think = in_think
        self._trim_leading = False

    def feed(self, text: str) -> str:
        """Add a piece of raw text; return the visible text that is now certain."""
        self._buffer += text
        out: list[str] = []
        while True:
            if self._in_think:
                end = self._buffer.find(THINK_CLOSE)
                if end < 0:
                    # The thought itself is never shown; keep only what could start the tag.
                    keep = held_prefix(self._buffer, THINK_CLOSE)
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                self._in_think = False
                self._trim_leading = True
                continue
            if self._trim_leading:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    break
                self._trim_leading = False
            start = self._buffer.find(THINK_OPEN)
            if start >= 0:
                out.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(THINK_OPEN) :]
                self._in_think = True
                continue
            keep = held_prefix(self._buffer, THINK_OPEN)
            out.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return "".join(out)

    def finish(self) -> str:
        """Flush: return held-back visible text; a dangling think block is dropped."""
        rest = "" if self._in_think else self._buffer
        self._buffer = ""
        return rest


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks from a whole text, and white space at both ends.

    An unterminated block at the end is dropped. Qwen3 thinking checkpoints may also omit the
    opening tag (the template opens it): a closer before any opener means that everything up
    to it is thinking.

    Args:
        text: A whole reply.

    Returns:
        The visible text.
    """
    close = text.find(THINK_CLOSE)
    opened = text.find(THINK_OPEN)
    stripper = ThinkStripper(in_think=close >= 0 and (opened < 0 or close < opened))
    return (stripper.feed(text) + stripper.finish()).strip()
