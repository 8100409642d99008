"""Builds everything from settings: the chat model, memory, the default context, the service.

The composition roots (the API's lifespan, the CLI, the Studio entry) call these; nothing else
reads settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from langchain_core.language_models import BaseChatModel
from langgraph.graph.state import CompiledStateGraph

from graph.builder import Deps, compile_graph
from graph.loading import load_chat_model
from graph.locks import TurnLocks
from graph.memory_writes import DeferredWrites
from graph.remote_model import RemoteChatModel, load_remote_chat_model
from graph.running import DELETION_POLL_S
from graph.service import ChatService
from graph.settings import Settings
from nodes.context import Context
from nodes.memory import Embedder, MemoryStore
from nodes.state import ChatState
from store.checkpointer import open_checkpointer, parse_store_url
from store.embeddings import load_embedder
from store.idempotency import PostgresIdempotencyStore, open_idempotency_store
from store.locks import open_postgres_locks
from store.threads import open_thread_registry

__all__ = [
    "chat_model_from_settings",
    "default_context",
    "memory_from_settings",
    "open_service",
    "studio_data_dir",
    "studio_graph",
    "studio_settings",
]


def chat_model_from_settings(settings: Settings) -> BaseChatModel:
    """The in-process model, or the engine-backed one when ``settings.engine_url`` is set."""
    if settings.engine_url:
        return load_remote_chat_model(settings)
    return load_chat_model(settings)


log = logging.getLogger("graph.service")


def default_context(settings: Settings) -> Context:
    """The per-run defaults a deployment's settings imply."""
    return Context(
        profile=settings.default_profile,
        context_window=settings.context_window,
        max_new_tokens=settings.max_new_tokens,
        window_tokens=settings.window_tokens,
        top_k=settings.top_k,
        cross_thread_memory=settings.cross_thread_memory,
    )


def memory_from_settings(settings: Settings, embedder: Embedder) -> MemoryStore:
    """Chroma at ``settings.chroma_url`` (a server) or in the local folder of the settings."""
    from store.vector_memory import ChromaMemory  # imports chromadb: only when needed

    if settings.chroma_url:
        return ChromaMemory.from_url(
            settings.chroma_url, embedder, max_records_per_thread=settings.max_memories_per_thread
        )
    return ChromaMemory.persistent(
        settings.resolved_chroma_path(),
        embedder,
        max_records_per_thread=settings.max_memories_per_thread,
    )


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings | None = None,
    *,
    chat_model: BaseChatModel | None = None,
    embedder: Embedder | str | None = None,
    memory: MemoryStore | None = None,
) -> AsyncIterator[ChatService]:
    """Open everything a service needs from settings; parts given as arguments are used as is.

    Args:
        settings: Deployment settings (built from the environment when None).
        chat_model: A ready chat model; from ``chat_model_from_settings`` when None.
        embedder: An embedder or a name for ``load_embedder``; ``settings.embedder`` when None.
        memory: A ready vector memory; a Chroma store from settings when None.
    """
    settings = settings or Settings()
    owned = chat_model is None
    if chat_model is None:
        chat_model = await asyncio.to_thread(chat_model_from_settings, settings)
    if memory is None:
        if embedder is None or isinstance(embedder, str):
            embedder = await asyncio.to_thread(load_embedder, embedder or settings.embedder)
        memory = await asyncio.to_thread(memory_from_settings, settings, embedder)
    url = settings.resolved_checkpointer_url()
    close = getattr(chat_model, "close", None)
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(chat_model, RemoteChatModel):
            if owned:
                stack.push_async_callback(chat_model.aclose)
        elif callable(close):
            # The generation engine's loop stops with the service (it restarts on next use).
            stack.push_async_callback(asyncio.to_thread, close)
        # The turn's memory write runs after its stream closed; reads wait for it.
        memory = DeferredWrites(memory)
        stack.push_async_callback(asyncio.to_thread, memory.close)
        saver = await stack.enter_async_context(open_checkpointer(url))
        registry = await stack.enter_async_context(open_thread_registry(url))
        locks: TurnLocks | None = None
        keys: PostgresIdempotencyStore | None = None
        deletion_poll_s: float | None = None
        if parse_store_url(url).kind == "postgres":
            # Several API processes may share this database: one turn at a time per thread,
            # Idempotency-Keys and a deletion stopping a running turn hold across all of them.
            deletion_poll_s = DELETION_POLL_S
            locks = await stack.enter_async_context(
                open_postgres_locks(url, max_connections=settings.lock_connections)
            )
            keys = await stack.enter_async_context(open_idempotency_store(url))
        graph = compile_graph(Deps(chat_model=chat_model, memory=memory), checkpointer=saver)
        service = ChatService(
            graph=graph,
            chat_model=chat_model,
            checkpointer=saver,
            registry=registry,
            memory=memory,
            defaults=default_context(settings),
            keep_checkpoints=settings.keep_checkpoints,
            locks=locks,
            keys=keys,
            deletion_poll_s=deletion_poll_s,
        )
        if settings.retention_idle_days is not None:
            sweeper = asyncio.create_task(_sweep_forever(service, settings))
            stack.push_async_callback(_stop_task, sweeper)
        yield service


async def _stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(service: ChatService, settings: Settings) -> None:
    """Retention: delete idle threads now and every ``retention_sweep_seconds``."""
    assert settings.retention_idle_days is not None
    max_idle = timedelta(days=settings.retention_idle_days)
    while True:
        try:
            deleted = await service.sweep_idle(max_idle)
            if deleted:
                log.info("retention: deleted %d idle thread(s)", len(deleted))
        except Exception:  # housekeeping: the next sweep tries again
            log.warning("retention sweep failed", exc_info=True)
        await asyncio.sleep(settings.retention_sweep_seconds)


def studio_graph(
    settings: Settings | None = None,
) -> CompiledStateGraph[ChatState, Context, ChatState, ChatState]:
    """The graph the way LangGraph Studio serves it: real model and memory, no checkpointer."""
    settings = settings or Settings()
    memory = memory_from_settings(settings, load_embedder(settings.embedder))
    deps = Deps(chat_model=chat_model_from_settings(settings), memory=memory)
    return compile_graph(deps, checkpointer=None)


def studio_data_dir() -> Path:
    """``$XDG_CACHE_HOME/steadychat/studio`` (``~/.cache/...`` by default): outside the repo."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "steadychat" / "studio"


def studio_settings() -> Settings:
    """Settings for ``langgraph dev``: from the environment, runtime data outside the repo.

    The dev server watches the repository and reloads on changes, so unless
    ``STEADYCHAT_DATA_DIR`` says otherwise, Chroma and built models go to ``studio_data_dir()``.
    """
    settings = Settings()
    if "STEADYCHAT_DATA_DIR" not in os.environ:
        settings = settings.model_copy(update={"data_dir": studio_data_dir()})
    return settings
