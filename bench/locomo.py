"""LoCoMo benchmark: what the product's prompt holds, and what B tokens hold, against baselines."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.progress import bar, line_callback, new_figure, save_figure
from nodes.memory import Embedder, MemoryRecord
from store.embeddings import load_embedder
from store.lexical import BM25Scorer, TokenizedDoc
from store.vector_memory import ChromaMemory, stamp_text

__all__ = [
    "CATEGORIES",
    "Conversation",
    "Question",
    "Turn",
    "context_options",
    "evaluate",
    "fill_budget",
    "load_conversations",
    "main",
]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


DATA_HINT = (
    "pass a folder of LoCoMo-format conv-*.json files: steadychat bench locomo --data DIR "
    "(or set STEADYCHAT_LOCOMO_DIR)"
)


def _default_data() -> Path | None:
    """``shared/benchmarks/locomo`` beside the clone (or one folder up, for a worktree).

    Looked for from the package's own folder (an editable install from a clone) and from the
    working directory (a clone's root, whatever the install).
    """
    starts = [Path(__file__).resolve().parents[1], Path.cwd().resolve()]
    for start in starts:
        for parent in [start, *start.parents][:3]:
            folder = parent / "shared" / "benchmarks" / "locomo"
            if folder.is_dir():
                return folder
    return None


DEFAULT_DATA = _default_data()
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
        raise FileNotFoundError(f"no conv-*.json in {folder}; {DATA_HINT}")
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


def plain_terms(text: str) -> TokenizedDoc:
    """The baselines' terms: plain lowercase words (no stemming, no stop words)."""
    from collections import Counter

    terms = _WORD_RE.findall(text.lower())
    return TokenizedDoc(Counter(terms), len(terms))


def rrf(*rankings: Sequence[int], k: int = 60) -> list[int]:
    """Reciprocal rank fusion of rankings of the same items (best first)."""
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
        bm25 = BM25Scorer([plain_terms(t) for t in plain])
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
            lexical = bm25.scores(plain_terms(question.text).terms.elements())
            bm25_order = sorted(range(len(turns)), key=lambda i: -lexical[i])
            rankings["BM25"] = (bm25_order, plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            dense = turn_vectors @ question_vectors[q_index]
            dense_order = [int(i) for i in np.argsort(-dense, kind="stable")]
            rankings["dense MiniLM"] = (dense_order, plain, time.perf_counter() - t0)
            t0 = time.perf_counter()
            rankings["RRF fusion"] = (
                rrf(bm25_order, dense_order),
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
        f"### store level, {title}: {n} questions",
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
    """Format the store-level results as Markdown tables: overall, per category, timings.

    Args:
        outcomes: What :func:`evaluate` returned.
        budgets: The budgets evaluated.

    Returns:
        The report.
    """
    parts = [_table(outcomes, budgets, None)]
    parts += [_table(outcomes, budgets, c) for c in CATEGORIES]
    timing = ["### store level: retrieval time per question (median ms)", ""]
    for name, outcome in outcomes.items():
        timing.append(f"- {name}: {statistics.median(outcome.seconds) * 1000:.2f}")
    parts.append("\n".join(timing))
    return "\n\n".join(parts)


def store_rates(outcomes: dict[str, Outcome], budgets: Sequence[int]) -> dict[str, Any]:
    """The store-level rates as the JSON holds them (see bench/README.md for the keys).

    Args:
        outcomes: What :func:`evaluate` returned.
        budgets: The budgets evaluated.

    Returns:
        ``{strategy: {category: {"questions", "evidence": {B: rate}, "answer": {B: rate}}}}``.
    """
    rates: dict[str, Any] = {}
    for name, outcome in outcomes.items():
        per: dict[str, Any] = {}
        for key, category in (("all", None), *((v, k) for k, v in CATEGORIES.items())):
            mask = None if category is None else [c == category for c in outcome.categories]
            per[key] = {
                "questions": len(outcome.categories) if mask is None else sum(mask),
                "evidence": {str(b): _rate(outcome.evidence[b], mask) for b in budgets},
                "answer": {str(b): _rate(outcome.answer[b], mask) for b in budgets},
            }
        rates[name] = per
    return rates


# -- the product path -----------------------------------------------------------------------

GOAL_EVIDENCE = 0.85
"""Evidence in the assembled prompt, all questions (issue goal)."""
GOAL_ANSWER = 0.40
"""Answer string in the assembled prompt, all questions (issue goal)."""
TUNED_ON = ("conv-26", "conv-30", "conv-41", "conv-42")
"""The conversations constants were chosen on; the others only check them."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def product_rates(results: Sequence[Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per-category rates of the product-path arm and of fusion at the same tokens.

    Args:
        results: ``QuestionResult`` rows (see :mod:`bench.locomo_product`).

    Returns:
        ``{"product": {category: rates}, "fusion_same_tokens": {category: rates}}`` where the
        categories are ``all`` and the four names, and rates hold ``questions``,
        ``evidence``, ``evidence_recalled``, ``answer``, ``prompt_tokens`` (mean),
        ``memory_tokens`` (mean), ``recalled`` (mean snippets) and ``polluting`` (share of
        recalled snippets that are earlier questions or replies to them).
    """
    out: dict[str, dict[str, dict[str, float]]] = {"product": {}, "fusion_same_tokens": {}}
    for key, category in (("all", None), *((v, k) for k, v in CATEGORIES.items())):
        rows = [r for r in results if category is None or r.category == category]
        recalled = sum(r.recalled for r in rows)
        out["product"][key] = {
            "questions": len(rows),
            "evidence": _mean([r.evidence for r in rows]),
            "evidence_recalled": _mean([r.evidence_recalled for r in rows]),
            "answer": _mean([r.answer for r in rows]),
            "prompt_tokens": _mean([r.prompt_tokens for r in rows]),
            "memory_tokens": _mean([r.memory_tokens for r in rows]),
            "recalled": _mean([r.recalled for r in rows]),
            "polluting": sum(r.polluting for r in rows) / recalled if recalled else 0.0,
        }
        out["fusion_same_tokens"][key] = {
            "questions": len(rows),
            "evidence": _mean([r.fusion_evidence for r in rows]),
            "evidence_recalled": _mean([r.fusion_evidence_recalled for r in rows]),
            "answer": _mean([r.fusion_answer for r in rows]),
            "prompt_tokens": _mean([r.prompt_tokens for r in rows]),
            "memory_tokens": _mean([r.memory_tokens for r in rows]),
        }
    return out


def product_table(title: str, rates: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of the product-path arm against fusion at the same token count.

    Args:
        title: Heading.
        rates: What :func:`product_rates` returned.

    Returns:
        The table.
    """
    ours, base = rates["product"], rates["fusion_same_tokens"]
    lines = [
        f"### {title}",
        "",
        "| category | questions | evidence in prompt: ours / fusion | evidence recalled: ours / "
        "fusion | answer in prompt: ours / fusion | prompt tokens | memory tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in ours.items():
        other = base[key]
        if not row["questions"]:
            continue
        lines.append(
            f"| {key} | {row['questions']:.0f} | {row['evidence']:.3f} / {other['evidence']:.3f}"
            f" | {row['evidence_recalled']:.3f} / {other['evidence_recalled']:.3f}"
            f" | {row['answer']:.3f} / {other['answer']:.3f}"
            f" | {row['prompt_tokens']:.0f} | {row['memory_tokens']:.0f} |"
        )
    return "\n".join(lines)


def in_a_row_table(title: str, rates: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the questions asked in a row (the pollution measurement).

    Args:
        title: Heading.
        rates: ``product_rates(...)["product"]`` of the in-a-row results.

    Returns:
        The table.
    """
    lines = [
        f"### {title}",
        "",
        "| category | questions | evidence in prompt | answer in prompt | snippets recalled | "
        "of them earlier questions or their replies |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in rates.items():
        if not row["questions"]:
            continue
        lines.append(
            f"| {key} | {row['questions']:.0f} | {row['evidence']:.3f} | {row['answer']:.3f} | "
            f"{row['recalled']:.1f} | {row['polluting']:.3f} |"
        )
    return "\n".join(lines)


def goals(rates: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """The issue's goals beside the measured values (goals, not pass/fail tests).

    Args:
        rates: What :func:`product_rates` returned.

    Returns:
        One entry per goal: ``goal``, ``target``, ``measured``, ``met``.
    """
    ours, base = rates["product"], rates["fusion_same_tokens"]
    rows: list[dict[str, Any]] = [
        {
            "goal": "evidence in the assembled prompt, all questions",
            "target": GOAL_EVIDENCE,
            "measured": ours["all"]["evidence"],
        },
        {
            "goal": "answer string in the assembled prompt, all questions",
            "target": GOAL_ANSWER,
            "measured": ours["all"]["answer"],
        },
    ]
    for name in CATEGORIES.values():
        if not ours[name]["questions"]:
            continue
        rows.append(
            {
                "goal": f"{name}: evidence in prompt at least fusion's at the same tokens",
                "target": base[name]["evidence"],
                "measured": ours[name]["evidence"],
            }
        )
    for row in rows:
        row["met"] = bool(row["measured"] >= row["target"])
    return rows


def goals_table(rows: Sequence[dict[str, Any]]) -> str:
    """The goals as a Markdown table."""
    lines = ["| goal | target | measured | met |", "|---|---|---|---|"]
    for row in rows:
        met = "yes" if row["met"] else "no"
        lines.append(f"| {row['goal']} | {row['target']:.3f} | {row['measured']:.3f} | {met} |")
    return "\n".join(lines)


def write_plot(path: Path, groups: dict[str, dict[str, Any]]) -> None:
    """Plot the product-path arm against fusion per category, with the goals, as a PNG.

    Args:
        path: Where the PNG goes.
        groups: ``{group name: product_rates(...)}`` (all, tuned-on, checked-on).
    """
    keys = ["all", *CATEGORIES.values()]
    figure, axes = new_figure(len(groups), 2)
    x = np.arange(len(keys))
    for row, (group, rates) in enumerate(groups.items()):
        for col, (metric, goal) in enumerate(
            (("evidence", GOAL_EVIDENCE), ("answer", GOAL_ANSWER))
        ):
            ax = axes[row][col]
            ours = [rates["product"][k][metric] for k in keys]
            base = [rates["fusion_same_tokens"][k][metric] for k in keys]
            ax.bar(x - 0.2, ours, 0.4, label="steadychat (product path)")
            ax.bar(x + 0.2, base, 0.4, label="fusion, same tokens")
            ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label=f"goal {goal:.2f}")
            ax.set_xticks(x, keys)
            ax.set_ylim(0, 1)
            ax.set_title(f"{group}: {metric} in the assembled prompt")
            if row == 0 and col == 0:
                ax.legend(loc="lower right", fontsize=8)
    save_figure(figure, path)


def write_store_plot(path: Path, store: dict[str, Any], budgets: Sequence[int]) -> None:
    """Evidence and answer against the context budget, per strategy (store level), as a PNG."""
    figure, axes = new_figure(1, 2, width=11, height=3.8)
    for ax, metric in zip(axes[0], ("evidence", "answer"), strict=True):
        for strategy, per_category in store.items():
            rates = per_category["all"][metric]
            ax.plot(budgets, [rates[str(b)] for b in budgets], marker="o", label=strategy)
        ax.set_xlabel("context budget B (len/4 tokens)")
        ax.set_ylim(0, 1)
        ax.set_title(f"store level: {metric} within B tokens, all questions")
    axes[0][0].legend(fontsize=8)
    save_figure(figure, path)


def _groups(conversations: Sequence[Conversation], tuned_on: Sequence[str]) -> dict[str, list[str]]:
    ids = [c.conv_id for c in conversations]
    groups = {"all": ids}
    tuned = [i for i in ids if i in tuned_on]
    checked = [i for i in ids if i not in tuned_on]
    if tuned and checked:
        groups["tuned-on"] = tuned
        groups["checked-on"] = checked
    return groups


def _load_counter(model: str) -> Any:
    from graph.loading import load_chat_model
    from graph.settings import Settings

    return load_chat_model(Settings(model=model))


def context_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as typed ``Context`` overrides (the field's default gives the type).

    Raises:
        ValueError: Not ``FIELD=VALUE``, an unknown field, or a value of the wrong type.
    """
    import dataclasses

    from nodes.context import Context

    defaults = {f.name: getattr(Context(), f.name) for f in dataclasses.fields(Context)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"--context wants FIELD=VALUE with a Context field, got {pair!r}")
        default = defaults[name]
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--context {name} wants true or false, got {raw!r}")
            out[name] = raw.lower() in ("true", "1")
        elif isinstance(default, int | float):
            try:
                out[name] = type(default)(raw)
            except ValueError:
                raise ValueError(f"--context {name} wants a number, got {raw!r}") from None
        else:
            raise ValueError(f"--context {name} cannot be set from the command line")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.locomo [--data DIR] [--json FILE] ...``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(prog="steadychat bench locomo", description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of LoCoMo-format conv-*.json files (default: STEADYCHAT_LOCOMO_DIR, "
        "else shared/benchmarks/locomo beside the clone)",
    )
    parser.add_argument("--conversations", type=int, default=None, help="only the first N")
    parser.add_argument(
        "--only", nargs="+", default=None, help="only these conversations (ids like conv-26)"
    )
    parser.add_argument("--embedder", default="default", help="embedder name (see load_embedder)")
    parser.add_argument(
        "--model", default="tiny", help="chat model whose tokenizer counts the prompt"
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=["product", "store"],
        default=["product", "store"],
        help="the product path (replay through the service) and/or the store-level sweep",
    )
    parser.add_argument(
        "--no-in-a-row",
        action="store_true",
        help="skip asking the questions in a row (the pollution measurement)",
    )
    parser.add_argument(
        "--tuned-on",
        nargs="+",
        default=list(TUNED_ON),
        help="conversations constants were chosen on; tables split tuned-on / checked-on",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--ranking", choices=["score", "rrf"], default="score")
    parser.add_argument("--dense-weight", type=float, default=0.4)
    parser.add_argument(
        "--neighbours", type=int, default=1, help="store level: records following each hit"
    )
    parser.add_argument(
        "--context",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="product path: per-run Context fields to override (e.g. memory_diversity=0.3)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the rates here (and a PNG beside it)"
    )
    args = parser.parse_args(argv)
    try:
        context_opts = context_options(args.context)
    except ValueError as exc:
        parser.error(str(exc))
    if any(b <= 0 for b in args.budgets):
        parser.error("budgets must be positive")
    if args.neighbours < 0:
        parser.error("--neighbours must be >= 0")
    if args.data is None:
        env = os.environ.get("STEADYCHAT_LOCOMO_DIR")
        args.data = Path(env) if env else DEFAULT_DATA
    if args.data is None:
        parser.error(f"no LoCoMo data found beside this clone; {DATA_HINT}")
    try:
        conversations = load_conversations(args.data)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if args.only:
        conversations = [c for c in conversations if c.conv_id in set(args.only)]
    conversations = conversations[: args.conversations]
    if not conversations:
        parser.error("no conversation left to run")
    embedder = load_embedder(args.embedder)
    started = time.perf_counter()
    data: dict[str, Any] = {
        "version": 2,
        "settings": {
            "data": str(args.data),
            "embedder": args.embedder,
            "model": args.model,
            "tuned_on": list(args.tuned_on),
            "context": context_opts,
            "budgets": list(args.budgets),
            "store": {
                "ranking": args.ranking,
                "dense_weight": args.dense_weight,
                "neighbours": args.neighbours,
            },
        },
    }
    print(f"# LoCoMo memory benchmark ({len(conversations)} conversations, {args.embedder})\n")
    if "product" in args.arms:
        import asyncio

        from bench.locomo_product import run_product_path
        from graph.settings import Settings

        settings = Settings()
        progress = bar(len(conversations), "LoCoMo product path", unit="conversation")
        forked, in_a_row = asyncio.run(
            run_product_path(
                conversations,
                counter=_load_counter(args.model),
                embedder=embedder,
                memory=ChromaMemory.ephemeral(embedder),
                context_window=settings.context_window,
                service_options={},
                context_options=context_opts,
                sequential=not args.no_in_a_row,
                progress=line_callback(progress),
            )
        )
        progress.close()
        groups: dict[str, Any] = {}
        for name, ids in _groups(conversations, args.tuned_on).items():
            rows = [r for r in forked if r.conv_id in ids]
            rates = product_rates(rows)
            entry: dict[str, Any] = {"conversations": ids, **rates}
            print(
                product_table(
                    f"product path, {name} ({', '.join(ids)}): the assembled prompt", rates
                )
                + "\n"
            )
            if in_a_row:
                row_rates = product_rates([r for r in in_a_row if r.conv_id in ids])["product"]
                entry["product_in_a_row"] = row_rates
                print(in_a_row_table(f"product path, {name}: questions asked in a row", row_rates))
                print()
            groups[name] = entry
        data["groups"] = groups
        data["goals"] = goals(groups["all"])
        print("### goals (all conversations)\n")
        print(goals_table(data["goals"]) + "\n")
        if "checked-on" in groups:
            data["goals_checked_on"] = goals(groups["checked-on"])
            print("### goals (checked-on conversations only)\n")
            print(goals_table(data["goals_checked_on"]) + "\n")
    if "store" in args.arms:
        progress = bar(len(conversations), "LoCoMo store level", unit="conversation")
        outcomes = evaluate(
            conversations,
            embedder,
            args.budgets,
            memory_factory=lambda e: ChromaMemory.ephemeral(
                e, ranking=args.ranking, dense_weight=args.dense_weight
            ),
            neighbours=args.neighbours,
            progress=line_callback(progress),
        )
        progress.close()
        print(
            f"## store level (ranking={args.ranking}, dense_weight={args.dense_weight}, "
            f"neighbours={args.neighbours}; len/4 tokens)\n"
        )
        print(report(outcomes, args.budgets))
        data["store"] = store_rates(outcomes, args.budgets)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
        png = args.json.with_suffix(".png")
        if "groups" in data:
            write_plot(png, {k: v for k, v in data["groups"].items()})
        if "store" in data:
            store_png = png.with_name(png.stem + "-store.png") if "groups" in data else png
            write_store_plot(store_png, data["store"], args.budgets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
