"""Pure helpers for hierarchical summaries: extractive and model L1 lines, the bounded L2 fold."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.utils.json import parse_json_markdown
from langgraph.constants import TAG_NOSTREAM
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from nodes.state import LongSummary, SummaryChunk
from nodes.text import (
    CONTENT_STOPWORDS,
    fold,
    message_text,
    split_sentences,
    strip_think,
    terms,
)

__all__ = [
    "SummaryLimits",
    "detect_language",
    "extractive_line",
    "fold_into_long",
    "invents_identifiers",
    "loses_pinned_fact",
    "pinned_facts_from_slots",
    "summarize_with_model",
]

logger = logging.getLogger(__name__)

Language = Literal["zh", "en"]


@dataclass(frozen=True, kw_only=True)
class SummaryLimits:
    """Size bounds that keep L1 lines and the L2 summary from growing without limit."""

    line_chars: int = 280
    """Longest L1 line, in characters (pinned facts are kept even if that means cutting prose)."""
    narrative_chars: int = 1200
    """Longest L2 narrative; the oldest part is trimmed first."""
    max_topics: int = 12
    max_facts: int = 24
    """Facts kept in L2 beyond the pinned slot values, which are always kept."""
    max_questions: int = 8
    """Entries kept in each of L2's resolved and open-question lists (most recent kept)."""
    item_chars: int = 160
    """Longest single topic, fact or question."""
    message_chars: int = 800
    """Longest message quoted to the summarizer model."""


DEFAULT_LIMITS = SummaryLimits()

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_LEAD_LABEL = re.compile(r"^(summary|one-sentence summary|总结|摘要|一句话总结)\s*[:：]\s*", re.I)
_QUESTION_END = ("?", "？")
_CLOSING = ("。", "！", "？", "；", ".", "!", "?", ";", "…", "」", "”", '"', ")", "）")


