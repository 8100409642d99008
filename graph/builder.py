"""The turn graph: begin_turn -> extract_slots -> [compact_summary] -> retrieve_memory ->
generate_reply -> remember.

Compaction runs before retrieval so that retrieval knows exactly which turns stay verbatim: a
turn folded this very turn is then recallable, and nothing the model sees twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph.context import Context
from graph.profiles import get_profile
from graph.state import ChatState
from nodes.begin_turn import make_begin_turn, route_after_slots
from nodes.compact_summary import make_compact_summary
from nodes.extract_slots import make_extract_slots
from nodes.generate_reply import make_generate_reply
from nodes.remember import make_remember
from nodes.retrieve_memory import make_retrieve_memory
from store.types import MemoryStore


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


TurnGraph = StateGraph[ChatState, Context, ChatState, ChatState]


def build_graph(deps: Deps) -> TurnGraph:
    """Return the uncompiled turn graph wired with ``deps``."""
    helper = deps.helper_model or deps.chat_model
    # Typed Any: LangGraph's add_node overloads cannot infer a union of node signatures.
    nodes: dict[str, Any] = {
        "begin_turn": make_begin_turn(deps.chat_model),
        "extract_slots": make_extract_slots(helper),
        "compact_summary": make_compact_summary(helper, count_with=deps.chat_model),
        "retrieve_memory": (
            make_retrieve_memory(deps.memory) if deps.memory is not None else _no_recall
        ),
        "generate_reply": make_generate_reply(
            deps.chat_model, profile_max_new_tokens=lambda p: get_profile(p).max_new_tokens
        ),
        "remember": make_remember(deps.memory) if deps.memory is not None else _no_remember,
    }
    builder = StateGraph(ChatState, context_schema=Context)
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
    deps: Deps, *, checkpointer: BaseCheckpointSaver | None = None
) -> CompiledStateGraph[ChatState, Context, ChatState, ChatState]:
    """Compile the turn graph; ``checkpointer=None`` for LangGraph Studio, which brings its own."""
    return build_graph(deps).compile(checkpointer=checkpointer, name="steadychat")
