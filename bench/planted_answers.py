"""Answers from memory: planted facts asked late, steadychat against a sliding window, one model.

Each planted-facts conversation (:mod:`bench.planted`; English and Chinese, 50 / 200 / 500
turns) is replayed into a thread through the service (the real graph, checkpointer and Chroma
memory, the product's settings) with a recorder for a model: what counts for memory is the
prompt, so the history needs no generation. Then every planted fact is asked, from the replayed
state, and the real model (``--model``, loaded by the product's own loader) writes the reply
inside the turn. The baseline gives the same model the same question after a sliding window of
the latest turns, as many tokens as steadychat's prompt took. A reply counts when it contains
the planted value (normalised: NFKC, case folded, without spaces or punctuation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from api.replay import ReplayStep, replay
from bench.locomo_product import PromptRecorder, WriteGate
from bench.planted import LENGTHS, PlantedConversation, PlantedFact, planted_conversation
from nodes.text import message_text
from store.embeddings import load_embedder

__all__ = [
    "AnswerResult",
    "contains_value",
    "main",
    "normalise",
    "rates",
    "run_planted",
    "window_prompt",
]

GOAL = "steadychat's replies hold the planted value at least as often as the window's"


def normalise(text: str) -> str:
    """Text as compared: NFKC, case folded, without whitespace, punctuation or symbols."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", "", folded)


def contains_value(reply: str, value: str) -> bool:
    """Whether the reply says the value (normalised match, see :func:`normalise`)."""
    wanted = normalise(value)
    return bool(wanted) and wanted in normalise(reply)


@dataclass
class AnswerResult:
    """One late question, answered with steadychat's prompt and with the window's."""

    conv_id: str
    language: str
    turns: int
    fact_turn: int
    question: str
    value: str
    ours: bool
    """steadychat's reply holds the value."""
    window: bool
    """The sliding window's reply holds the value."""
    ours_prompt_has: bool
    """The value is in steadychat's prompt (the question aside)."""
    window_prompt_has: bool
    ours_tokens: int
    window_tokens: int
    ours_reply: str
    window_reply: str


def window_prompt(
    conv: PlantedConversation, question: str, budget: int, count: Callable[[list[BaseMessage]], int]
) -> list[BaseMessage]:
    """The latest exchanges and the question, as many as fit in ``budget`` tokens.

    Args:
        conv: The conversation.
        question: The late question.
        budget: Tokens of the templated prompt at most (steadychat's prompt's count).
        count: Tokens of a templated prompt, under the answering model.

    Returns:
        The messages, oldest first, the question last.
    """
    kept: list[BaseMessage] = [HumanMessage(question)]
    for user, reply, _ in reversed(conv.turns):
        candidate: list[BaseMessage] = [HumanMessage(user), AIMessage(reply), *kept]
        if count(candidate) > budget:
            break
        kept = candidate
    return kept


def _answerer(model: BaseChatModel, max_new_tokens: int) -> Callable[[list[BaseMessage]], str]:
    def answer(messages: list[BaseMessage]) -> str:
        # Greedy and short, the same for both arms.
        out = model.invoke(messages, max_new_tokens=max_new_tokens, temperature=0.0)
        return message_text(out)

    return answer


def _fixed_reply(messages: list[BaseMessage]) -> str:
    return "Okay."


async def _conversation(
    service: Any,
    recorder: PromptRecorder,
    gate: WriteGate,
    conv: PlantedConversation,
    answer: Callable[[list[BaseMessage]], str],
    count: Callable[[list[BaseMessage]], int],
    facts: Sequence[PlantedFact],
) -> list[AnswerResult]:
    thread_id = conv.conv_id
    steps = [
        ReplayStep(text=u, timestamp=when, recorded_reply=r, recorded_timestamp=when)
        for u, r, when in conv.turns
    ]
    gate.open = True
    recorder.reply = _fixed_reply
    await replay(service, thread_id, steps)
    config: Any = {"configurable": {"thread_id": thread_id}}
    replayed = await service.graph.aget_state(config)
    gate.open = False
    out: list[AnswerResult] = []
    for fact in facts:
        recorder.reply = answer
        result = await service.run_turn(thread_id, fact.question, timestamp=conv.ask_time)
        prompt = recorder.prompts[-1]
        ours_text = "\n".join(message_text(m) for m in prompt).replace(fact.question, "", 1)
        budget = count(prompt)
        window = window_prompt(conv, fact.question, budget, count)
        window_reply = await asyncio.to_thread(answer, window)
        window_text = "\n".join(message_text(m) for m in window[:-1])
        out.append(
            AnswerResult(
                conv_id=conv.conv_id,
                language=conv.language,
                turns=len(conv.turns),
                fact_turn=fact.turn,
                question=fact.question,
                value=fact.value,
                ours=contains_value(result.reply, fact.value),
                window=contains_value(window_reply, fact.value),
                ours_prompt_has=contains_value(ours_text, fact.value),
                window_prompt_has=contains_value(window_text, fact.value),
                ours_tokens=budget,
                window_tokens=count(window),
                ours_reply=result.reply,
                window_reply=window_reply,
            )
        )
        # Back to the replayed state: no question sees another.
        await service.graph.aupdate_state(replayed.config, None, as_node="__copy__")
        replayed = await service.graph.aget_state(config)
    return out


