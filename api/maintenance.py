"""Maintenance commands on a deployment's data: retention sweep, offline scrub, migration."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from graph.settings import Settings

__all__ = ["run_migrate", "run_scrub", "run_sweep"]


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


def run_migrate(
    settings: Settings,
    *,
    data_dir: Path | None = None,
    checkpoints: Path | None = None,
    chroma_path: Path | None = None,
    checkpointer_url: str | None = None,
    chroma_url: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    batch_size: int = 500,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Move an embedded deployment to PostgreSQL and a Chroma server (``steadychat migrate``).

    What is not given comes from the settings: the source is ``data_dir`` (its
    ``checkpoints.sqlite``, or the SQLite file of ``STEADYCHAT_CHECKPOINTER_URL``, and
    ``STEADYCHAT_CHROMA_PATH`` or ``data_dir/chroma``), the target
    ``STEADYCHAT_CHECKPOINTER_URL`` (when it is a PostgreSQL URL) and ``STEADYCHAT_CHROMA_URL``.

    Returns:
        The exit code: 0 when the copy is verified (or the dry run counted), 1 when the target
        does not match after the copy, 2 for a missing, invalid or busy source or an
        unreachable target, 3 when the target holds other content (without ``overwrite``),
        130 when interrupted (a later run resumes).
    """
    from store.checkpointer import parse_store_url
    from store.migration import ConflictError, MigrationError, Source, VerificationError, migrate

    out = out or sys.stdout
    err = err or sys.stderr

    configured = parse_store_url(settings.resolved_checkpointer_url())
    if checkpoints is None and data_dir is None and configured.kind == "sqlite":
        checkpoints = Path(configured.location)
    folder = data_dir if data_dir is not None else settings.data_dir
    source = Source.of_data_dir(
        folder, checkpoints=checkpoints, chroma=chroma_path or settings.chroma_path
    )
    if checkpointer_url is None and configured.kind == "postgres":
        checkpointer_url = configured.location
    chroma_url = chroma_url or settings.chroma_url
    if not dry_run:
        missing = []
        if checkpointer_url is None:
            missing.append("--to-checkpointer-url URL (or STEADYCHAT_CHECKPOINTER_URL)")
        if chroma_url is None:
            missing.append("--to-chroma-url URL (or STEADYCHAT_CHROMA_URL)")
        if missing:
            print(f"steadychat migrate: give {' and '.join(missing)}", file=err)
            return 2

    def progress(line: str) -> None:
        print(line, file=err, flush=True)

    try:
        report = asyncio.run(
            migrate(
                source,
                checkpointer_url=checkpointer_url,
                chroma_url=chroma_url,
                overwrite=overwrite,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=progress,
            )
        )
    except KeyboardInterrupt:
        print("steadychat migrate: interrupted; run it again to resume", file=err)
        return 130
    except ConflictError as exc:
        print(f"steadychat migrate: {exc}", file=err)
        return 3
    except VerificationError as exc:
        print(f"steadychat migrate: {exc}", file=err)
        return 1
    except MigrationError as exc:
        print(f"steadychat migrate: {exc}", file=err)
        return 2
    for line in report.summary():
        print(line, file=out)
    return 0
