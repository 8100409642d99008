"""steadychat api: FastAPI app, REST and OpenAI-compatible routes, CLI, web page."""
