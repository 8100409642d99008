"""What every part of the service shares: the compiled graph, the stores and the thread locks."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from graph.errors import ThreadNotFoundError
from graph.locks import ThreadLocks, TurnLocks
from graph.running import RunningTurns
from nodes.context import Context
from nodes.memory import MemoryStore
from nodes.state import ChatState
from store.checkpointer import forget_on_disk, prune_checkpoints
from store.idempotency import PostgresIdempotencyStore
from store.threads import ThreadRecord, ThreadRegistry

__all__ = ["THREAD_ID_PATTERN", "THREAD_ID_RULE", "ServiceCore", "valid_thread_id"]

log = logging.getLogger("graph.service")


THREAD_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}$"
"""The one rule for a thread id, wherever it comes in (REST path, ``X-Thread-Id``, the CLI):
it goes into URLs, headers and log lines as it is, so no white space, no control character,
nothing a path would normalise ("." or "..")."""
THREAD_ID_RULE = (
    "a thread id is 1 to 128 characters: ASCII letters, digits and . _ : - "
    "(starting with a letter, a digit or _)"
)
"""``THREAD_ID_PATTERN`` in words, for error messages."""
_THREAD_ID = re.compile(THREAD_ID_PATTERN)


def valid_thread_id(thread_id: object) -> bool:
    """Whether ``thread_id`` can name a thread (``THREAD_ID_PATTERN``)."""
    return isinstance(thread_id, str) and _THREAD_ID.fullmatch(thread_id) is not None


class ServiceCore:
    """The parts the thread operations and the turn runner share.

    Args:
        graph: The turn graph compiled with ``checkpointer``.
        chat_model: The model (stateless completions go straight to it).
        checkpointer: The saver the graph was compiled with.
        registry: The thread registry (owners, titles, tombstones).
        memory: Vector memory, or None.
        defaults: The context every turn starts from (settings-derived).
        keep_checkpoints: Checkpoints kept per thread after each turn (0 keeps all).
        locks: Per-thread turn locks; in-process ones when None (one API process). Several
            processes on one database need ``PostgresThreadLocks``.
        keys: Idempotency-Key results shared by every process on the database, or None (the
            API keeps them per process).
        deletion_poll_s: Seconds between two looks at the registry for tombstones of the
            threads this process runs turns on, so that a deletion made by another process
            stops them (``graph.running.RunningTurns``); None when this process is the only
            one (its own deletions stop its turns directly).
    """

    def __init__(
        self,
        *,
        graph: CompiledStateGraph[ChatState, Context, ChatState, ChatState],
        chat_model: BaseChatModel,
        checkpointer: BaseCheckpointSaver[Any],
        registry: ThreadRegistry,
        memory: MemoryStore | None = None,
        defaults: Context | None = None,
        keep_checkpoints: int = 20,
        locks: TurnLocks | None = None,
        keys: PostgresIdempotencyStore | None = None,
        deletion_poll_s: float | None = None,
    ) -> None:
        self.graph = graph
        self.chat_model = chat_model
        self.checkpointer = checkpointer
        self.registry = registry
        self.memory = memory
        self.defaults = defaults or Context()
        self.keep_checkpoints = keep_checkpoints
        self._locks: TurnLocks = locks if locks is not None else ThreadLocks()
        self.keys = keys
        self._running = RunningTurns(registry, poll_s=deletion_poll_s)
        """The turns running now, by thread: a deletion, here or elsewhere, stops its turn."""

    @property
    def waiting_turns(self) -> int:
        """Turns waiting for their thread's lock (the queue depth metric)."""
        return self._locks.waiting

    def context(self, **overrides: Any) -> Context:
        """The default context with per-run overrides (unknown names raise TypeError)."""
        return replace(self.defaults, **overrides)

    @staticmethod
    def _config(thread_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id}}

    async def _record(self, thread_id: str, owner: str | None) -> ThreadRecord:
        """The thread's registry record; ThreadNotFoundError if unknown, deleted or not owned."""
        if not valid_thread_id(thread_id):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        record = await self.registry.get(thread_id)
        if record is None or (owner is not None and record.owner != owner):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        return record

    async def _prune(self, thread_id: str, *, keep: int | None = None) -> None:
        """Keep the thread's last ``keep`` (default ``keep_checkpoints``) checkpoints."""
        keep = self.keep_checkpoints if keep is None else keep
        if keep > 0:
            try:
                await prune_checkpoints(self.checkpointer, thread_id, keep=keep)
            except Exception:  # pruning is housekeeping; the write is saved either way
                log.warning("could not prune checkpoints of %s", thread_id, exc_info=True)

    async def _forget_on_disk(self, thread_id: str) -> None:
        """After a deletion: truncate the checkpoint file's write-ahead log (SQLite)."""
        if not await forget_on_disk(self.checkpointer):
            log.warning(
                "the checkpoint log stayed in use after forgetting %s; run steadychat scrub",
                thread_id,
            )
