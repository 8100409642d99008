"""Token ids of prompt text, each piece tokenized once: a bounded memo over special-token pieces.

A turn counts its verbatim window several times (the compaction check, the prompt's budget, the
context account, the engine's own encoding). Every count renders the window into a different
string, so a memo of whole strings does not help; but a Hugging Face tokenizer isolates its added
special tokens before anything else, so a templated prompt tokenizes as the concatenation of its
pieces between special tokens (``<|im_start|>user\\n...<|im_end|>``). The memo keeps the ids of
each piece, so a message already seen costs a dictionary look-up, and only new text is
tokenized. A probe checks once per tokenizer that splitting gives the same ids as tokenizing the
whole string; a tokenizer for which it does not (one that adds a prefix space to every piece, say)
is tokenized whole, with the memo keyed by the whole string.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["TokenMemo"]

_PROBE_PIECES = (
    "system\nRules: be brief.\n\n# Notes\n- café, 订单 42",
    "\n",
    "user\n  leading spaces and\n\nnewlines\n",
    "\n",
    "assistant\n<think>\n\n</think>\n\nA reply.  ",
    "\n",
    "user\n\n\ttab first",
    "\n",
    "assistant\n",
)


class TokenMemo:
    """Bounded memo of token ids for text under one tokenizer (thread-safe).

    Args:
        tokenizer: A Hugging Face tokenizer.
        lock: The lock that guards the tokenizer (shared with its other users).
        max_pieces: Pieces kept; the least recently used are forgotten first.
    """

    def __init__(self, tokenizer: Any, lock: threading.RLock, max_pieces: int = 4096) -> None:
        self._tokenizer = tokenizer
        self._lock = lock
        self._max = max_pieces
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._special: dict[str, int] = {}
        for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(added, "special", False) and added.content:
                self._special[str(added.content)] = int(token_id)
        self._split: re.Pattern[str] | None = None
        if self._special:
            names = sorted(self._special, key=len, reverse=True)
            self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")
            if not self._splits_exactly():
                self._split = None

    def _encode(self, text: str) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _splits_exactly(self) -> bool:
        specials = list(self._special)
        opening, closing = specials[0], specials[-1]
        if len(specials) > 1:
            # Chat templates put one token before and one after each message.
            opening, closing = specials[1 % len(specials)], specials[2 % len(specials)]
        text = "".join(
            f"{opening}{piece}{closing}" if piece != "\n" else piece for piece in _PROBE_PIECES
        )
        return self._pieces_ids(text) == self._encode(text)

    def _piece(self, text: str) -> tuple[int, ...]:
        with self._lock:
            hit = self._ids.get(text)
            if hit is not None:
                self._ids.move_to_end(text)
                return hit
        ids = self._encode(text)
        with self._lock:
            self._ids[text] = ids
            while len(self._ids) > self._max:
                self._ids.popitem(last=False)
        return ids

    def _pieces_ids(self, text: str) -> tuple[int, ...]:
        assert self._split is not None
        out: list[int] = []
        for piece in self._split.split(text):
            if not piece:
                continue
            special = self._special.get(piece)
            if special is not None:
                out.append(special)
            else:
                out.extend(self._piece(piece))
        return tuple(out)

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), as the tokenizer gives them."""
        if self._split is None:
            return list(self._piece(text))
        return list(self._pieces_ids(text))
