"""The framework's own cost per turn, and the stream's latency around the model's tokens.

A chat model of fixed cost (``bench/fakes.py``) stands in for the model, so what remains of a
turn's wall time once the model's own time is taken off is the framework's: the graph, the
checkpoints, the memory's embeddings, writes and retrieval, the prompt's assembly. One thread
is replayed to turn 500 through the service, and a handful of turns is sampled around turn 50
and turn 500 (medians). A naive one-node LangGraph bot (the messages, one model call, an
in-memory checkpointer) runs beside it with the same fake model, as the baseline.

Through the HTTP API (a real uvicorn on 127.0.0.1, the client in the same process, so both
sides read one clock), at turn 500: the time from the model's last token to the end of the
stream, and from the model's first token to the first token event's bytes at the client.

    python -m bench.framework [--turns 500] [--samples 5] [--json framework.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fakes import FixedCostChatModel, sentence
from graph.compose import open_service
from graph.settings import Settings

GOALS = {
    "framework_ms_turn_500": 40.0,
    "framework_ratio_500_50": 1.2,
    "last_token_to_close_ms_p50": 5.0,
    "first_byte_minus_first_token_ms_p50": 5.0,
}


def _sentence(i: int, n: int = 18) -> str:
    return f"Turn {i}: " + sentence(i, n)


def _model() -> FixedCostChatModel:
    return FixedCostChatModel(first_token_s=0.01, per_token_s=0.001, tokens=12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _framework_turn(run: Any, model: FixedCostChatModel) -> float:
    """Wall time of one turn minus the model's own time, in ms."""
    before = model.model_s
    start = time.perf_counter()
    await run()
    wall = time.perf_counter() - start
    return (wall - (model.model_s - before)) * 1000


async def ours(turns: int, samples: int) -> dict[str, Any]:
    """Framework ms at turn 50 and at ``turns``; stream latencies over HTTP after that."""
    import httpx
    import uvicorn

    from api.app import create_app

    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="steadychat-bench-")),
        embedder="hash",
        checkpointer_url="memory",
        max_new_tokens=12,
        default_profile="general",
    )
    model = _model()
    early: list[float] = []
    late: list[float] = []
    close_ms: list[float] = []
    first_ms: list[float] = []
    async with open_service(settings, chat_model=model) as service:
        thread = (await service.create_thread(owner="anonymous")).thread_id
        for n in range(1, turns + 1):

            async def run(n: int = n) -> None:
                await service.run_turn(thread, _sentence(n), owner="anonymous")

            ms = await _framework_turn(run, model)
            if 50 - samples < n <= 50:
                early.append(ms)
            if n > turns - samples:
                late.append(ms)
        app = create_app(service, settings=settings)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for n in range(turns + 1, turns + 1 + samples):
                    first_byte: float | None = None
                    async with client.stream(
                        "POST",
                        f"/threads/{thread}/messages",
                        json={"content": _sentence(n), "stream": True},
                        timeout=120,
                    ) as response:
                        response.raise_for_status()
                        async for line in response.aiter_lines():
                            if first_byte is None and line.startswith("event: token"):
                                first_byte = time.perf_counter()
                    closed = time.perf_counter()
                    assert first_byte is not None, "the stream carried no token"
                    close_ms.append((closed - model.last_token_at) * 1000)
                    first_ms.append((first_byte - model.first_token_at) * 1000)
        finally:
            server.should_exit = True
            await task
    return {
        "framework_ms_turn_50": statistics.median(early),
        f"framework_ms_turn_{turns}": statistics.median(late),
        "framework_ratio": statistics.median(late) / statistics.median(early),
        "last_token_to_close_ms_p50": statistics.median(close_ms),
        "first_byte_minus_first_token_ms_p50": statistics.median(first_ms),
        "samples": {"turn_50": early, f"turn_{turns}": late, "close": close_ms, "first": first_ms},
    }


async def naive(turns: int, samples: int) -> dict[str, Any]:
    """The baseline: a one-node LangGraph bot over the same fake model."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph

    model = _model()

    def reply(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    graph = builder.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "naive"}}
    early: list[float] = []
    late: list[float] = []
    for n in range(1, turns + 1):

        async def run(n: int = n) -> None:
            await graph.ainvoke({"messages": [HumanMessage(_sentence(n))]}, config)

        ms = await _framework_turn(run, model)
        if 50 - samples < n <= 50:
            early.append(ms)
        if n > turns - samples:
            late.append(ms)
    return {
        "framework_ms_turn_50": statistics.median(early),
        f"framework_ms_turn_{turns}": statistics.median(late),
        "framework_ratio": statistics.median(late) / statistics.median(early),
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = results["turns"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    arms = ["naive", "steadychat"]
    for offset, key, label in (
        (-0.2, "framework_ms_turn_50", "turn 50"),
        (0.2, f"framework_ms_turn_{turns}", f"turn {turns}"),
    ):
        axes[0].bar(
            [i + offset for i in range(2)], [results[a][key] for a in arms], 0.4, label=label
        )
    axes[0].set_xticks(range(2), arms)
    axes[0].axhline(GOALS["framework_ms_turn_500"], color="r", ls="--", label="goal")
    axes[0].set_title("framework ms per turn (fake model)")
    axes[0].legend()
    ours_ = results["steadychat"]
    keys = ["last_token_to_close_ms_p50", "first_byte_minus_first_token_ms_p50"]
    axes[1].bar(["last token -> close", "first token -> first byte"], [ours_[k] for k in keys])
    axes[1].axhline(5.0, color="r", ls="--")
    axes[1].set_title(f"stream latency p50 at turn {turns} (ms, HTTP)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both arms; return the figures (the JSON's content)."""
    parser = argparse.ArgumentParser(prog="steadychat bench framework", description=__doc__)
    parser.add_argument("--turns", type=int, default=500, help="turns of the replayed thread")
    parser.add_argument("--samples", type=int, default=5, help="turns sampled per point")
    parser.add_argument("--json", type=Path, default=None, help="write figures (and a .png)")
    args = parser.parse_args(argv)
    if args.turns < 50 or args.samples < 1 or args.samples > 50:
        parser.error("--turns must be >= 50 and --samples between 1 and 50")
    results: dict[str, Any] = {"turns": args.turns, "samples": args.samples}
    results["naive"] = asyncio.run(naive(args.turns, args.samples))
    results["steadychat"] = asyncio.run(ours(args.turns, args.samples))
    results["goals"] = GOALS
    t = args.turns
    print(f"{'':40}{'naive':>10}{'ours':>10}{'goal':>8}")
    for key, label, goal in (
        ("framework_ms_turn_50", "framework ms, turn 50", ""),
        (f"framework_ms_turn_{t}", f"framework ms, turn {t}", "<= 40"),
        ("framework_ratio", f"turn {t} / turn 50", "<= 1.2"),
    ):
        print(
            f"{label:40}{results['naive'][key]:>10.2f}{results['steadychat'][key]:>10.2f}{goal:>8}"
        )
    for key, label in (
        ("last_token_to_close_ms_p50", "last token -> stream close p50 (ms)"),
        ("first_byte_minus_first_token_ms_p50", "first SSE byte - first token p50"),
    ):
        print(f"{label:40}{'':>10}{results['steadychat'][key]:>10.2f}{'<= 5':>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        _plot(results, args.json.with_suffix(".png"))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures beside their goals."""
    run(argv)
    return 0


if __name__ == "__main__":
    main()
