"""LangGraph Studio entry: the turn graph compiled without a checkpointer (the server brings one).

`langgraph dev` (see langgraph.json) imports this module; settings come from the environment
(STEADYCHAT_MODEL=tiny or smollm2 runs offline). The dev server watches the repository and
reloads on changes, so runtime data (Chroma, built models) goes outside it: to
``STEADYCHAT_DATA_DIR`` when set, else to the user's cache folder.
"""

from __future__ import annotations

from graph.compose import studio_graph, studio_settings

__all__ = ["graph"]

graph = studio_graph(studio_settings())
