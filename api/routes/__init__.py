"""HTTP routers: REST threads, health and metrics, and the OpenAI-compatible /v1."""
