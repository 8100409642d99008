"""LoCoMo benchmark: what a context of B tokens holds, ours and baselines side by side."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from nodes.memory import Embedder, MemoryRecord
from store.embeddings import load_embedder
from store.lexical import BM25Scorer, TokenizedDoc
from store.vector_memory import ChromaMemory, stamp_text

__all__ = [
    "CATEGORIES",
    "Conversation",
    "Question",
    "Turn",
    "evaluate",
    "fill_budget",
    "load_conversations",
    "main",
]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "locomo"
BASELINES = ("sliding window", "BM25", "dense MiniLM", "RRF fusion")
OURS = "ChromaMemory"
_SESSION_RE = re.compile(r"^session_(\d+)$")
_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation, as the baselines and our store see it."""

    dia_id: str
    session: int
    text: str
    """ "Speaker: text" (+ " [shares image: caption]")."""
    context_text: str
    """What a baseline puts in its context: the text, with "[Session K, date] " before the
    first turn of a session."""
    timestamp: str
    """The session's date and time, ISO-8601."""


@dataclass(frozen=True)
class Question:
    """A question of categories 1-4 with its answer and evidence turns."""

    text: str
    answer: str
    evidence: frozenset[str]
    category: int


@dataclass
class Conversation:
    """One LoCoMo conversation."""

    conv_id: str
    turns: list[Turn]
    questions: list[Question] = field(default_factory=list)


def _parse_date(raw: str) -> datetime:
    # LoCoMo writes dates like "1:56 pm on 8 May, 2023".
    return datetime.strptime(raw.strip(), "%I:%M %p on %d %B, %Y")


def load_conversations(folder: Path) -> list[Conversation]:
    """Read every ``conv-*.json`` of the LoCoMo folder.

    Args:
        folder: The folder holding the conversations.

    Returns:
        The conversations with their questions of categories 1-4.

    Raises:
        FileNotFoundError: No conversation in the folder.
    """
    files = sorted(folder.glob("conv-*.json"))
    if not files:
        raise FileNotFoundError(f"no conv-*.json in {folder} (set --data)")
    conversations = []
    for path in files:
        raw = json.loads(path.read_text(encoding="utf-8"))
        sessions = sorted(
            int(m.group(1)) for key in raw if (m := _SESSION_RE.match(key)) and raw[key]
        )
        turns: list[Turn] = []
        for number in sessions:
            raw_date = raw[f"session_{number}_date_time"]
            timestamp = _parse_date(raw_date).isoformat()
            for i, item in enumerate(raw[f"session_{number}"]):
                text = f"{item['speaker']}: {item['text']}"
                if item.get("blip_caption"):
                    text += f" [shares image: {item['blip_caption']}]"
                prefix = f"[Session {number}, {raw_date}] " if i == 0 else ""
                turns.append(Turn(item["dia_id"], number, text, prefix + text, timestamp))
        questions = [
            Question(
                text=q["question"],
                answer=str(q["answer"]),
                evidence=frozenset(q.get("evidence", [])),
                category=int(q["category"]),
            )
            for q in raw["qa"]
            if int(q["category"]) in CATEGORIES and "answer" in q
        ]
        conversations.append(Conversation(path.stem, turns, questions))
    return conversations


def _tokens(text: str) -> float:
    return len(text) / 4


def fill_budget(order: Sequence[int], texts: Sequence[str], budget: int) -> list[int]:
    """Take turns in ranked order while they fit in the budget (len(text)/4 tokens each).

    Args:
        order: Turn indices, best first.
        texts: The text each turn takes in the context.
        budget: Tokens available.

    Returns:
        The indices taken.
    """
    taken: list[int] = []
    used = 0.0
    for index in order:
        cost = _tokens(texts[index])
        if used + cost > budget:
            continue
        taken.append(index)
        used += cost
    return taken


def _plain_terms(text: str) -> TokenizedDoc:
    from collections import Counter

    terms = _WORD_RE.findall(text.lower())
    return TokenizedDoc(Counter(terms), len(terms))


def _rrf(*rankings: Sequence[int], k: int = 60) -> list[int]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking):
            scores[index] = scores.get(index, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda i: -scores[i])


