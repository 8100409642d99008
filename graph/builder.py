"""The turn graph: begin_turn -> extract_slots -> [compact_summary] -> retrieve_memory ->
generate_reply -> remember.

Compaction runs before retrieval so that retrieval knows exactly which turns stay verbatim: a
turn folded this very turn is then recallable, and nothing the model sees twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from nodes.begin_turn import make_begin_turn
from nodes.compact_summary import make_compact_summary
from nodes.context import Context
from nodes.extract_slots import make_extract_slots
from nodes.generate_reply import make_generate_reply
from nodes.memory import MemoryStore
from nodes.remember import make_remember
from nodes.retrieve_memory import make_retrieve_memory
from nodes.state import ChatState

__all__ = ["Deps", "TurnGraph", "build_graph", "compile_graph", "route_after_slots"]


@dataclass(kw_only=True)
class Deps:
    """Everything the graph is built from: the one injection seam for tests and embedders."""

    chat_model: BaseChatModel
    """Generates replies and counts tokens."""
    memory: MemoryStore | None = None
    """Vector memory; None turns recall and remembering off."""
    helper_model: BaseChatModel | None = None
    """Model for the slot JSON pass and summaries; defaults to ``chat_model``."""


def _no_recall(state: ChatState) -> dict[str, Any]:
    return {"recalled": []}


def _no_remember(state: ChatState) -> dict[str, Any]:
    return {}


def route_after_slots(
    state: ChatState, runtime: Runtime[Context]
) -> Literal["compact_summary", "retrieve_memory"]:
    """Compact only when the window (measured at the start of the turn) is over its budget."""
    ctx = runtime.context or Context()
    over = state.get("window_tokens", 0) > ctx.window_tokens
    return "compact_summary" if over else "retrieve_memory"


TurnGraph = StateGraph[ChatState, Context, ChatState, ChatState]


def build_graph(deps: Deps) -> TurnGraph:
    """Return the uncompiled turn graph wired with ``deps``."""
    helper = deps.helper_model or deps.chat_model
    memory = deps.memory
    builder = StateGraph(ChatState, context_schema=Context)
    # Typed Any: LangGraph's add_node overloads cannot infer a union of node signatures.
    nodes: dict[str, Any] = {
        "begin_turn": make_begin_turn(deps.chat_model),
        "extract_slots": make_extract_slots(helper),
        "compact_summary": make_compact_summary(helper, count_with=deps.chat_model),
        "retrieve_memory": make_retrieve_memory(memory) if memory is not None else _no_recall,
        "generate_reply": make_generate_reply(deps.chat_model),
        "remember": make_remember(memory) if memory is not None else _no_remember,
    }
    for name, node in nodes.items():
        builder.add_node(name, node)
    builder.add_edge(START, "begin_turn")
    builder.add_edge("begin_turn", "extract_slots")
    builder.add_conditional_edges(
        "extract_slots", route_after_slots, ["compact_summary", "retrieve_memory"]
    )
    builder.add_edge("compact_summary", "retrieve_memory")
    builder.add_edge("retrieve_memory", "generate_reply")
    builder.add_edge("generate_reply", "remember")
    builder.add_edge("remember", END)
    return builder


def compile_graph(
    deps: Deps, *, checkpointer: BaseCheckpointSaver[Any] | None = None
) -> CompiledStateGraph[ChatState, Context, ChatState, ChatState]:
    """Compile the turn graph; ``checkpointer=None`` for LangGraph Studio, which brings its own."""
    return build_graph(deps).compile(checkpointer=checkpointer, name="steadychat")