def detect_language(text: str) -> Language:
    """Guess whether a text is mainly Chinese or not.

    Args:
        text: Any text.

    Returns:
        "zh" when CJK characters make up at least 30 % of the letters, else "en".
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    return "zh" if cjk and cjk / (cjk + latin) >= 0.3 else "en"


def pinned_facts_from_slots(slots: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """The facts a summary must never lose: every slot that currently holds a value.

    Args:
        slots: ``state["slots"]`` (slot name -> ``Slot``).

    Returns:
        Slot name -> current value, cleared slots left out.
    """
    pinned: dict[str, str] = {}
    for name, slot in (slots or {}).items():
        value = slot.get("value") if isinstance(slot, Mapping) else None
        if isinstance(value, str) and value.strip():
            pinned[name] = value.strip()
    return pinned


def _contains(haystack: str, value: str) -> bool:
    needle = fold(value, spaces=False)
    return bool(needle) and needle in fold(haystack, spaces=False)


def loses_pinned_fact(
    summary: str, pinned_facts: Mapping[str, str], *, folded_text: str | None = None
) -> bool:
    """Whether a summary drops a slot value that the summarized text contains.

    Args:
        summary: The candidate summary.
        pinned_facts: Slot name -> value (see ``pinned_facts_from_slots``).
        folded_text: The text that was summarized. When given, only values it contains must
            appear in the summary; otherwise every pinned value must.

    Returns:
        True when at least one required value is missing from ``summary``.
    """
    for value in pinned_facts.values():
        if folded_text is not None and not _contains(folded_text, value):
            continue
        if not _contains(summary, value):
            return True
    return False


# ASCII only: \w would otherwise glue Chinese text onto an order number.
_IDENTIFIER = re.compile(r"[\w.+-]*\d[\w.@+/-]*|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)


def invents_identifiers(summary: str, folded_text: str) -> bool:
    """Whether a summary states a number, code or e-mail address the summarized text lacks.

    Small models like to "complete" order numbers and dates; such a summary adds facts, so the
    extractive one is used instead.

    Args:
        summary: The candidate summary.
        folded_text: The text that was summarized.

    Returns:
        True when some digit-bearing token or e-mail address of ``summary`` is not in
        ``folded_text`` (compared ignoring case and whitespace).
    """
    source = fold(folded_text, spaces=False)
    for token in _IDENTIFIER.findall(summary):
        token = token.strip(".,;:!?-/")
        if token and fold(token, spaces=False) not in source:
            return True
    return False


def _terms(text: str) -> list[str]:
    # Words as written (not stemmed): the extractive fold shows them as topics.
    return terms(text, stopwords=CONTENT_STOPWORDS, stem_words=False)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= 1:
        return text[:limit]
    cut = text[: limit - 1]
    # Prefer a word boundary for Latin text when one is near the end.
    space = cut.rfind(" ")
    if space >= limit * 0.6 and detect_language(cut) == "en":
        cut = cut[:space]
    return cut.rstrip() + "…"


def _close(sentence: str) -> str:
    if sentence.endswith(_CLOSING):
        return sentence
    return sentence + ("。" if detect_language(sentence) == "zh" else ".")


def _join(sentences: Iterable[str]) -> str:
    out = ""
    for sentence in sentences:
        if out and not out.endswith(("。", "！", "？", "；", "…")):
            out += " "
        out += sentence
    return out


def _rank_sentences(sentences: list[str], pinned_values: Sequence[str]) -> list[int]:
    """Indices of the sentences worth keeping, best first (small talk left out)."""
    document_freq = Counter(t for s in sentences for t in set(_terms(s)))
    scores: dict[int, float] = {}
    for index, sentence in enumerate(sentences):
        words = set(_terms(sentence))
        carries_value = any(_contains(sentence, v) for v in pinned_values)
        if not words and not carries_value:
            continue
        # Terms shared with other sentences mark what the range is about.
        score = sum(math.log1p(document_freq[t]) + 1.0 for t in words) / math.sqrt(len(words) + 1)
        if carries_value:
            score += 10.0
        if sentence.endswith(_QUESTION_END):
            score += 2.0
        scores[index] = score
    if not scores:
        # Nothing but small talk: it is still what happened.
        scores = dict.fromkeys(range(len(sentences)), 0.0)
    return sorted(scores, key=lambda i: (-scores[i], i))


def extractive_line(
    turns: Sequence[BaseMessage],
    pinned_facts: Mapping[str, str],
    *,
    limits: SummaryLimits = DEFAULT_LIMITS,
) -> str:
    """Summarize a range of exchanges in one line built from the user's own sentences.

    The most informative user sentences are kept in their original order; every pinned value
    that the range mentions is guaranteed to appear (appended as ``name: value`` if no kept
    sentence carries it). Works for Chinese (sentences end at 。！？, bigrams stand in for words).

    Args:
        turns: The folded messages, oldest first (user and assistant).
        pinned_facts: Slot name -> value that must survive summarization.
        limits: Size bounds; the line is at most ``limits.line_chars`` characters unless the
            pinned values alone are longer.

    Returns:
        A single line of text; empty when the range has no text at all.
    """
    user_text = "\n".join(message_text(m) for m in turns if m.type == "human")
    role_label = "User"
    if not user_text.strip():
        user_text = "\n".join(message_text(m) for m in turns)
        role_label = "Conversation"
    all_text = "\n".join(message_text(m) for m in turns)
    language = detect_language(all_text)
    prefix = (
        ("用户：" if role_label == "User" else "对话：") if language == "zh" else f"{role_label}: "
    )

    mentioned = {n: v for n, v in pinned_facts.items() if _contains(all_text, v)}
    sentences = list(dict.fromkeys(_close(s) for s in split_sentences(user_text)))
    ranking = _rank_sentences(sentences, list(mentioned.values()))

    def missing_facts(chosen: Iterable[int]) -> str:
        kept = " ".join(sentences[i] for i in chosen)
        missing = [f"{n}: {v}" for n, v in mentioned.items() if not _contains(kept, v)]
        return f" [{'; '.join(missing)}]" if missing else ""

    def fill(chosen: list[int], budget: int) -> None:
        used = sum(len(sentences[i]) + 1 for i in chosen)
        for index in ranking:
            cost = len(sentences[index]) + 1
            if index not in chosen and used + cost <= budget + 1:
                chosen.append(index)
                used += cost

    room = limits.line_chars - len(prefix)
    chosen: list[int] = []
    # First reserve room for every value as an appended "name: value"; sentences carrying
    # values rank first, so what they cover frees room that a second pass fills with prose.
    fill(chosen, room - len(missing_facts([])))
    fill(chosen, room - len(missing_facts(chosen)))
    if not chosen and ranking and room - len(missing_facts([])) > 1:
        # Even the best sentence is too long: keep its beginning rather than nothing.
        best = ranking[0]
        sentences[best] = _clip(sentences[best], room - len(missing_facts([])))
        chosen.append(best)
    body = _join(sentences[i] for i in sorted(chosen))
    facts_part = missing_facts(chosen)
    if not body and not facts_part:
        return ""
    line = prefix + body + (facts_part if body else facts_part.lstrip())
    return line.replace("\n", " ").strip()


def _transcript(turns: Sequence[BaseMessage], language: Language, limit: int) -> str:
    labels = (
        {"human": "用户", "ai": "助手"}
        if language == "zh"
        else {"human": "User", "ai": "Assistant"}
    )
    colon = "：" if language == "zh" else ": "
    lines = []
    for message in turns:
        text = " ".join(message_text(message).split())
        if text:
            label = labels.get(message.type, message.type.capitalize())
            lines.append(f"{label}{colon}{_clip(text, limit)}")
    return "\n".join(lines)


_LINE_PROMPT = {
    "en": (
        "You summarize part of a conversation between a user and an assistant. Write exactly "
        "one sentence in English that covers the topics discussed, what was resolved and what "
        "is still open. Copy names, numbers, e-mail addresses, order or ticket numbers and "
        "dates exactly as written. Do not add anything the conversation does not say. Reply "
        "with the sentence only."
    ),
    "zh": (
        "你负责总结一段用户与助手的对话。请只用一句中文概括：讨论了哪些话题、哪些问题已解决、哪些仍待解决。"
        "姓名、数字、邮箱、订单号或工单号、日期必须原样照抄。不要添加对话中没有的信息。只输出这一句话。"
    ),
}
_LINE_REQUEST = {"en": "One-sentence summary:", "zh": "一句话总结："}
_KEEP_VALUES = {"en": "Keep these exactly: ", "zh": "以下信息必须原样保留："}


def _clean_model_text(text: str) -> str:
    text = " ".join(strip_think(text).split())
    text = _LEAD_LABEL.sub("", text)
    return text.strip().strip("\"'“”「」").strip()


def summarize_with_model(
    chat_model: BaseChatModel,
    turns: Sequence[BaseMessage],
    *,
    language_hint: str | None,
    pinned_facts: Mapping[str, str] | None = None,
    max_new_tokens: int = 96,
    limits: SummaryLimits = DEFAULT_LIMITS,
) -> str | None:
    """Ask the chat model for a one-sentence summary of a range of exchanges.

    The prompt is written in the conversation's language and asks for topics, resolved and
    open points, and no new facts. The call uses the "precise" profile and is tagged
    ``nostream`` so that its tokens never reach a client streaming the reply.

    Args:
        chat_model: Any LangChain chat model accepting ``profile`` and ``max_new_tokens``.
        turns: The folded messages, oldest first.
        language_hint: "zh" or "en"; None (or anything else) detects it from ``turns``.
        pinned_facts: Values the model is told to copy exactly (checked by the caller with
            ``loses_pinned_fact``).
        max_new_tokens: Reply budget of the summary call.
        limits: Size bounds (the sentence is clipped to ``limits.line_chars``).

    Returns:
        The sentence on one line, or None when the call fails or returns nothing usable.
    """
    transcript_language: Language
    if language_hint in ("zh", "en"):
        transcript_language = language_hint  # type: ignore[assignment]
    else:
        transcript_language = detect_language(" ".join(message_text(m) for m in turns))
    transcript = _transcript(turns, transcript_language, limits.message_chars)
    if not transcript:
        return None
    request = transcript + "\n\n"
    if pinned_facts:
        values = [v for v in pinned_facts.values() if _contains(transcript, v)]
        if values:
            request += _KEEP_VALUES[transcript_language] + "; ".join(values) + "\n"
    request += _LINE_REQUEST[transcript_language]
    prompt = [SystemMessage(_LINE_PROMPT[transcript_language]), HumanMessage(request)]
    try:
        reply = chat_model.invoke(
            prompt,
            config={"tags": [TAG_NOSTREAM], "run_name": "summarize_l1"},
            profile="precise",
            max_new_tokens=max_new_tokens,
        )
    except Exception:  # any model failure falls back to the extractive summary
        logger.warning("model summary failed; falling back to the extractive one", exc_info=True)
        return None
    text = _clean_model_text(message_text(reply))
    return _clip(text, limits.line_chars) if text else None


class _LongSummaryDraft(BaseModel):
    """What the model must return for an L2 fold (validated before use)."""

    model_config = ConfigDict(extra="ignore")

    topics: list[str] = []
    facts: list[str] = []
    resolved: list[str] = []
    open_questions: list[str] = []
    narrative: str = ""

    @field_validator("topics", "facts", "resolved", "open_questions")
    @classmethod
    def _drop_blank(cls, items: list[str]) -> list[str]:
        return [" ".join(item.split()) for item in items if item.strip()]


_LONG_PROMPT = {
    "en": (
        "You maintain the long-range memory of a conversation as JSON. Merge the previous "
        "memory with the new summary lines and return only one JSON object with the keys "
        '"topics" (short noun phrases), "facts" (stable facts about the user and the task), '
        '"resolved" (questions or problems that were settled), "open_questions" (still '
        'unanswered) and "narrative" (at most three sentences, oldest events first). '
        "Use only information given below; copy names, numbers and identifiers exactly."
    ),
    "zh": (
        "你负责以 JSON 维护一段对话的长期记忆。"
        "把已有记忆与新的摘要行合并，只返回一个 JSON 对象，键为："
        '"topics"（简短话题）、"facts"（关于用户和任务的稳定事实）、"resolved"（已解决的问题）、'
        '"open_questions"（尚未解决的问题）、"narrative"（最多三句话，按时间先后）。'
        "只使用下面给出的信息；姓名、数字和编号必须原样照抄。"
    ),
}
_LONG_LABELS = {
    "en": ("Previous memory", "New summary lines", "Facts that must be kept", "Unanswered now"),
    "zh": ("已有记忆", "新的摘要行", "必须保留的事实", "目前未回答的问题"),
}


def _parse_draft(text: str) -> _LongSummaryDraft | None:
    text = strip_think(text)
    data: Any
    try:
        data = parse_json_markdown(text, parser=json.loads)
    except (json.JSONDecodeError, ValueError):
        start = text.find("{")
        if start < 0:
            return None
        try:
            data, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            return None
    if not isinstance(data, dict):
        return None
    try:
        return _LongSummaryDraft.model_validate(data)
    except ValidationError:
        return None


def _dedupe(items: Iterable[str], limit: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = fold(item, spaces=False)
        if key and key not in seen:
            seen.add(key)
            out.append(_clip(item, limit))
    return out


def _keep_recent(items: Sequence[str], count: int) -> list[str]:
    return list(items[-count:]) if count > 0 else []


_SEGMENT_START = re.compile(r"(?=\(turns \d)|(?=（第\d)")


def _trim_narrative(narrative: str, limit: int) -> str:
    narrative = " ".join(narrative.split())
    if len(narrative) <= limit:
        return narrative
    # Drop whole "(turns a-b) ..." segments from the oldest end so no sentence loses its
    # turn label; a narrative without labels (the model's) loses whole sentences instead.
    parts = [p.strip() for p in _SEGMENT_START.split(narrative) if p.strip()]
    if len(parts) < 2:
        parts = split_sentences(narrative)
    while len(parts) > 1 and len(_join(parts)) > limit:
        parts.pop(0)
    kept = _join(parts)
    if len(kept) > limit:
        # Even the newest part alone is too long: keep its end, the most recent words.
        kept = "…" + kept[-(limit - 1) :].lstrip()
    return kept


def _fact_lines(
    pinned_facts: Mapping[str, str], others: Iterable[str], limits: SummaryLimits
) -> list[str]:
    pinned = [f"{name}: {value}" for name, value in pinned_facts.items()]
    pinned_keys = {fold(p, spaces=False) for p in pinned}
    stale_prefixes = tuple(fold(f"{name}:", spaces=False) for name in pinned_facts)
    extra = []
    for fact in others:
        key = fold(fact, spaces=False)
        # "name: old value" from an earlier fold is superseded by the slot's current value.
        if key in pinned_keys or key.startswith(stale_prefixes):
            continue
        extra.append(fact)
    extra = _dedupe(extra, limits.item_chars)
    # Pinned values are never clipped or capped: losing one is exactly what L2 must not do.
    return pinned + _keep_recent(extra, limits.max_facts)


def _strip_label(text: str) -> str:
    return re.sub(r"^(User: |Conversation: |用户：|对话：)", "", text)


def _extractive_topics(chunks: Sequence[SummaryChunk], per_fold: int = 5) -> list[str]:
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for chunk in chunks:
        # Identifiers, numbers and addresses are facts, not topics (taken out whole, so that
        # no part of an address becomes one); short Latin words are too vague to name one.
        text = _IDENTIFIER.sub(" ", _strip_label(chunk["text"]))
        for term in dict.fromkeys(_terms(text)):
            if any(ch.isdigit() for ch in term) or (term.isascii() and len(term) < 3):
                continue
            counts[term] += 1
            first_seen.setdefault(term, len(first_seen))
    ranked = sorted(counts, key=lambda t: (-counts[t], -len(t), first_seen[t]))
    return ranked[:per_fold]


def _questions_in(chunks: Sequence[SummaryChunk]) -> list[str]:
    return [
        s
        for chunk in chunks
        for s in split_sentences(_strip_label(chunk["text"]))
        if s.endswith(_QUESTION_END)
    ]


def _question_lists(
    previous: LongSummary | None,
    chunks: Sequence[SummaryChunk],
    pending_questions: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    resolved = list(previous["resolved"]) if previous else []
    open_questions = list(previous["open_questions"]) if previous else []
    if pending_questions is None:
        # Without the tracker's pending list nothing can be said about what got answered.
        return resolved, open_questions
    pending_keys = {fold(q, spaces=False) for q in pending_questions}
    for question in open_questions + _questions_in(chunks):
        if fold(question, spaces=False) not in pending_keys:
            resolved.append(question)
    open_questions = [q for q in open_questions if fold(q, spaces=False) in pending_keys]
    open_questions.extend(pending_questions)
    return resolved, open_questions


def _chunk_segment(chunk: SummaryChunk, language: Language) -> str:
    first, last = chunk["first_turn"], chunk["last_turn"]
    span = str(first) if first == last else f"{first}-{last}"
    label = f"（第{span}轮）" if language == "zh" else f"(turns {span})"
    return (
        f"{label} {_close(chunk['text'])}"
        if language == "en"
        else f"{label}{_close(chunk['text'])}"
    )


_L2_REPLY_TOKENS = 384
"""Tokens the model may write for the L2 fold's JSON."""


