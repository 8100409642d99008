"""Many conversations at once: the continuous-batching engine against serialised generation.

Both arms run side by side in one process over the same random-weight models, with the same
turns; every figure is printed beside its goal:

- **concurrency**: 8 threads each post one turn at the same time through the HTTP API (the
  FastAPI app over ASGI), against the same 8 turns one by one; combined completion tokens/s
  (a random Qwen3 of 25.8M parameters: hidden 512, 8 layers; goal x3 batched);
- **long thread**: one thread of N turns through the service (tiny model): time to first
  token at turn N against turn 10 (goal <= 1.5) and the prefix cache's cached / prompt
  tokens over the thread.

    python -m bench.engine [--turns 60] [--threads 8] [--json engine.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fakes import sentence
from graph.chat_model import QwenChatModel
from graph.compose import open_service
from graph.settings import Settings

GOALS = {"concurrency_ratio": 3.0, "ttft_ratio": 1.5}


def build_models(folder: Path) -> tuple[Path, Path]:
    """The tiny model, and the 25.8M random Qwen3 (hidden 512, 8 layers) on its tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from graph.tiny_model import build_tiny_model

    tiny = build_tiny_model(folder / "tiny")
    medium = folder / "medium"
    if not (medium / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(tiny)
        torch.manual_seed(0)
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = Qwen3ForCausalLM(config)
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(medium)
        tokenizer.save_pretrained(medium)
    return tiny, medium


def load(path: Path, engine: str, **fields: Any) -> QwenChatModel:
    """A chat model over ``path`` with the given engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return QwenChatModel.from_model(model, tokenizer, model_id=str(path), engine=engine, **fields)


def _sentence(i: int, n: int = 14) -> str:
    return sentence(i, n)


async def concurrency(path: Path, engine: str, threads: int, tokens: int) -> dict[str, float]:
    """Combined tokens/s of ``threads`` turns posted at once against one by one (HTTP API)."""
    import httpx

    from api.app import create_app

    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()),
        embedder="hash",
        checkpointer_url="memory",
        max_new_tokens=tokens,
        default_profile="general",
    )
    model = load(path, engine)
    async with open_service(settings, chat_model=model) as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def turn(i: int) -> int:
                created = await client.post("/threads", json={})
                thread = created.json()["thread_id"]
                reply = await client.post(
                    f"/threads/{thread}/messages", json={"content": _sentence(i)}, timeout=600
                )
                reply.raise_for_status()
                return int(reply.json()["usage"]["completion_tokens"])

            await turn(99)  # warm-up: first forward passes, engine start
            start = time.perf_counter()
            one_by_one = [await turn(i) for i in range(threads)]
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            together = await asyncio.gather(*(turn(i) for i in range(threads)))
            concurrent = time.perf_counter() - start
    return {
        "sequential_tokens_per_s": sum(one_by_one) / sequential,
        "concurrent_tokens_per_s": sum(together) / concurrent,
        "ratio": (sum(together) / concurrent) / (sum(one_by_one) / sequential),
    }


async def long_thread(path: Path, engine: str, turns: int) -> dict[str, float]:
    """TTFT at turn 10 and at the last turn, and cached / prompt tokens over the thread."""
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()),
        embedder="hash",
        checkpointer_url="memory",
        max_new_tokens=8,
        default_profile="general",
    )
    model = load(path, engine)
    ttft: dict[int, float] = {}
    cached = prompt = 0
    async with open_service(settings, chat_model=model) as service:
        thread = await service.create_thread(owner="bench")
        for n in range(1, turns + 1):
            start = time.perf_counter()
            first: float | None = None
            async for event in service.stream_turn(
                thread.thread_id, _sentence(n, 30), owner="bench"
            ):
                if event.type == "token" and first is None:
                    first = time.perf_counter() - start
                if event.type == "done" and event.result is not None:
                    cached += int(event.result.usage.get("cached_tokens", 0))
                    prompt += int(event.result.usage.get("prompt_tokens", 0))
            ttft[n] = first if first is not None else time.perf_counter() - start
    early = statistics.median(ttft[n] for n in range(8, 13))
    late = statistics.median(ttft[n] for n in range(turns - 4, turns + 1))
    return {
        "ttft_turn_10_s": early,
        f"ttft_turn_{turns}_s": late,
        "ttft_ratio": late / early,
        "cached_over_prompt": cached / prompt if prompt else 0.0,
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    arms = list(results["arms"])
    ratios = [results["arms"][a]["concurrency"]["ratio"] for a in arms]
    axes[0].bar(arms, ratios, color=["#999", "#37a"])
    axes[0].axhline(GOALS["concurrency_ratio"], color="r", ls="--", label="goal")
    axes[0].set_title("8 threads at once / one by one (tokens/s)")
    ttft = [results["arms"][a]["long_thread"]["ttft_ratio"] for a in arms]
    axes[1].bar(arms, ttft, color=["#999", "#37a"])
    axes[1].axhline(GOALS["ttft_ratio"], color="r", ls="--")
    axes[1].set_title(f"TTFT turn {results['turns']} / turn 10")
    reuse = [results["arms"][a]["long_thread"]["cached_over_prompt"] for a in arms]
    axes[2].bar(arms, reuse, color=["#999", "#37a"])
    axes[2].set_ylim(0, 1)
    axes[2].set_title("cached / prompt tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Run both arms side by side and print the figures beside their goals."""
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both arms; return the figures (the JSON's content)."""
    parser = argparse.ArgumentParser(prog="steadychat bench engine", description=__doc__)
    parser.add_argument("--turns", type=int, default=60, help="turns of the long thread (500)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent threads")
    parser.add_argument("--tokens", type=int, default=48, help="reply tokens per turn")
    parser.add_argument("--models", type=Path, default=None, help="folder for the built models")
    parser.add_argument("--json", type=Path, default=None, help="write figures (and a .png)")
    args = parser.parse_args(argv)
    folder = args.models or Path(tempfile.mkdtemp(prefix="steadychat-bench-"))
    tiny, medium = build_models(folder)
    results: dict[str, Any] = {"turns": args.turns, "threads": args.threads, "arms": {}}
    for engine in ("serial", "batched"):
        conc = asyncio.run(concurrency(medium, engine, args.threads, args.tokens))
        longt = asyncio.run(long_thread(tiny, engine, args.turns))
        results["arms"][engine] = {"concurrency": conc, "long_thread": longt}
    results["goals"] = GOALS
    print(f"{'':34}{'serial':>10}{'batched':>10}{'goal':>10}")
    rows = [
        ("concurrency", "sequential_tokens_per_s", "tokens/s one by one", None),
        ("concurrency", "concurrent_tokens_per_s", f"tokens/s {args.threads} at once", None),
        ("concurrency", "ratio", "at once / one by one", ">= 3"),
        ("long_thread", "ttft_turn_10_s", "TTFT turn 10 (s)", None),
        ("long_thread", f"ttft_turn_{args.turns}_s", f"TTFT turn {args.turns} (s)", None),
        ("long_thread", "ttft_ratio", f"TTFT turn {args.turns} / 10", "<= 1.5"),
        ("long_thread", "cached_over_prompt", "cached / prompt tokens", "reported"),
    ]
    for group, key, label, goal in rows:
        values = [results["arms"][a][group][key] for a in ("serial", "batched")]
        print(f"{label:34}{values[0]:>10.3f}{values[1]:>10.3f}{goal or '':>10}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        _plot(results, args.json.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
