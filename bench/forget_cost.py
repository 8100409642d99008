"""What scrubbing a local Chroma store adds to a thread deletion, side by side with none."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from nodes.memory import MemoryRecord
from store.embeddings import CharFrequencyEmbedder
from store.vector_memory import ChromaMemory


def main(argv: list[str] | None = None) -> int:
    """Fill a local store, delete threads alternately with and without the scrub, print medians.

    Args:
        argv: ``--threads N --records M`` (defaults 20 and 100).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.forget_cost")
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--records", type=int, default=100)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="steadychat-forget-")
    memory = ChromaMemory.persistent(folder, CharFrequencyEmbedder())
    filler = "lorem ipsum dolor " * 20
    for t in range(args.threads):
        memory.add(
            [
                MemoryRecord(
                    id=f"t{t}:{i}",
                    text=f"thread {t} message {i} {filler}",
                    thread_id=f"t{t}",
                    user_id="u",
                    turn=i,
                    role="user",
                )
                for i in range(args.records)
            ]
        )
    scrubbed: list[float] = []
    plain: list[float] = []
    local = memory._local_folder
    for t in range(0, args.threads // 2, 2):
        started = time.perf_counter()
        memory.delete_thread(f"t{t}")
        scrubbed.append(time.perf_counter() - started)
        memory._local_folder = None  # the same deletion without the scrub
        started = time.perf_counter()
        memory.delete_thread(f"t{t + 1}")
        plain.append(time.perf_counter() - started)
        memory._local_folder = local
    size = os.path.getsize(os.path.join(folder, "chroma.sqlite3")) // 1024
    base, ours = statistics.median(plain), statistics.median(scrubbed)
    print(
        f"store {args.threads * args.records} records, {size} KiB: delete_thread median "
        f"{base:.3f} s without scrub, {ours:.3f} s with (x{ours / base:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