class _QueryCache:
    """Embedder wrapper remembering query vectors, so every strategy embeds a question once."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.dimension = embedder.dimension
        self.name = getattr(embedder, "name", "custom")
        self._queries: dict[str, list[float]] = {}

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        if text not in self._queries:
            self._queries[text] = self.inner.embed_documents([text])[0]
        return self._queries[text]

    def prefetch(self, texts: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._queries]
        for text, vector in zip(missing, self.inner.embed_documents(missing), strict=True):
            self._queries[text] = vector


@dataclass
class Outcome:
    """Per strategy: one row per question and budget."""

    evidence: dict[int, list[bool]] = field(default_factory=dict)
    answer: dict[int, list[bool]] = field(default_factory=dict)
    categories: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def evaluate(
    conversations: Sequence[Conversation],
    embedder: Embedder,
    budgets: Sequence[int],
    *,
    memory_factory: Callable[[Embedder], ChromaMemory] | None = None,
    neighbours: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Outcome]:
    """Run the baselines and ChromaMemory side by side over the conversations.

    Args:
        conversations: What :func:`load_conversations` returned.
        embedder: Embedder of the dense baseline and of our store.
        budgets: Context budgets in tokens.
        memory_factory: Builds our store (default: an in-memory ``ChromaMemory``).
        neighbours: Passed to ``ChromaMemory.search``: records following each hit.
        progress: Called with a line per conversation.

    Returns:
        Outcomes keyed by strategy name (the baselines, then ``OURS``).
    """
    factory = memory_factory or (lambda e: ChromaMemory.ephemeral(e))
    embedder = _QueryCache(embedder)
    memory = factory(embedder)
    outcomes = {name: Outcome() for name in (*BASELINES, OURS)}
    for conv in conversations:
        started = time.perf_counter()
        turns = conv.turns
        plain = [t.context_text for t in turns]
        stamped = [stamp_text(t.text, t.timestamp) for t in turns]
        position = {t.dia_id: i for i, t in enumerate(turns)}
        memory.add(
            [
                MemoryRecord(
                    id=f"{conv.conv_id}:{t.dia_id}",
                    text=t.text,
                    thread_id=conv.conv_id,
                    user_id="locomo",
                    turn=i,
                    role="user",
                    timestamp=t.timestamp,
                )
                for i, t in enumerate(turns)
            ]
        )
        turn_vectors = np.asarray(embedder.embed_documents(plain), dtype=np.float64)
        bm25 = BM25Scorer([_plain_terms(t) for t in plain])
        embedder.prefetch([q.text for q in conv.questions])
        question_vectors = np.asarray(
            [embedder.embed_query(q.text) for q in conv.questions], dtype=np.float64
        )
        for q_index, question in enumerate(conv.questions):
            rankings: dict[str, tuple[list[int], Sequence[str], float]] = {}
            t0 = time.perf_counter()
            rankings["sliding window"] = (
                list(range(len(turns) - 1, -1, -1)),
                plain,
                time.perf_counter() - t0,
            )
            t0 = time.perf_counter()
            lexical = bm25.scores(_plain_terms(question.text).terms.elements())
            bm25_order = sorted(range(len(turns)), key=lambda i: -lexical[i])
            rankings["BM25"] = (bm25_order, plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            dense = turn_vectors @ question_vectors[q_index]
            dense_order = [int(i) for i in np.argsort(-dense, kind="stable")]
            rankings["dense MiniLM"] = (dense_order, plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            rankings["RRF fusion"] = (
                _rrf(bm25_order, dense_order),
                plain,
                time.perf_counter() - t0,
            )
            t0 = time.perf_counter()
            hits = memory.search(
                question.text,
                thread_id=conv.conv_id,
                user_id=None,
                k=len(turns),
                neighbours=neighbours,
            )
            ours = [position[h.record.id.split(":", 1)[1]] for h in hits]
            rankings[OURS] = (ours, stamped, time.perf_counter() - t0)
            answer = question.answer.lower()
            for name, (order, texts, seconds) in rankings.items():
                outcome = outcomes[name]
                outcome.categories.append(question.category)
                outcome.seconds.append(seconds)
                for budget in budgets:
                    taken = fill_budget(order, texts, budget)
                    ids = {turns[i].dia_id for i in taken}
                    context = "\n".join(texts[i] for i in taken).lower()
                    outcome.evidence.setdefault(budget, []).append(bool(ids & question.evidence))
                    outcome.answer.setdefault(budget, []).append(answer in context)
        if progress:
            progress(
                f"{conv.conv_id}: {len(turns)} turns, {len(conv.questions)} questions, "
                f"{time.perf_counter() - started:.1f} s"
            )
    return outcomes


def _rate(values: Sequence[bool], mask: Sequence[bool] | None = None) -> float:
    picked = [v for v, m in zip(values, mask or [True] * len(values), strict=True) if m]
    return sum(picked) / len(picked) if picked else float("nan")


def _table(outcomes: dict[str, Outcome], budgets: Sequence[int], category: int | None) -> str:
    cats = outcomes[OURS].categories
    mask = None if category is None else [c == category for c in cats]
    n = len(cats) if mask is None else sum(mask)
    title = "all categories"
    if category is not None:
        title = f"category {category} ({CATEGORIES[category]})"
    head = " / ".join(f"B={b}" for b in budgets)
    lines = [
        f"## {title}: {n} questions",
        "",
        f"| strategy | evidence {head} | answer {head} |",
        "|---|---|---|",
    ]
    ours = outcomes[OURS]
    for name, outcome in outcomes.items():
        ev = " / ".join(f"{_rate(outcome.evidence[b], mask):.3f}" for b in budgets)
        an = " / ".join(f"{_rate(outcome.answer[b], mask):.3f}" for b in budgets)
        lines.append(f"| {name} | {ev} | {an} |")
    for name in BASELINES:
        base = outcomes[name]
        ev = " / ".join(
            _ratio(_rate(ours.evidence[b], mask), _rate(base.evidence[b], mask)) for b in budgets
        )
        an = " / ".join(
            _ratio(_rate(ours.answer[b], mask), _rate(base.answer[b], mask)) for b in budgets
        )
        lines.append(f"| ours / {name} | {ev} | {an} |")
    return "\n".join(lines)


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else "n/a"


def report(outcomes: dict[str, Outcome], budgets: Sequence[int]) -> str:
    """Format the results as Markdown tables: overall, then per category, then timings.

    Args:
        outcomes: What :func:`evaluate` returned.
        budgets: The budgets evaluated.

    Returns:
        The report.
    """
    parts = [_table(outcomes, budgets, None)]
    parts += [_table(outcomes, budgets, c) for c in CATEGORIES]
    timing = ["## retrieval time per question (median ms)", ""]
    for name, outcome in outcomes.items():
        timing.append(f"- {name}: {statistics.median(outcome.seconds) * 1000:.2f}")
    parts.append("\n".join(timing))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.locomo [--data DIR] [--budgets ...]``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.locomo", description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("STEADYCHAT_LOCOMO_DIR", DEFAULT_DATA)),
        help="folder of the LoCoMo conv-*.json files (default: ../shared/benchmarks/locomo)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--conversations", type=int, default=None, help="only the first N")
    parser.add_argument("--embedder", default="default", help="embedder name (see load_embedder)")
    parser.add_argument("--ranking", choices=["score", "rrf"], default="score")
    parser.add_argument("--dense-weight", type=float, default=0.4)
    parser.add_argument(
        "--neighbours", type=int, default=1, help="records following each hit (see search())"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rates here")
    args = parser.parse_args(argv)
    if any(b <= 0 for b in args.budgets):
        parser.error("budgets must be positive")
    if args.neighbours < 0:
        parser.error("--neighbours must be >= 0")
    try:
        conversations = load_conversations(args.data)[: args.conversations]
    except FileNotFoundError as exc:
        parser.error(str(exc))
    embedder = load_embedder(args.embedder)
    started = time.perf_counter()
    outcomes = evaluate(
        conversations,
        embedder,
        args.budgets,
        memory_factory=lambda e: ChromaMemory.ephemeral(
            e, ranking=args.ranking, dense_weight=args.dense_weight
        ),
        neighbours=args.neighbours,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(
        f"# LoCoMo context benchmark ({args.embedder}, ranking={args.ranking}, "
        f"dense_weight={args.dense_weight}, neighbours={args.neighbours})\n"
    )
    print(report(outcomes, args.budgets))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        rates = {
            name: {
                "evidence": {b: _rate(o.evidence[b]) for b in args.budgets},
                "answer": {b: _rate(o.answer[b]) for b in args.budgets},
            }
            for name, o in outcomes.items()
        }
        args.json.write_text(json.dumps(rates, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
