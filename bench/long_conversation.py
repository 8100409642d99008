"""Long-conversation growth: steadychat's turn graph against a naive LangGraph chatbot.

Both run the same scripted conversation with the same fake model (one token per word), side by
side in one process, each with a SQLite checkpointer in a temp folder. Prints prompt tokens,
messages kept in state, framework time per turn (median) and the checkpoint database size at
turns 10, 25, 50, 100, 150, 200 (those within ``--turns``, and the last), and the ratios
ours / naive. ``--json FILE`` writes the figures and ``FILE`` with ``.png`` their plot.

    steadychat bench long-conversation [--turns 200] [--json FILE]
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

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import START, MessagesState, StateGraph

from bench.conversation import scripted_reply, scripted_user_turns
from bench.fakes import ScriptedChatModel
from bench.progress import bar, new_figure, save_figure
from graph.compose import open_service
from graph.settings import Settings
from nodes.text import message_text

MARKS = (10, 25, 50, 100, 150, 200)
METRICS = ("prompt_tokens", "messages", "ms_per_turn", "db_kb")


def _db_bytes(db: Path) -> int:
    """SQLite file plus its write-ahead log (WAL mode keeps recent pages there)."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _responder(messages: list[BaseMessage]) -> str:
    user = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
    return scripted_reply(message_text(user), len(messages))


def bar_over(turns: list[str], desc: str) -> Any:
    """``turns`` with a progress bar (one step per turn)."""
    progress = bar(len(turns), desc, unit="turn")
    for text in turns:
        yield text
        progress.update()
    progress.close()


async def run_naive(turns: list[str], folder: Path) -> dict[int, dict[str, float]]:
    """StateGraph(MessagesState), one node, AsyncSqliteSaver: the whole history every turn."""
    model = ScriptedChatModel(responder=_responder)

    def chat(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    db = folder / "naive.sqlite"
    out: dict[int, dict[str, float]] = {}
    times: list[float] = []
    async with AsyncSqliteSaver.from_conn_string(str(db)) as saver:
        graph = builder.compile(checkpointer=saver)
        config: RunnableConfig = {"configurable": {"thread_id": "t"}}
        for i, text in enumerate(bar_over(turns, "naive LangGraph chatbot"), 1):
            start = time.perf_counter()
            state = await graph.ainvoke({"messages": [HumanMessage(content=text)]}, config)
            times.append(time.perf_counter() - start)
            if i in MARKS or i == len(turns):
                out[i] = {
                    "prompt_tokens": model.get_num_tokens_from_messages(state["messages"][:-1]),
                    "messages": len(state["messages"]),
                    "ms_per_turn": 1000 * statistics.median(times[-10:]),
                    "db_kb": _db_bytes(db) / 1024,
                }
    return out


async def run_steadychat(turns: list[str], folder: Path) -> dict[int, dict[str, float]]:
    """The full turn graph (slots, memory, compaction) over the service, SQLite + Chroma."""
    model = ScriptedChatModel(responder=_responder)
    settings = Settings(
        data_dir=folder / "steady",
        embedder="hash",
        window_tokens=600,
        context_window=4096,
        max_new_tokens=256,
    )
    db = Path(settings.resolved_checkpointer_url().removeprefix("sqlite:///"))
    out: dict[int, dict[str, float]] = {}
    times: list[float] = []
    async with open_service(settings, chat_model=model) as service:
        await service.create_thread(thread_id="t")
        for i, text in enumerate(bar_over(turns, "steadychat turn graph"), 1):
            start = time.perf_counter()
            result = await service.run_turn("t", text)
            times.append(time.perf_counter() - start)
            if i in MARKS or i == len(turns):
                view = await service.get_thread("t")
                out[i] = {
                    "prompt_tokens": result.context_account["total"],
                    "messages": len(view.window),
                    "ms_per_turn": 1000 * statistics.median(times[-10:]),
                    "db_kb": _db_bytes(db) / 1024,
                }
    return out


def write_plot(
    path: Path, naive: dict[int, dict[str, float]], ours: dict[int, dict[str, float]]
) -> None:
    """Prompt tokens, checkpoint size and time per turn against the turn, both graphs, as a PNG."""
    figure, axes = new_figure(1, 3, width=13, height=3.6)
    marks = sorted(ours)
    panels = (
        ("prompt_tokens", "prompt tokens"),
        ("db_kb", "checkpoint DB (KB)"),
        ("ms_per_turn", "framework ms per turn (median of 10)"),
    )
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        ax.plot(marks, [naive[m][metric] for m in marks], marker="o", label="naive LangGraph")
        ax.plot(marks, [ours[m][metric] for m in marks], marker="o", label="steadychat")
        ax.set_xlabel("turn")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    save_figure(figure, path, note="scripted conversation, fake model (one token per word)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="steadychat bench long-conversation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here (and a PNG beside it)"
    )
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    turns = scripted_user_turns(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        naive = asyncio.run(run_naive(turns, Path(tmp)))
        ours = asyncio.run(run_steadychat(turns, Path(tmp)))
    print(f"{'turn':>5} {'metric':<14} {'naive':>10} {'steadychat':>11} {'ratio':>7}")
    for mark in sorted(ours):
        for metric in METRICS:
            a, b = naive[mark][metric], ours[mark][metric]
            ratio = b / a if a else float("nan")
            print(f"{mark:>5} {metric:<14} {a:>10.1f} {b:>11.1f} {ratio:>7.2f}")
    print("ms_per_turn is the median of the last 10 turns before the mark; ours includes slot")
    print(
        "extraction, hybrid retrieval, compaction and memory writes, the naive one only the model."
    )
    if args.json:
        data = {
            "version": 1,
            "turns": args.turns,
            "marks": {
                str(mark): {"naive": naive[mark], "steadychat": ours[mark]} for mark in sorted(ours)
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2), encoding="utf-8")
        write_plot(args.json.with_suffix(".png"), naive, ours)


if __name__ == "__main__":
    main()
