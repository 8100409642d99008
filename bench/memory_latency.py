"""Memory latency per turn: one search and one exchange's write, at growing records per thread."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.progress import bar, new_figure, save_figure
from nodes.memory import MemoryRecord
from store.embeddings import load_embedder
from store.vector_memory import ChromaMemory

__all__ = ["main", "measure", "synthetic_turns"]

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "vo", "den", "par", "gle", "tor", "min"]


def synthetic_turns(count: int, *, seed: int = 11) -> list[str]:
    """Sentences over a Zipf-distributed vocabulary, so that keyword statistics look like talk.

    Args:
        count: How many turns.
        seed: Random seed (the same seed gives the same turns).

    Returns:
        ``count`` sentences of 8 to 24 words.
    """
    rng = random.Random(seed)
    vocabulary = sorted(
        {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(6000)}
    )
    rng.shuffle(vocabulary)
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    return [
        " ".join(rng.choices(vocabulary, weights, k=rng.randint(8, 24))).capitalize() + "."
        for _ in range(count)
    ]


def _exchange(thread: str, turn: int, user: str, reply: str) -> list[MemoryRecord]:
    stamp = f"2025-01-01T{turn % 24:02d}:00:00+00:00"
    return [
        MemoryRecord(
            id=f"{thread}:{turn}:{role}",
            text=text,
            thread_id=thread,
            user_id="bench",
            turn=turn,
            role=role,
            timestamp=stamp,
        )
        for role, text in (("user", user), ("assistant", reply))
    ]


def _recall_timer(memory: ChromaMemory, options: dict[str, Any]) -> Any:
    """Times the ``retrieve_memory`` node (product defaults, ``options`` over them)."""
    from langchain_core.messages import HumanMessage
    from langgraph.runtime import Runtime

    from nodes.context import Context
    from nodes.retrieve_memory import make_retrieve_memory

    node = make_retrieve_memory(memory)
    runtime = Runtime(context=Context(**options))

    def recall(thread: str, text: str, turn: int) -> float:
        window = HumanMessage(text, additional_kwargs={"turn": max(1, turn - 6)})
        state: Any = {"messages": [window, HumanMessage(text, additional_kwargs={"turn": turn})]}
        t0 = time.perf_counter()
        node(state, runtime, {"configurable": {"thread_id": thread}})
        return (time.perf_counter() - t0) * 1000

    return recall


def measure(
    memory: ChromaMemory,
    sizes: Sequence[int],
    *,
    turns: int = 30,
    recall_options: dict[str, Any] | None = None,
) -> dict[int, Any]:
    """Fill one thread per size, then time the turns that follow (median of ``turns``).

    Each measured turn is what the graph does: a search for the user's message (top 4, one
    neighbour, the window left out), then the write of that exchange.

    Args:
        memory: The store (empty).
        sizes: Records per thread to measure at.
        turns: Measured turns per size.
        recall_options: Also time the ``retrieve_memory`` node itself, at the product's
            per-run defaults with these ``Context`` fields over them (``recall_ms``).

    Returns:
        ``{size: {"search_ms": median, "write_ms": median}}`` (and ``recall_ms``).
    """
    recall = _recall_timer(memory, recall_options) if recall_options is not None else None
    results: dict[int, Any] = {}
    progress = bar(sum(sizes) + turns * len(sizes), "memory latency", unit="record")
    for size in sizes:
        thread = f"latency-{size}"
        progress.set_postfix_str(f"{size} records")
        texts = synthetic_turns(size + 2 * turns, seed=size)
        for start in range(0, size, 200):
            batch = [
                record
                for pair in range(start, min(size, start + 200), 2)
                for record in _exchange(thread, pair // 2 + 1, texts[pair], texts[pair + 1])
            ]
            memory.add(batch)
            progress.update(len(batch))
        search_ms: list[float] = []
        write_ms: list[float] = []
        recall_ms: list[float] = []
        first = size // 2 + 1
        for i in range(turns):
            turn = first + i
            user, reply = texts[size + 2 * i], texts[size + 2 * i + 1]
            t0 = time.perf_counter()
            memory.search(
                user,
                thread_id=thread,
                user_id=None,
                k=4,
                neighbours=1,
                exclude_turns_from=max(1, turn - 6),
            )
            t1 = time.perf_counter()
            if recall is not None:
                recall_ms.append(recall(thread, user, turn))
            t2 = time.perf_counter()
            memory.add(_exchange(thread, turn, user, reply))
            t3 = time.perf_counter()
            search_ms.append((t1 - t0) * 1000)
            write_ms.append((t3 - t2) * 1000)
            progress.update()
        results[size] = {
            "records": memory.count(thread_id=thread),
            "search_ms": statistics.median(search_ms),
            "write_ms": statistics.median(write_ms),
        }
        if recall_ms:
            results[size]["recall_ms"] = statistics.median(recall_ms)
    progress.close()
    return results


def write_plot(path: Path, results: dict[int, Any], *, title: str) -> None:
    """Search and write medians against the records in the thread, as a PNG."""
    figure, axes = new_figure(1, 1, width=6.5, height=3.8)
    ax = axes[0][0]
    records = [row["records"] for row in results.values()]
    ax.plot(records, [row["search_ms"] for row in results.values()], marker="o", label="search")
    ax.plot(records, [row["write_ms"] for row in results.values()], marker="o", label="write")
    ax.set_xlabel("records in the thread")
    ax.set_ylabel("ms (median)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save_figure(figure, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.memory_latency [--sizes 100 700 3000] [--json FILE]``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(prog="steadychat bench memory", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 700, 3000])
    parser.add_argument("--turns", type=int, default=30, help="measured turns per size")
    parser.add_argument("--embedder", default="default", help="embedder name (see load_embedder)")
    parser.add_argument("--chroma-url", default=None, help="a Chroma server instead of a folder")
    parser.add_argument(
        "--recall",
        nargs="*",
        default=None,
        metavar="FIELD=VALUE",
        help="also time the retrieve_memory node at the product's defaults (these Context "
        "fields over them)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures here (and a PNG beside it)"
    )
    args = parser.parse_args(argv)
    recall_options = None
    if args.recall is not None:
        from bench.locomo import context_options

        try:
            recall_options = context_options(args.recall)
        except ValueError as exc:
            parser.error(str(exc))
    embedder = load_embedder(args.embedder)
    with tempfile.TemporaryDirectory() as folder:
        if args.chroma_url:
            memory = ChromaMemory.from_url(args.chroma_url, embedder)
        else:
            memory = ChromaMemory.persistent(Path(folder) / "chroma", embedder)
        results = measure(memory, args.sizes, turns=args.turns, recall_options=recall_options)
    where = args.chroma_url or "a local folder (PersistentClient)"
    print(f"# memory latency per turn ({args.embedder}, {where}; medians)\n")
    recall_column = " recall ms (the node) |" if recall_options is not None else ""
    print(f"| records in the thread | search ms | write ms (one exchange) |{recall_column}")
    print("|---|---|---|" + ("---|" if recall_column else ""))
    for row in results.values():
        cells = f"| {row['records']} | {row['search_ms']:.1f} | {row['write_ms']:.1f} |"
        if "recall_ms" in row:
            cells += f" {row['recall_ms']:.1f} |"
        print(cells)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        write_plot(
            args.json.with_suffix(".png"),
            results,
            title=f"memory latency per turn ({args.embedder}, {args.turns} turns per size)",
        )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
