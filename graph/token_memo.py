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

The memo is bounded by the tokens it holds as well as by its pieces: a piece's size grows with
its thread (a system message carries the summary and the recalled memories), so a bound on the
count alone let a long-running worker's memory grow by hundreds of megabytes before the memo
filled. Ids are kept as 4-byte machine integers (a tuple of Python ints costs about 40 bytes a
token) under a 16-byte digest of the piece: the piece itself (and, for text that is not ASCII,
the UTF-8 copy the tokenizer leaves on it) would cost more than its ids.
"""

from __future__ import annotations

import hashlib
import re
import threading
from array import array
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
        max_tokens: Token ids kept over all pieces (4 bytes each); a longer piece is tokenized
            every time, never kept.
    """

    def __init__(
        self,
        tokenizer: Any,
        lock: threading.RLock,
        max_pieces: int = 16384,
        max_tokens: int = 1 << 20,
    ) -> None:
        if max_pieces < 1 or max_tokens < 1:
            raise ValueError(f"the memo needs room: {max_pieces=}, {max_tokens=}")
        self._tokenizer = tokenizer
        self._lock = lock
        self._max = max_pieces
        self._max_tokens = max_tokens
        self._ids: OrderedDict[bytes, array[int]] = OrderedDict()
        self._tokens = 0
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

    @property
    def pieces(self) -> int:
        """Pieces held now."""
        return len(self._ids)

    @property
    def tokens(self) -> int:
        """Token ids held now, over all pieces."""
        return self._tokens

    def _encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

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

    def _piece(self, text: str) -> array[int] | list[int]:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            hit = self._ids.get(key)
            if hit is not None:
                self._ids.move_to_end(key)
                return hit
        ids = self._encode(text)
        if len(ids) > self._max_tokens:
            return ids
        kept = array("I", ids)
        with self._lock:
            old = self._ids.pop(key, None)  # another thread tokenized it meanwhile
            self._tokens += len(kept) - (len(old) if old is not None else 0)
            self._ids[key] = kept
            while len(self._ids) > self._max or self._tokens > self._max_tokens:
                _, evicted = self._ids.popitem(last=False)
                self._tokens -= len(evicted)
        return kept

    def _pieces_ids(self, text: str) -> list[int]:
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
        return out

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), as the tokenizer gives them."""
        if self._split is None:
            return list(self._piece(text))
        return self._pieces_ids(text)