def _model_draft(
    chat_model: BaseChatModel,
    previous: LongSummary | None,
    chunks: Sequence[SummaryChunk],
    pinned_facts: Mapping[str, str],
    pending_questions: Sequence[str] | None,
    language: Language,
) -> _LongSummaryDraft | None:
    labels = _LONG_LABELS[language]
    keys = ("topics", "facts", "resolved", "open_questions", "narrative")
    memory = {k: v for k, v in previous.items() if k in keys} if previous else {}
    parts = [
        f"{labels[0]}:\n{json.dumps(memory, ensure_ascii=False)}",
        f"{labels[1]}:\n" + "\n".join(_chunk_segment(c, language) for c in chunks),
    ]
    if pinned_facts:
        parts.append(f"{labels[2]}:\n" + "\n".join(f"{n}: {v}" for n, v in pinned_facts.items()))
    if pending_questions:
        parts.append(f"{labels[3]}:\n" + "\n".join(pending_questions))
    prompt = [SystemMessage(_LONG_PROMPT[language]), HumanMessage("\n\n".join(parts) + "\n\nJSON:")]
    window = getattr(chat_model, "context_window", None)
    if isinstance(window, int) and window > 0:
        # A fold whose input outgrew the model's window is folded extractively: an expected
        # outcome of a long memory on a small window, not a model failure.
        needed = chat_model.get_num_tokens_from_messages(prompt) + _L2_REPLY_TOKENS
        if needed > window:
            logger.info(
                "the L2 fold needs %d tokens and the model's window is %d; folding extractively",
                needed,
                window,
            )
            return None
    try:
        reply = chat_model.invoke(
            prompt,
            config={"tags": [TAG_NOSTREAM], "run_name": "summarize_l2"},
            profile="precise",
            max_new_tokens=_L2_REPLY_TOKENS,
        )
    except Exception:  # any model failure falls back to the extractive fold
        logger.warning("model L2 fold failed; folding extractively", exc_info=True)
        return None
    draft = _parse_draft(message_text(reply))
    if draft is None:
        logger.warning("model L2 fold returned no valid JSON; folding extractively")
    return draft


