"""Reply post-processing as the reply streams: think blocks, repeated sentences, white space."""

from __future__ import annotations

import re

from nodes.text import SENTENCE, ThinkStripper, word_key

__all__ = ["ReplyStream", "collapse_repeats", "postprocess_reply"]

# A fenced code block opens on a line of its own with ``` or ~~~ (indented or not) and closes
# at the next line that starts with the same marker, or at the end of the reply.
_FENCE_OPEN = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
_FENCE_OPEN_PREFIX = re.compile(r"[ \t]*(?:`{0,2}|~{0,2})")
_BLANK_LINES = re.compile(r"\n{3,}")


class ReplyStream:
    """Post-processes a reply that arrives in pieces, releasing only what no later piece changes.

    Applied in order: ``<think>`` blocks are removed (an unterminated one at the end too);
    white space at the start is dropped, and white space at the end is held until something
    visible follows it (so a reply of only white space gives ""); a sentence that repeats an
    earlier sentence of the reply is dropped (small models under long contexts loop: "I can
    help. I can help."), keeping its line break; short fragments (under ``min_chars`` of word
    characters, like "Yes." or list markers) are never dropped; more than one blank line in
    prose becomes one; fenced code blocks pass through exactly as they are.

    A sentence in progress is released as soon as it can no longer turn out to be a repeat,
    so the first sentence streams as it is generated. What ``feed`` and ``finish`` return,
    joined, does not depend on how the text was cut into pieces, and equals
    ``postprocess_reply`` of the whole text.

    Args:
        strip_thinking: Remove ``<think>`` blocks (False keeps them as text).
        min_chars: Sentences shorter than this (in word characters and single spaces) are kept
            even when they repeat.
    """

    def __init__(self, *, strip_thinking: bool = True, min_chars: int = 8) -> None:
        self._think = ThinkStripper() if strip_thinking else None
        self._min_chars = min_chars
        self._started = False
        self._buffer = ""
        self._in_code = False
        # Prose: sentences seen so far, the current sentence's released length, and what the
        # current prose segment (text between code blocks) has kept.
        self._seen: set[str] = set()
        self._released = 0
        self._line_start = True
        self._kept_any = False
        self._kept_newline = False
        # Code: the fence marker, whether this is the opening line, the current line while it
        # could still be the closing fence, and whether it is.
        self._marker = ""
        self._opening_line = False
        self._line: str | None = ""
        self._closing = False
        # Output: white space at the end, held until something visible follows; per piece,
        # whether it is prose (blank lines squeezed) or code (as it is).
        self._held: list[tuple[str, bool]] = []
        self._shown = False
        self._out: list[str] = []

    def feed(self, text: str) -> str:
        """Add a piece of raw reply text.

        Args:
            text: The next piece, as the model produced it.

        Returns:
            The post-processed text that became certain (possibly "").
        """
        visible = self._think.feed(text) if self._think is not None else text
        return self._push(visible, final=False)

    def finish(self) -> str:
        """Mark the end of the reply.

        Returns:
            The rest of the post-processed text; trailing white space is dropped.
        """
        rest = self._think.finish() if self._think is not None else ""
        out = self._push(rest, final=True)
        self._held = []
        return out

    # -- input -------------------------------------------------------------------------------
    def _push(self, text: str, *, final: bool) -> str:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        self._buffer += text
        while self._code_step(final) if self._in_code else self._prose_step(final):
            pass
        out, self._out = "".join(self._out), []
        return out

    def _prose_step(self, final: bool) -> bool:
        """Process prose up to a fence (True: a code block starts) or as far as is certain."""
        buf = self._buffer
        start = 0 if self._line_start else buf.find("\n") + 1
        fence = _FENCE_OPEN.search(buf, start) if start or self._line_start else None
        if fence is not None:
            self._sentences(buf[: fence.start()], at_end=True)
            self._buffer = buf[fence.start() :]
            self._in_code, self._marker = True, fence.group(1)
            self._opening_line, self._line, self._closing = True, None, False
            return True
        end = len(buf)
        if not final:
            # A line that could still become an opening fence is not prose yet.
            line = buf.rfind("\n") + 1 if "\n" in buf else (0 if self._line_start else -1)
            if line >= 0 and _FENCE_OPEN_PREFIX.fullmatch(buf, line):
                end = line
        used = self._sentences(buf[:end], at_end=final)
        if used:
            self._line_start = buf[used - 1] == "\n"
        self._buffer = buf[used:]
        return False

    def _sentences(self, region: str, *, at_end: bool) -> int:
        """Release the sentences of ``region`` that are certain; return the characters used."""
        used = 0
        for match in SENTENCE.finditer(region):
            piece = match.group()
            if not piece:
                break
            if not at_end and match.end() == len(region):
                self._partial(piece)
                break
            self._sentence(piece)
            used = match.end()
        if at_end:
            self._kept_any = self._kept_newline = False  # the next prose segment starts afresh
        return used

    def _sentence(self, piece: str) -> None:
        key = word_key(piece)
        if not self._released and len(key) >= self._min_chars and key in self._seen:
            # A dropped sentence keeps its line break, so lines do not run together.
            if "\n" in piece and self._kept_any and not self._kept_newline:
                self._emit("\n", prose=True)
                self._kept_newline = True
        else:
            self._emit(piece[self._released :], prose=True)
            self._kept_any, self._kept_newline = True, piece.endswith("\n")
        self._seen.add(key)
        self._released = 0

    def _partial(self, piece: str) -> None:
        if not self._released:
            key = word_key(piece)
            # Keys only grow as the sentence does: it can still become a repeat only while
            # some earlier sentence's key starts with what it says so far.
            if any(len(k) >= self._min_chars and k.startswith(key) for k in self._seen):
                return
        self._emit(piece[self._released :], prose=True)
        self._released = len(piece)

    def _code_step(self, final: bool) -> bool:
        """Pass code through; True when its closing fence line ended and prose resumes."""
        buf, self._buffer = self._buffer, ""
        pos = 0
        while pos < len(buf):
            newline = buf.find("\n", pos)
            stop = len(buf) if newline < 0 else newline
            fragment = buf[pos:stop]
            if not self._opening_line and not self._closing and self._line is not None:
                self._line += fragment
                head = self._line.lstrip(" \t")
                if head.startswith(self._marker):
                    self._closing = True
                elif not self._marker.startswith(head) or newline >= 0:
                    self._line = None  # decided: not the closing fence
            self._emit(fragment, prose=False)
            if newline < 0:
                return False
            if self._closing:
                self._buffer = buf[newline:]
                self._in_code, self._line_start, self._closing = False, False, False
                return True
            self._emit("\n", prose=False)
            self._opening_line, self._line = False, ""
            pos = newline + 1
        return False

    # -- output ------------------------------------------------------------------------------
    def _emit(self, text: str, *, prose: bool) -> None:
        visible = text.rstrip()
        if not visible:
            if text and self._shown:
                self._held.append((text, prose))
            return
        held = self._release_held()
        self._out.append(held + visible)
        self._shown = True
        trailing = text[len(visible) :]
        self._held = [(trailing, prose)] if trailing else []

    def _release_held(self) -> str:
        out: list[str] = []
        prose: list[str] = []
        for text, is_prose in self._held:
            if is_prose:
                prose.append(text)
                continue
            out.append(_BLANK_LINES.sub("\n\n", "".join(prose)))
            prose = []
            out.append(text)
        out.append(_BLANK_LINES.sub("\n\n", "".join(prose)))
        self._held = []
        return "".join(out)


def postprocess_reply(text: str, *, strip_thinking: bool = True) -> str:
    """Everything a reply goes through before it is stored and returned (see ``ReplyStream``).

    Args:
        text: The whole raw reply.
        strip_thinking: Remove ``<think>`` blocks.

    Returns:
        The reply as streamed and saved.
    """
    stream = ReplyStream(strip_thinking=strip_thinking)
    return stream.feed(text) + stream.finish()


def collapse_repeats(text: str) -> str:
    """Drop sentences that repeat an earlier sentence of the same text, code blocks aside.

    Args:
        text: A whole reply, thinking already removed.

    Returns:
        The text without repeated sentences, stripped.
    """
    return postprocess_reply(text, strip_thinking=False)
