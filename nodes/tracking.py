"""Conversation tracking without a model: current topic, mentioned entities, pending questions."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from nodes.slot_rules import is_question
from nodes.state import PendingQuestion
from nodes.text import CONTENT_STOPWORDS, fold, normalize_text, split_sentences, terms

__all__ = [
    "MAX_ENTITIES",
    "MAX_PENDING",
    "add_pending",
    "detect_questions",
    "extract_entities",
    "next_topic",
    "resolve_pending",
    "update_entities",
]

MAX_ENTITIES = 20
"""Entities kept in state, most recent last."""
MAX_PENDING = 8
"""Unanswered questions kept in state; the oldest are dropped first."""
_MAX_QUESTION_CHARS = 200
_MAX_CHARS = 20_000
"""Longer messages are scanned only this far (bounds the work per turn)."""
_TOPIC_WORDS = 6
_TOPIC_CJK_CHARS = 12


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# The lookbehinds keep matching linear on long digit or letter runs.
_WORD = re.compile(
    r"(?<![A-Za-z0-9'’\-])[A-Za-z][A-Za-z0-9'’\-]*|(?<![A-Za-z0-9])\d+[A-Za-z][A-Za-z0-9\-]*"
)
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_WH = re.compile(
    r"\b(?:what|how|why|when|where|who|which)\b|为什么|怎么|什么|哪|谁|如何|多少", re.IGNORECASE
)


def _is_stopword(word: str) -> bool:
    return word.lower() in CONTENT_STOPWORDS


def _cjk_chunks(text: str) -> list[str]:
    # Chinese has no spaces: breaking CJK runs at function characters leaves content chunks
    # ("我在写市场报告" -> "写市场报告"), good enough for short phrases.
    chunks: list[str] = []
    for run in _CJK_RUN.findall(text):
        current = ""
        for ch in run:
            if ch in CONTENT_STOPWORDS:
                if len(current) >= 2:
                    chunks.append(current)
                current = ""
            else:
                current += ch
        if len(current) >= 2:
            chunks.append(current)
    return chunks


def _terms(text: str) -> set[str]:
    # What a text is about, as a set: overlaps between sets decide topics and answers.
    return set(terms(normalize_text(text)[:_MAX_CHARS], stopwords=CONTENT_STOPWORDS))


# -- topic -----------------------------------------------------------------------------------

_EXPLICIT_TOPIC = (
    re.compile(
        r"\b(?:let's|let us|can we|could we|i want to|i'd like to|we should)\s+"
        r"(?:talk|chat|speak|move on|switch|get back)\s+(?:about|to)\s+(?P<topic>.+)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:change|switch|changing|switching) (?:the )?(?:subject|topic)\s*(?:to|:)\s*"
        r"(?P<topic>.+)|\bnew (?:topic|subject)\s*:?\s+(?P<topic2>.+)",
        re.IGNORECASE,
    ),
    re.compile(
        r"(?:换个话题|换一个话题|说点别的|聊点别的|我们聊聊|我们来聊聊|我想聊聊|我们谈谈|我想问问)"
        r"(?:吧)?[,:\s]*(?:关于)?(?P<topic>.+)"
    ),
)
_WANT = re.compile(r"^(?:我想|我要|我打算|想|要)")
_TASK_VERB = re.compile(
    r"^(?:working on|writing|preparing|drafting|building|developing|planning|researching|"
    r"putting together|creating|designing|organi[sz]ing|studying for|trying to|write|draft|"
    r"prepare|plan|build|create|design|translate|summari[sz]e|organi[sz]e|outline)\s+"
    r"(?:(?:a|an|the|my|our|some)\s+)?|"
    r"^(?:写|做|准备|撰写|起草|开发|设计|筹备|策划|整理|研究|学习|复习|翻译|总结|规划)"
    r"(?:一份|一个|一篇|一封|一套|个|份|篇|封)?",
    re.IGNORECASE,
)


def _shorten(phrase: str) -> str:
    phrase = re.split(r"[,;:。!?.]", phrase.strip(), maxsplit=1)[0].strip()
    words = phrase.split()
    if len(words) > _TOPIC_WORDS:
        phrase = " ".join(words[:_TOPIC_WORDS])
    if len(phrase) > _TOPIC_CJK_CHARS and not any(c.isascii() and c.isalpha() for c in phrase):
        phrase = phrase[:_TOPIC_CJK_CHARS]
    return phrase


def _task_topic(task: str) -> str:
    return _shorten(_TASK_VERB.sub("", normalize_text(task).strip(), count=1)) or _shorten(task)


def _phrases(text: str) -> list[str]:
    # Candidate phrases: runs of consecutive content words (never across punctuation), and
    # CJK content chunks.
    out: list[str] = []
    for sentence in split_sentences(text):
        for part in re.split(r"[,;:()\"“”]", sentence):
            run: list[str] = []
            for word in re.findall(r"\S+", part):
                core = word.strip(".!?'’")
                if _WORD.fullmatch(core) and not _is_stopword(core) and len(core) > 1:
                    run.append(core)
                    continue
                if run:
                    out.append(" ".join(run[:4]))
                run = []
            if run:
                out.append(" ".join(run[:4]))
        out.extend(chunk[:_TOPIC_CJK_CHARS] for chunk in _cjk_chunks(sentence))
    return out


def _salient_phrase(user_texts: Sequence[str], exclude: Sequence[str] = ()) -> str | None:
    latest = normalize_text(user_texts[-1])
    excluded = set().union(*(_terms(value) for value in exclude)) if exclude else set()
    weights: dict[str, float] = {}
    # The latest turn counts fully and earlier ones less, so the phrase tracks what the user is
    # talking about now while words that keep coming back weigh more.
    for age, text in enumerate(reversed(user_texts)):
        for term in _terms(text):
            weights[term] = weights.get(term, 0.0) + 1.0 / (1 + age)
    best: tuple[float, str] | None = None
    for phrase in _phrases(latest):
        phrase_terms = _terms(phrase)
        if not phrase_terms or phrase_terms <= excluded:
            continue
        # Mean weight, so a long phrase does not win by length alone; a small bonus per term
        # prefers "market report" to "report" when both are as salient.
        score = sum(weights.get(t, 0.0) for t in phrase_terms) / len(phrase_terms)
        score += 0.1 * len(phrase_terms)
        if best is None or score > best[0]:
            best = (score, phrase)
    return _shorten(best[1]) if best else None


def next_topic(
    current: str | None,
    user_texts: Sequence[str],
    *,
    task: str | None = None,
    exclude: Sequence[str] = (),
) -> str | None:
    """The topic after this turn: kept while the user stays on it, replaced when they move on.

    The topic changes when the user names a new one ("let's talk about X", "换个话题，X"), when
    a task is stated this turn ("I'm writing a market report" -> "market report"), or when no
    term of the current topic appears in the last two user turns; then it becomes the most
    salient phrase of the latest turn. Turns without content words ("ok, thanks") keep it.

    Args:
        current: The topic so far (None at the start).
        user_texts: Recent user messages, oldest first; the last one is this turn's.
        task: The task stated this turn, if the rule pass found one.
        exclude: Values that are never a topic on their own (the user's name, contacts).

    Returns:
        The topic phrase, or None when nothing salient was said yet.
    """
    if not user_texts:
        return current
    latest = normalize_text(user_texts[-1])
    for sentence in split_sentences(latest):
        for pattern in _EXPLICIT_TOPIC:
            m = pattern.search(sentence)
            if m:
                raw = m.group("topic") or m.groupdict().get("topic2") or ""
                topic = _shorten(_WANT.sub("", raw.strip(), count=1))
                if _terms(topic):
                    return topic
    if task:
        return _task_topic(task)
    candidate = _salient_phrase(user_texts, exclude)
    if current is None or candidate is None:
        return current if candidate is None else candidate
    recent = set().union(*(_terms(t) for t in user_texts[-2:]))
    if _terms(current) & recent:
        return current
    return candidate


# -- entities --------------------------------------------------------------------------------

_QUOTED = re.compile(
    r"\"([^\"\n]{2,40})\"|“([^”\n]{2,40})”|「([^」\n]{1,40})」|『([^』\n]{1,40})』|《([^》\n]{1,40})》"
)
_CAPITALISED = re.compile(
    r"(?<![A-Za-z0-9])[A-Z][A-Za-z0-9'’&\-]*(?:\s+(?:of\s+|de\s+|&\s+)?[A-Z][A-Za-z0-9'’&\-]*)*"
)
_MIXED_CASE = re.compile(r"(?<![A-Za-z0-9])[a-z]+[A-Z][A-Za-z0-9]*(?![A-Za-z0-9])")
_IDENT = re.compile(
    r"#\d{3,}(?!\d)|(?<![A-Za-z0-9\-])(?=[A-Za-z0-9\-]*\d)(?=[A-Za-z0-9\-]*[A-Za-z])"
    r"[A-Za-z0-9][A-Za-z0-9\-]{3,}(?![A-Za-z0-9\-])"
)
_NOT_IDENT = re.compile(
    r"^\d+(?:st|nd|rd|th|am|pm|s|k|kg|km|m|g|h|min|mb|gb|tb|ms|x|d)$", re.IGNORECASE
)
_PLACE_ORG = re.compile(
    r"^[\u4e00-\u9fff]{1,8}?(?:市|省|县|公司|集团|大学|学院|银行|医院|机场|酒店|车站|研究所)"
)
_NOT_ENTITY = _wordset(
    """i monday tuesday wednesday thursday friday saturday sunday january february march april
    june july august september october november december ok okay thanks hello hi hey yes no
    dear sir madam mr mrs ms dr english chinese mandarin cantonese japanese korean french german
    spanish portuguese italian russian arabic hindi vietnamese thai"""
)


def _keep_capitalised(span: str, sentence_start: bool) -> str | None:
    words = span.split()
    while words and (_is_stopword(words[0]) or words[0].lower() in _NOT_ENTITY):
        words.pop(0)
        sentence_start = False
    if not words:
        return None
    if len(words) == 1:
        word = words[0]
        if word.lower() in _NOT_ENTITY or len(word) < 2:
            return None
        # A lone capitalised word opening a sentence is usually just the first word.
        if sentence_start and word[1:].islower() and word.lower() in _COMMON_OPENERS:
            return None
    return " ".join(words)


_COMMON_OPENERS = _wordset(
    """actually also anyway awesome because before besides but cool could did do does done
    even finally first fine found give good great had has have how however i'm if in indeed
    instead is it its just last later let maybe meanwhile my next no nope not now oh ok okay
    once perfect please really right see show since so sorry still sure tell thank thanks that
    then there these they this those today tomorrow well what when where which while who why
    will with would wow yeah yes yesterday you your check find send book cancel change update
    remember call email write make explain describe compare list summarize summarise translate
    help can order ticket case package item product account my our the a an"""
)


def extract_entities(text: str) -> list[str]:
    """Entities mentioned in a message: capitalised names, quoted terms, ids, CJK names.

    Args:
        text: The user's message.

    Returns:
        Entities in order of appearance, deduplicated (case-insensitive).
    """
    text = normalize_text(text)[:_MAX_CHARS]
    found: list[tuple[int, str]] = []
    for m in _QUOTED.finditer(text):
        found.append((m.start(), next(g for g in m.groups() if g).strip()))
    for sentence_match in re.finditer(r"[^.!?。\n]+", text):
        sentence = sentence_match.group()
        first = re.search(r"\S", sentence)
        for m in _CAPITALISED.finditer(sentence):
            kept = _keep_capitalised(m.group(), first is not None and m.start() == first.start())
            if kept:
                found.append((sentence_match.start() + m.start(), kept))
    for m in _MIXED_CASE.finditer(text):
        found.append((m.start(), m.group()))
    for m in _IDENT.finditer(text):
        if not _NOT_IDENT.match(m.group()):
            found.append((m.start(), m.group()))
    for chunk in _cjk_chunks(text):
        place = _PLACE_ORG.match(chunk)
        if place:
            found.append((text.find(chunk), place.group()))
    seen: set[str] = set()
    out: list[str] = []
    for _, entity in sorted(found, key=lambda item: item[0]):
        key = entity.casefold()
        # An id found inside a capitalised span ("Order 20240815CN001") is kept once.
        if key in seen or any(key in s and key != s for s in seen if len(key) < len(s)):
            continue
        seen.add(key)
        out.append(entity)
    return out


def update_entities(
    entities: Sequence[str], new: Iterable[str], *, limit: int = MAX_ENTITIES
) -> list[str]:
    """Add newly mentioned entities: a re-mention moves to the end, the oldest drop off.

    Args:
        entities: ``state["entities"]``.
        new: Entities of this turn, in order.
        limit: How many to keep.

    Returns:
        The new list, most recent last, without case-insensitive duplicates.
    """
    out = list(entities)
    for entity in new:
        entity = entity.strip()
        if not entity:
            continue
        key = entity.casefold()
        out = [e for e in out if e.casefold() != key]
        out.append(entity)
    return out[-limit:] if limit > 0 else []


# -- pending questions -----------------------------------------------------------------------


def detect_questions(text: str, *, exclude: Iterable[str] = ()) -> list[str]:
    """The questions a user message asks, one per sentence.

    Tag questions without content ("ok?", "right?") are left out, and so are sentences in
    ``exclude`` (requests already read as preferences, like "can you reply in English?").

    Args:
        text: The user's message.
        exclude: Sentences not to count.

    Returns:
        The question sentences, trimmed to 200 characters.
    """
    skipped = {normalize_text(s).strip() for s in exclude}
    out: list[str] = []
    for sentence in split_sentences(normalize_text(text)[:_MAX_CHARS]):
        if sentence in skipped or not is_question(sentence):
            continue
        if not _terms(sentence) and not _WH.search(sentence):
            continue
        out.append(sentence[:_MAX_QUESTION_CHARS])
    return out


def add_pending(
    pending: Sequence[PendingQuestion],
    questions: Iterable[str],
    turn: int,
    *,
    limit: int = MAX_PENDING,
) -> list[PendingQuestion]:
    """Add this turn's questions; a question asked again moves to the end with the new turn.

    Args:
        pending: ``state["pending_questions"]``.
        questions: Questions asked this turn (``detect_questions``).
        turn: This turn's number.
        limit: How many to keep (the oldest are dropped).

    Returns:
        The new list, oldest first.
    """
    out = list(pending)
    for question in questions:
        key = fold(question)
        out = [q for q in out if fold(q["text"]) != key]
        out.append(PendingQuestion(text=question, turn=turn))
    return out[-limit:] if limit > 0 else []


_CLARIFY = re.compile(
    r"\b(?:could|can|would) you (?:clarify|tell me|provide|share|confirm|specify|explain what)|"
    r"\bdo you mean\b|\bwhat do you mean\b|\bwhich (?:one|of)\b|\bdid you mean\b|"
    r"您是指|你是指|你是说|您是说|请问您|请问你|能否提供|可以提供|请提供|请确认|哪一个|哪个\w{0,4}呢",
    re.IGNORECASE,
)
_COURTESY = re.compile(
    r"anything else|any other questions|what else can i|how (?:can|may) i (?:help|assist)|"
    r"what can i do for you|还有(?:什么|其他|别的)|还需要(?:什么|其他)|"
    r"有什么(?:可以|能)?(?:帮|效劳)",
    re.IGNORECASE,
)


def _asks_back(reply: str) -> bool:
    sentences = split_sentences(reply)
    if not sentences:
        return False
    if any(_CLARIFY.search(s) and is_question(s) for s in sentences):
        return True
    questions = [s for s in sentences if is_question(s) and not _COURTESY.search(s)]
    # A short reply that ends by asking something is a question back, not an answer.
    return len(sentences) <= 2 and bool(questions) and questions[-1] == sentences[-1]


def resolve_pending(
    pending: Sequence[PendingQuestion], reply_text: str, finish_reason: str | None, turn: int
) -> list[PendingQuestion]:
    """Drop the pending questions the assistant's reply answered.

    Heuristic: the reply that follows a turn's only question answers it (a direct answer
    seldom repeats the question's words: "What is the capital of France?" "It is Paris."), and
    so does the reply to a question without content terms ("why?"); otherwise a question
    counts as answered when enough of its content terms appear in the reply (30% for this
    turn's questions, 50% for older ones). Nothing is resolved when the reply was cut off
    (``finish_reason == "length"``), is empty, or asks the user something back (a clarifying
    question; a closing courtesy such as "How can I help?" does not count).

    Args:
        pending: ``state["pending_questions"]``.
        reply_text: The assistant's reply.
        finish_reason: ``"stop"`` or ``"length"`` (None counts as a complete reply).
        turn: This turn's number.

    Returns:
        The questions still pending, oldest first.
    """
    pending = list(pending)
    reply = normalize_text(reply_text or "").strip()
    if not pending or finish_reason == "length" or not reply or _asks_back(reply):
        return pending
    reply_terms = _terms(reply)
    lone = sum(q["turn"] == turn for q in pending) == 1
    kept: list[PendingQuestion] = []
    for question in pending:
        question_terms = _terms(question["text"])
        if not question_terms or (lone and question["turn"] == turn):
            answered = question["turn"] == turn
        else:
            share = 0.3 if question["turn"] == turn else 0.5
            hits = len(question_terms & reply_terms)
            answered = hits >= max(1, math.ceil(len(question_terms) * share))
        if not answered:
            kept.append(question)
    return kept
