"""Reply post-processing: strip thinking blocks, collapse repeated sentences."""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_DANGLING_THINK = re.compile(r"<think>.*\Z", re.DOTALL)
# A sentence ends at . ! ? or their full-width forms (with the white space after them), or a
# line break; every character of the text belongs to exactly one match.
_SENTENCE = re.compile(r"[^.!?。！？\n]*(?:[.!?。！？]+\s*|\n+|\Z)")


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, an unterminated trailing one, and a stray closer.

    Qwen3 thinking checkpoints may also omit the opening tag (the template opens it), in which
    case everything up to a lone ``</think>`` is thinking.
    """
    text = _THINK_BLOCK.sub("", text)
    text = _DANGLING_THINK.sub("", text)
    if "</think>" in text:
        text = text.split("</think>")[-1]
    return text.strip()


def _key(sentence: str) -> str:
    return re.sub(r"\W+", " ", sentence).strip().lower()


# A fenced code block (``` or ~~~), up to its closing fence or the end of the reply.
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)


def collapse_repeats(text: str, *, min_chars: int = 8) -> str:
    """Drop sentences that repeat an earlier sentence of the same reply.

    Small models under long contexts loop ("I can help. I can help. I can help."); a repeated
    sentence adds nothing. Short fragments (under ``min_chars`` of word characters) are kept, as
    repeats of "Yes." or list markers are legitimate. Fenced code blocks are left exactly as
    they are: repeated lines are normal in code. A dropped sentence's line break is kept.
    """
    seen: set[str] = set()
    out: list[str] = []
    pos = 0
    for fence in [*_FENCE.finditer(text), None]:
        prose = text[pos : fence.start() if fence else len(text)]
        kept: list[str] = []
        for match in _SENTENCE.finditer(prose):
            sentence = match.group(0)
            key = _key(sentence)
            if len(key) >= min_chars and key in seen:
                if "\n" in sentence and kept and not kept[-1].endswith("\n"):
                    kept.append("\n")
                continue
            seen.add(key)
            kept.append(sentence)
        out.append(re.sub(r"\n{3,}", "\n\n", "".join(kept)))
        if fence is None:
            break
        out.append(fence.group(0))
        pos = fence.end()
    return "".join(out).strip()


def postprocess_reply(text: str) -> str:
    """Everything a reply goes through before it is stored and returned."""
    return collapse_repeats(strip_think(text))
