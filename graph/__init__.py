"""steadychat graph: state, context, settings, model loading, the turn graph."""
