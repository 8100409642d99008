"""LangGraph Studio entry: the turn graph compiled without a checkpointer (the server brings one).

`langgraph dev` (see langgraph.json) imports this module; settings come from the environment
(STEADYCHAT_MODEL=tiny runs offline).
"""

from __future__ import annotations

from langgraph.graph.state import CompiledStateGraph

from graph.builder import Deps, compile_graph
from graph.context import Context
from graph.loading import load_chat_model
from graph.service import memory_from_settings
from graph.settings import Settings
from graph.state import ChatState
from store.embeddings import load_embedder


def make_studio_graph(
    settings: Settings | None = None,
) -> CompiledStateGraph[ChatState, Context, ChatState, ChatState]:
    """Build the graph the way Studio serves it: real model and memory, no checkpointer."""
    settings = settings or Settings()
    chat_model = load_chat_model(settings)
    memory = memory_from_settings(settings, load_embedder(settings.embedder))
    return compile_graph(Deps(chat_model=chat_model, memory=memory), checkpointer=None)


graph = make_studio_graph()
