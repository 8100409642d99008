"""Maintenance commands on a deployment's data: the retention sweep and the offline scrub."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import TextIO

from graph.settings import Settings

__all__ = ["run_scrub", "run_sweep"]


def run_sweep(settings: Settings, *, days: float | None = None, out: TextIO = sys.stdout) -> int:
    """Delete the threads idle for longer than ``days`` (or ``retention_idle_days``), once.

    The threads go the way ``DELETE /threads/{id}`` takes them (checkpoints, memories,
    registry). No turn runs, so no model is loaded.

    Returns:
        The exit code (2 when no age is given or set).
    """
    age = days if days is not None else settings.retention_idle_days
    if age is None or age <= 0:
        print(
            "steadychat sweep: give --days or set STEADYCHAT_RETENTION_IDLE_DAYS", file=sys.stderr
        )
        return 2
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from graph.compose import open_service

    async def sweep() -> list[str]:
        # The sweep runs no turn: a placeholder stands in for the model.
        placeholder = FakeListChatModel(responses=[""])
        quiet = settings.model_copy(update={"retention_idle_days": None})
        async with open_service(quiet, chat_model=placeholder) as service:
            return await service.sweep_idle(timedelta(days=age))

    deleted = asyncio.run(sweep())
    print(f"deleted {len(deleted)} thread(s) idle for more than {age:g} day(s)", file=out)
    return 0


def run_scrub(settings: Settings, *, out: TextIO = sys.stdout) -> int:
    """Rewrite the local data files so that nothing deleted remains in them (server stopped).

    The SQLite checkpoints file is vacuumed and its write-ahead log truncated; the local
    Chroma store's queued writes of deleted records are blanked, its file vacuumed and the
    unused capacity of its vector index files zeroed. PostgreSQL and a Chroma server are not
    touched (see docs/NOTES.md).

    Returns:
        The exit code (1 when a file stayed locked).
    """
    from store.checkpointer import parse_store_url
    from store.scrub import ScrubError, scrub_chroma_file, scrub_sqlite_file

    target = parse_store_url(settings.resolved_checkpointer_url())
    try:
        if target.kind == "sqlite" and target.location != ":memory:":
            try:
                scrub_sqlite_file(target.location)
                print(f"scrubbed {target.location}", file=out)
            except FileNotFoundError:
                print(f"no checkpoints file at {target.location}", file=out)
        if settings.chroma_url is None:
            folder = settings.resolved_chroma_path()
            blanked = scrub_chroma_file(folder)
            print(
                f"scrubbed {folder} ({blanked} queued write(s) of deleted records blanked)",
                file=out,
            )
    except ScrubError as exc:
        print(f"steadychat scrub: {exc} (stop the server first)", file=sys.stderr)
        return 1
    return 0
