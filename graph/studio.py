"""LangGraph Studio entry: the turn graph compiled without a checkpointer (the server brings one).

`langgraph dev` (see langgraph.json) imports this module; settings come from the environment
(STEADYCHAT_MODEL=tiny runs offline).
"""

from __future__ import annotations

from graph.compose import studio_graph

graph = studio_graph()
