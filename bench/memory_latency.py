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


def measure(memory: ChromaMemory, sizes: Sequence[int], *, turns: int = 30) -> dict[int, Any]:
    """Fill one thread per size, then time the turns that follow (median of ``turns``).

    Each measured turn is what the graph does: a search for the user's message (top 4, one
    neighbour, the window left out), then the write of that exchange.

    Args:
        memory: The store (empty).
        sizes: Records per thread to measure at.
        turns: Measured turns per size.

    Returns:
        ``{size: {"search_ms": median, "write_ms": median}}``.
    """
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
            memory.add(_exchange(thread, turn, user, reply))
            t2 = time.perf_counter()
            search_ms.append((t1 - t0) * 1000)
            write_ms.append((t2 - t1) * 1000)
            progress.update()
        results[size] = {
            "records": memory.count(thread_id=thread),
            "search_ms": statistics.median(search_ms),
            "write_ms": statistics.median(write_ms),
        }
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
        "--json", type=Path, default=None, help="also write the figures here (and a PNG beside it)"
    )
    args = parser.parse_args(argv)
    embedder = load_embedder(args.embedder)
    with tempfile.TemporaryDirectory() as folder:
        if args.chroma_url:
            memory = ChromaMemory.from_url(args.chroma_url, embedder)
        else:
            memory = ChromaMemory.persistent(Path(folder) / "chroma", embedder)
        results = measure(memory, args.sizes, turns=args.turns)
    where = args.chroma_url or "a local folder (PersistentClient)"
    print(f"# memory latency per turn ({args.embedder}, {where}; medians)\n")
    print("| records in the thread | search ms | write ms (one exchange) |")
    print("|---|---|---|")
    for row in results.values():
        print(f"| {row['records']} | {row['search_ms']:.1f} | {row['write_ms']:.1f} |")
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