async def run_planted(
    conversations: Sequence[PlantedConversation],
    *,
    model: BaseChatModel,
    embedder: Any,
    context_window: int,
    max_new_tokens: int,
    facts_per_conversation: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[AnswerResult]:
    """Replay each conversation, then ask its planted facts with ``model``, both arms.

    Args:
        conversations: What :func:`bench.planted.planted_conversation` made.
        model: The answering chat model (the product's loader made it); its tokenizer also
            counts steadychat's prompt.
        embedder: The memory's embedder.
        context_window: Tokens per call (prompt + reply), both arms.
        max_new_tokens: Reply length, both arms.
        facts_per_conversation: Ask only the first N facts (all by default).
        progress: Called with a line per conversation.

    Returns:
        One result per question.
    """
    from graph.compose import open_service
    from graph.settings import Settings
    from store.vector_memory import ChromaMemory

    recorder = PromptRecorder(counter=model, context_window=context_window)
    gate = WriteGate(ChromaMemory.ephemeral(embedder))
    settings = Settings(checkpointer_url="memory", context_window=context_window)

    def count(messages: list[BaseMessage]) -> int:
        return int(model.get_num_tokens_from_messages(messages))

    answer = _answerer(model, max_new_tokens)
    results: list[AnswerResult] = []
    async with open_service(settings, chat_model=recorder, memory=gate) as service:
        # The recorder writes no summary worth keeping: the extractive summaries stand in.
        service.defaults = replace(
            service.defaults, model_summaries=False, max_new_tokens=max_new_tokens
        )
        for conv in conversations:
            started = time.perf_counter()
            facts = conv.facts[:facts_per_conversation]
            results += await _conversation(service, recorder, gate, conv, answer, count, facts)
            if progress:
                progress(
                    f"{conv.conv_id}: {len(conv.turns)} turns, {len(facts)} questions, "
                    f"{time.perf_counter() - started:.1f} s"
                )
    return results


def rates(results: Sequence[AnswerResult]) -> dict[str, dict[str, float | int]]:
    """Per conversation (``en-50`` ...) and per language and overall (``en``, ``zh``, ``all``).

    Fields: ``questions``, ``ours``, ``window`` (share of replies with the value),
    ``ours_prompt_has``, ``window_prompt_has`` (share of prompts with it), ``ours_tokens``,
    ``window_tokens`` (mean prompt tokens).
    """
    groups: dict[str, list[AnswerResult]] = {}
    for r in results:
        for key in (f"{r.language}-{r.turns}", r.language, "all"):
            groups.setdefault(key, []).append(r)
    out: dict[str, dict[str, float | int]] = {}
    for key, rows in groups.items():
        n = len(rows)
        out[key] = {
            "questions": n,
            "ours": sum(r.ours for r in rows) / n,
            "window": sum(r.window for r in rows) / n,
            "ours_prompt_has": sum(r.ours_prompt_has for r in rows) / n,
            "window_prompt_has": sum(r.window_prompt_has for r in rows) / n,
            "ours_tokens": round(sum(r.ours_tokens for r in rows) / n),
            "window_tokens": round(sum(r.window_tokens for r in rows) / n),
        }
    return out


def _conversation_keys(by_group: dict[str, dict[str, float | int]]) -> list[str]:
    # "en-50", "en-200", "en-500", "zh-50", ...: by language, then by length.
    keys = [k for k in by_group if "-" in k]
    return sorted(keys, key=lambda k: (k.split("-")[0], int(k.split("-")[1])))


def table(by_group: dict[str, dict[str, float | int]]) -> str:
    """The rates as a Markdown table, conversations first, then the totals."""
    lines = [
        "| conversation | questions | reply has value: ours / window | prompt has value: "
        "ours / window | prompt tokens: ours / window |",
        "|---|---|---|---|---|",
    ]
    keys = [*_conversation_keys(by_group), *(k for k in ("en", "zh", "all") if k in by_group)]
    for key in keys:
        g = by_group[key]
        lines.append(
            f"| {key} | {g['questions']} | {g['ours']:.3f} / {g['window']:.3f} | "
            f"{g['ours_prompt_has']:.3f} / {g['window_prompt_has']:.3f} | "
            f"{g['ours_tokens']} / {g['window_tokens']} |"
        )
    return "\n".join(lines)


def write_plot(path: Path, by_group: dict[str, dict[str, float | int]]) -> None:
    """Bars per conversation: reply and prompt holding the value, ours against the window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [*_conversation_keys(by_group), "all"]
    x = np.arange(len(keys))
    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    for ax, (metric, title) in zip(
        axes,
        (("", "reply holds the planted value"), ("_prompt_has", "prompt holds the planted value")),
        strict=True,
    ):
        ax.bar(x - 0.2, [by_group[k][f"ours{metric}"] for k in keys], 0.4, label="steadychat")
        ax.bar(
            x + 0.2,
            [by_group[k][f"window{metric}"] for k in keys],
            0.4,
            label="sliding window, same tokens",
        )
        ax.set_xticks(x, keys)
        ax.set_ylim(0, 1)
        ax.set_title(title)
    axes[0].legend(loc="upper right", fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.planted_answers [--model SPEC] [--json FILE] ...``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(prog="steadychat bench planted", description=__doc__)
    parser.add_argument(
        "--model",
        default="tiny",
        help="the answering model, as the product's --model takes it (tiny, smollm2, a folder)",
    )
    parser.add_argument("--languages", nargs="+", choices=["en", "zh"], default=["en", "zh"])
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--facts", type=int, default=None, help="ask only the first N facts")
    parser.add_argument("--context-window", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--embedder", default="default", help="embedder name (see load_embedder)")
    parser.add_argument("--seed", type=int, default=0, help="varies the planted values")
    parser.add_argument("--json", type=Path, default=None, help="write results (and a PNG beside)")
    args = parser.parse_args(argv)
    if any(n < 10 for n in args.lengths):
        parser.error("lengths must be at least 10 turns")
    if args.facts is not None and args.facts < 1:
        parser.error("--facts must be positive")
    if args.max_new_tokens < 1 or args.context_window <= args.max_new_tokens:
        parser.error("--max-new-tokens must be positive and below --context-window")
    from graph.loading import load_chat_model
    from graph.settings import Settings

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    model = load_chat_model(Settings(model=args.model, context_window=args.context_window))
    conversations = [
        planted_conversation(language, n, seed=args.seed)
        for language in args.languages
        for n in args.lengths
    ]
    results = asyncio.run(
        run_planted(
            conversations,
            model=model,
            embedder=load_embedder(args.embedder),
            context_window=args.context_window,
            max_new_tokens=args.max_new_tokens,
            facts_per_conversation=args.facts,
            progress=say,
        )
    )
    by_group = rates(results)
    print(f"# Planted facts answered by {args.model}: steadychat against a sliding window\n")
    print(table(by_group) + "\n")
    total = by_group["all"]
    met = total["ours"] >= total["window"]
    print(
        f"goal: {GOAL}: {total['ours']:.3f} against {total['window']:.3f} "
        f"({'met' if met else 'not met'})"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        data = {
            "version": 1,
            "settings": {
                "model": args.model,
                "embedder": args.embedder,
                "languages": list(args.languages),
                "lengths": list(args.lengths),
                "facts": args.facts,
                "context_window": args.context_window,
                "max_new_tokens": args.max_new_tokens,
                "seed": args.seed,
            },
            "rates": by_group,
            "goal": {"goal": GOAL, "met": met},
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        write_plot(args.json.with_suffix(".png"), by_group)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