def fold_into_long(
    long: LongSummary | None,
    chunks: list[SummaryChunk],
    pinned_facts: Mapping[str, str],
    chat_model: BaseChatModel | None,
    *,
    pending_questions: Sequence[str] | None = None,
    limits: SummaryLimits = DEFAULT_LIMITS,
) -> LongSummary:
    """Fold the oldest L1 lines into the structured long-range summary (L2).

    With a chat model the merge is asked for as JSON and validated with pydantic; without
    one, or when the model fails or returns invalid JSON, the fold is extractive: keyword
    topics, the lines appended to the narrative, questions tracked from ``pending_questions``.
    Either way ``facts`` starts with every pinned slot value (a slot's older value is
    replaced), and the result is bounded: the narrative loses its oldest sentences first,
    lists keep their most recent entries.

    Args:
        long: The current L2, or None for the first fold.
        chunks: The L1 lines to fold, oldest first (at least one).
        pinned_facts: Slot name -> current value.
        chat_model: The summarizer, or None for an extractive fold.
        pending_questions: Questions still unanswered according to state tracking; when
            given, earlier open questions no longer in it move to ``resolved``.
        limits: Size bounds.

    Returns:
        The new L2 covering ``long``'s turns and the chunks' turns.

    Raises:
        ValueError: ``chunks`` is empty.
    """
    if not chunks:
        raise ValueError("fold_into_long needs at least one L1 chunk to fold")
    language = detect_language(" ".join(c["text"] for c in chunks))
    first_turn = (
        min(long["first_turn"], chunks[0]["first_turn"]) if long else chunks[0]["first_turn"]
    )
    last_turn = max(c["last_turn"] for c in chunks)
    previous_narrative = long["narrative"] if long else ""

    draft = (
        _model_draft(chat_model, long, chunks, pinned_facts, pending_questions, language)
        if chat_model is not None
        else None
    )
    if draft is not None:
        resolved, open_questions = draft.resolved, draft.open_questions
        if pending_questions is not None:
            # The tracker knows which questions are still open; the model may not.
            open_questions = list(open_questions) + [
                q for q in pending_questions if not any(_contains(o, q) for o in open_questions)
            ]
        narrative = draft.narrative or _join(
            [previous_narrative, *(_chunk_segment(c, language) for c in chunks)]
        )
        topics = draft.topics
        other_facts: list[str] = draft.facts
        method = "model"
    else:
        resolved, open_questions = _question_lists(long, chunks, pending_questions)
        narrative = _join(
            [s for s in [previous_narrative, *(_chunk_segment(c, language) for c in chunks)] if s]
        )
        topics = (list(long["topics"]) if long else []) + _extractive_topics(chunks)
        other_facts = list(long["facts"]) if long else []
        method = "extractive"

    # Newest entries win: dedupe keeps the first occurrence, so dedupe the reversed list.
    topics = _dedupe(reversed(topics), limits.item_chars)[::-1]
    return LongSummary(
        first_turn=first_turn,
        last_turn=last_turn,
        topics=_keep_recent(topics, limits.max_topics),
        facts=_fact_lines(pinned_facts, other_facts, limits),
        resolved=_keep_recent(_dedupe(resolved, limits.item_chars), limits.max_questions),
        open_questions=_keep_recent(
            _dedupe(open_questions, limits.item_chars), limits.max_questions
        ),
        narrative=_trim_narrative(narrative, limits.narrative_chars),
        method=method,
    )
