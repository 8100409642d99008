"""Thread operations: create, read, list, delete, reset, history and slot corrections."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from graph.core import THREAD_ID_RULE, ServiceCore, valid_thread_id
from graph.errors import ServiceError, ThreadNotFoundError
from graph.views import CheckpointView, ThreadView, window_messages
from nodes.remember import slot_memory_changes
from nodes.slots import correct_slots
from nodes.state import Slot
from store.threads import ThreadRecord

__all__ = ["ThreadOperations"]


class ThreadOperations(ServiceCore):
    """The thread-level half of the service; every operation checks the caller owns the thread."""

    async def create_thread(
        self,
        *,
        owner: str = "anonymous",
        thread_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadRecord:
        """Register a thread (id generated when not given; an existing id raises ServiceError)."""
        thread_id = thread_id or uuid.uuid4().hex
        if not valid_thread_id(thread_id):
            raise ServiceError(f"invalid thread id {thread_id!r}: {THREAD_ID_RULE}")
        if await self.registry.is_deleted(thread_id):
            raise ServiceError(f"thread id {thread_id!r} belonged to a deleted thread")
        try:
            record = await self.registry.create(
                thread_id, owner=owner, title=title, metadata=metadata or {}
            )
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        return record

    async def ensure_thread(self, thread_id: str, *, owner: str = "anonymous") -> ThreadRecord:
        """The thread, created for ``owner`` if it does not exist yet."""
        if not valid_thread_id(thread_id):
            raise ServiceError(f"invalid thread id {thread_id!r}: {THREAD_ID_RULE}")
        record = await self.registry.get(thread_id)
        if record is None:
            if await self.registry.is_deleted(thread_id):
                raise ThreadNotFoundError(f"thread {thread_id!r} not found")
            return await self.create_thread(owner=owner, thread_id=thread_id)
        if record.owner != owner:
            raise ThreadNotFoundError(f"thread {thread_id!r} not found")
        return record

    async def get_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadView:
        """The thread's readable state; ThreadNotFoundError if unknown/deleted/other owner."""
        info = await self._record(thread_id, owner)
        snapshot = await self.graph.aget_state(self._config(thread_id))
        values: dict[str, Any] = dict(snapshot.values or {})
        return ThreadView(
            info=info,
            slots=dict(values.get("slots") or {}),
            summary_l1=list(values.get("summary_l1") or []),
            summary_l2=values.get("summary_l2"),
            topic=values.get("topic"),
            entities=list(values.get("entities") or []),
            pending_questions=list(values.get("pending_questions") or []),
            window=window_messages(values),
            context_account=values.get("context_account"),
        )

    async def list_threads(
        self, *, owner: str | None = None, limit: int = 20, offset: int = 0
    ) -> tuple[list[ThreadRecord], int]:
        """Threads newest-updated first, and the total count."""
        records, total = await self.registry.list(owner=owner, limit=limit, offset=offset)
        return list(records), total

    async def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        """Delete checkpoints, vectors and slots; later writes to it raise ThreadNotFoundError.

        A turn running on the thread, in this process or in another one sharing the registry
        (``graph.running``), is stopped first and saves nothing; the deletion then waits for it
        to give the thread back, a moment rather than the rest of its generation.
        """
        await self._record(thread_id, owner)
        # Tombstone first so that nothing new starts, then stop a running turn, then wipe.
        await self.registry.mark_deleted(thread_id)
        # A turn of another process sees the tombstone itself (``graph.running``).
        self._running.stop(thread_id)
        async with self._locks.hold(thread_id):
            await self.checkpointer.adelete_thread(thread_id)
            if self.memory is not None:
                await asyncio.to_thread(self.memory.delete_thread, thread_id)
            await self._forget_on_disk(thread_id)

    async def sweep_idle(self, max_idle: timedelta, *, now: datetime | None = None) -> list[str]:
        """Delete every thread idle for longer than ``max_idle`` (retention), as ``delete_thread``.

        Args:
            max_idle: How long a thread may go without a turn or a correction.
            now: The current time (tests pass their own).

        Returns:
            The ids of the deleted threads.
        """
        cutoff = (now or datetime.now(UTC)) - max_idle
        deleted: list[str] = []
        while True:
            batch = [t for t in await self.registry.idle_since(cutoff) if t not in deleted]
            if not batch:
                return deleted
            for thread_id in batch:
                record = await self.registry.get(thread_id)
                if record is None or record.updated_at >= cutoff:
                    continue  # deleted or active since it was listed
                try:
                    await self.delete_thread(thread_id)
                except ThreadNotFoundError:
                    continue
                deleted.append(thread_id)
            if len(batch) < 100:
                return deleted

    async def reset_thread(self, thread_id: str, *, owner: str | None = None) -> ThreadRecord:
        """Clear the thread's state, vectors and slots but keep the thread (same id, title).

        A turn running on the thread (in any process) is not stopped: the reset waits for it
        and clears what it saved.
        """
        await self._record(thread_id, owner)
        async with self._locks.hold(thread_id):
            await self.checkpointer.adelete_thread(thread_id)
            if self.memory is not None:
                await asyncio.to_thread(self.memory.clear_thread, thread_id)
            await self.registry.touch(thread_id, turns=0)
            await self._forget_on_disk(thread_id)
        return await self._record(thread_id, owner)

    async def history(
        self, thread_id: str, *, owner: str | None = None, limit: int = 50
    ) -> list[CheckpointView]:
        """Checkpoints of the thread, newest first."""
        await self._record(thread_id, owner)
        out: list[CheckpointView] = []
        async for snap in self.graph.aget_state_history(self._config(thread_id), limit=limit):
            values = snap.values or {}
            out.append(
                CheckpointView(
                    checkpoint_id=str(snap.config["configurable"]["checkpoint_id"]),
                    created_at=str(snap.created_at),
                    step=int((snap.metadata or {}).get("step", 0)),
                    source=str((snap.metadata or {}).get("source", "")),
                    turn=int(values.get("turn", 0)),
                    next=list(snap.next),
                    messages=len(values.get("messages") or []),
                )
            )
        return out

    async def update_slots(
        self, thread_id: str, changes: dict[str, str | None], *, owner: str | None = None
    ) -> dict[str, Slot]:
        """Correct (str) or clear (None) slots; the old value goes to the slot's history.

        A corrected value also replaces the slot's fact in vector memory, as a correction made
        in conversation does. A cleared slot is forgotten: its history is emptied, its fact
        deleted from vector memory, and the thread's older checkpoints (which hold the value)
        pruned, so that only the newest checkpoint stays.
        """
        record = await self._record(thread_id, owner)
        async with self._locks.hold(thread_id):
            config = self._config(thread_id)
            values = (await self.graph.aget_state(config)).values or {}
            current: dict[str, Slot] = dict(values.get("slots") or {})
            turn = int(values.get("turn") or 0)
            try:
                updates = correct_slots(current, changes, turn=turn)
            except ValueError as exc:
                raise ServiceError(str(exc)) from exc
            if updates:
                await self.graph.aupdate_state(config, {"slots": updates}, as_node="remember")
                facts, cleared = slot_memory_changes(
                    thread_id, record.owner, updates, turn=turn, timestamp=_now()
                )
                if self.memory is not None and facts:
                    await asyncio.to_thread(self.memory.add, facts)
                if self.memory is not None and cleared:
                    await asyncio.to_thread(self.memory.delete_records, cleared)
                await self.registry.touch(thread_id)
                if cleared:
                    await self._prune(thread_id, keep=1)
                    await self._forget_on_disk(thread_id)
                else:
                    await self._prune(thread_id)
            current.update(updates)
            return current


def _now() -> str:
    return datetime.now(UTC).isoformat()
