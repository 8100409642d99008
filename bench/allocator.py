"""What a fixed mmap threshold costs a turn: glibc's risen threshold against the service's.

``steadychat serve`` fixes glibc's mmap threshold (``STEADYCHAT_MALLOC_MMAP_THRESHOLD_KIB``,
4096 by default; see ``api/allocator.py``) so that a worker's large temporaries get pages of
their own and go back to the system when freed. The price is a mapping, page faults and an
unmapping for each such block. Both arms run in one process over the same random-weight Qwen3
(hidden 512, 8 layers: its activations are smaller against its compute than a 4B model's, so
the cost measured here is an upper bound for the bigger model), with the same prompts, and
alternate round by round:

- **risen**: the threshold at 32 MiB, where glibc's own rule leaves it in a worker that has
  freed a large block (each such free raises it, up to 32 MiB);
- **fixed**: the threshold at ``--threshold-kib`` (the service's default).

Each round generates one reply per prompt length (prefill-heavy long prompts and short ones),
through the chat model as a turn calls it. The figures are the median seconds per round of
each arm and their ratio (fixed / risen; goal <= 1.05).

    python -m api.cli bench allocator [--rounds 12] [--prompt-tokens 800] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from api.allocator import set_mmap_threshold
from bench.engine import build_models, load
from bench.fakes import sentence
from graph.settings import Settings

GOAL_RATIO = 1.05
_RISEN = 32 * 1024 * 1024


def _prompt(tokenizer: Any, tokens: int, seed: int) -> str:
    """Sentences until the text is ``tokens`` tokens long."""
    parts: list[str] = []
    i = seed
    while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
        parts.append(sentence(i, 14))
        i += 1
    return " ".join(parts)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both arms; return the figures."""
    parser = argparse.ArgumentParser(prog="steadychat bench allocator", description=__doc__)
    parser.add_argument("--rounds", type=int, default=12, help="rounds per arm (alternating)")
    parser.add_argument("--prompt-tokens", type=int, default=800, help="the long prompt")
    parser.add_argument("--tokens", type=int, default=16, help="reply tokens")
    parser.add_argument(
        "--threshold-kib",
        type=int,
        default=Settings.model_fields["malloc_mmap_threshold_kib"].default,
        help="the fixed arm's (default: the service's)",
    )
    parser.add_argument("--models", type=Path, default=None, help="folder for the built model")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    from langchain_core.messages import HumanMessage

    if not set_mmap_threshold(_RISEN):
        raise SystemExit(
            "the mmap threshold cannot be set here: the benchmark needs glibc, and no "
            "MALLOC_MMAP_THRESHOLD_ in the environment"
        )
    folder = args.models or Path(tempfile.mkdtemp(prefix="steadychat-bench-"))
    _, medium = build_models(folder)
    model = load(medium, "serial", max_tokens=args.tokens)
    prompts = [
        _prompt(model.tokenizer, args.prompt_tokens, 0),
        _prompt(model.tokenizer, args.prompt_tokens // 4, 1),
        "Hello?",
    ]
    arms = {"risen": _RISEN, "fixed": args.threshold_kib * 1024}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for prompt in prompts:  # warm-up: first forward passes of each length
        model.invoke([HumanMessage(prompt)])
    for round_ in range(args.rounds):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for name in order:
            set_mmap_threshold(arms[name])
            start = time.perf_counter()
            for prompt in prompts:
                model.invoke([HumanMessage(prompt)])
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    results = {
        "rounds": args.rounds,
        "prompt_tokens": [len(model.tokenizer(p)["input_ids"]) for p in prompts],
        "threshold_kib": args.threshold_kib,
        "median_round_s": medians,
        "ratio_fixed_over_risen": medians["fixed"] / medians["risen"],
        "goal_ratio": GOAL_RATIO,
    }
    print(f"{'':36}{'risen':>10}{'fixed':>10}{'goal':>10}")
    print(f"{'median s per round':36}{medians['risen']:>10.3f}{medians['fixed']:>10.3f}")
    print(f"{'fixed / risen':36}{'':>10}{results['ratio_fixed_over_risen']:>10.3f}{'<= 1.05':>10}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    """Run both arms side by side and print the figures beside the goal."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
