"""steadychat nodes: one module per node of the turn graph, and pure helpers."""
