"""Long-conversation growth: steadychat's turn graph against a naive LangGraph chatbot.

Both run the same scripted conversation with the same fake model (one token per word), side by
side in one process, each with a SQLite checkpointer in a temp folder. Prints prompt tokens,
messages kept in state, framework time per turn (median) and the checkpoint database size at
turns 10, 50, 200 (by default), and the ratios ours / naive.

    python -m bench.long_conversation [--turns 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import START, MessagesState, StateGraph

from bench.conversation import scripted_reply, scripted_user_turns
from bench.fakes import ScriptedChatModel
from graph.compose import open_service
from graph.settings import Settings
from nodes.text import message_text

MARKS = (10, 50, 200)


def _db_bytes(db: Path) -> int:
    """SQLite file plus its write-ahead log (WAL mode keeps recent pages there)."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _responder(messages: list[BaseMessage]) -> str:
    user = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
    return scripted_reply(message_text(user), len(messages))


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
        for i, text in enumerate(turns, 1):
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
        for i, text in enumerate(turns, 1):
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    turns = scripted_user_turns(args.turns)
    with tempfile.TemporaryDirectory() as tmp:
        naive = asyncio.run(run_naive(turns, Path(tmp)))
        ours = asyncio.run(run_steadychat(turns, Path(tmp)))
    print(f"{'turn':>5} {'metric':<14} {'naive':>10} {'steadychat':>11} {'ratio':>7}")
    for mark in sorted(ours):
        for metric in ("prompt_tokens", "messages", "ms_per_turn", "db_kb"):
            a, b = naive[mark][metric], ours[mark][metric]
            ratio = b / a if a else float("nan")
            print(f"{mark:>5} {metric:<14} {a:>10.1f} {b:>11.1f} {ratio:>7.2f}")
    print("ms_per_turn is the median of the last 10 turns before the mark; ours includes slot")
    print(
        "extraction, hybrid retrieval, compaction and memory writes, the naive one only the model."
    )


if __name__ == "__main__":
    main()
