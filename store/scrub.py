"""Removing the bytes of deleted data from SQLite files (the checkpoints and a local Chroma)."""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from pathlib import Path

__all__ = [
    "CHROMA_FILE",
    "ScrubError",
    "scrub_chroma_file",
    "scrub_chroma_in_child",
    "scrub_sqlite_file",
    "truncate_wal",
    "zero_unused_hnsw",
]

log = logging.getLogger(__name__)

CHROMA_FILE = "chroma.sqlite3"
"""The SQLite file of a local Chroma store (``PersistentClient``), inside its folder."""

_DELETE = 3
"""Chroma's operation code for a delete in its write-ahead queue (``embeddings_queue``)."""

# A queued write of a record that a later queued delete removed: Chroma replays the queue into
# its vector index on start, where the pair cancels out, so what the write carried (document
# and metadata, as JSON) is needed by nobody and is blanked. The vector stays: replay needs it
# and it is numbers, not text.
_BLANK_FORGOTTEN_WRITES = f"""
UPDATE embeddings_queue SET metadata = '{{}}'
WHERE operation != {_DELETE} AND metadata IS NOT NULL AND metadata != '{{}}'
  AND EXISTS (
    SELECT 1 FROM embeddings_queue AS later
    WHERE later.topic = embeddings_queue.topic AND later.id = embeddings_queue.id
      AND later.operation = {_DELETE} AND later.seq_id > embeddings_queue.seq_id
  )
"""


class ScrubError(RuntimeError):
    """A file could not be scrubbed (it stayed locked by another connection)."""


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    # Freed pages and deleted cells are overwritten with zeros, whatever the build's default.
    conn.execute("PRAGMA secure_delete = ON")
    return conn


def truncate_wal(conn: sqlite3.Connection, *, attempts: int = 50, pause: float = 0.05) -> bool:
    """Copy the write-ahead log into the database file and truncate it to zero bytes.

    Old versions of pages, with what was deleted since, live in the WAL until then. A reader
    or writer of another connection makes the checkpoint partial; it is retried.

    Args:
        conn: A connection to the database (any mode; a file not in WAL mode is a no-op).
        attempts: How many times to try.
        pause: Seconds between attempts.

    Returns:
        Whether the log was fully checkpointed and truncated.
    """
    for _ in range(max(1, attempts)):
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if row is not None and int(row[0]) == 0:
            return True
        time.sleep(pause)
    return False


def scrub_sqlite_file(path: str | Path, *, timeout: float = 10.0) -> None:
    """Rewrite a SQLite file so that no deleted row's bytes remain in it (VACUUM, WAL truncated).

    For a checkpoints file written before secure deletion was on, or by another program.
    Run it while nothing else writes the file.

    Args:
        path: The database file.
        timeout: Seconds to wait for other connections' locks.

    Raises:
        FileNotFoundError: No such file.
        ScrubError: The file stayed locked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SQLite file at {path}")
    conn = _connect(path, timeout)
    try:
        if not truncate_wal(conn):
            raise ScrubError(f"{path}: the write-ahead log is in use by another connection")
        conn.execute("VACUUM")
        if not truncate_wal(conn):
            raise ScrubError(f"{path}: the write-ahead log is in use by another connection")
    except sqlite3.OperationalError as exc:
        raise ScrubError(f"{path}: {exc}") from exc
    finally:
        conn.close()


def scrub_chroma_file(folder: str | Path, *, timeout: float = 10.0) -> int:
    """Remove what Chroma keeps of deleted records in a local store's SQLite file.

    Chroma deletes records from its tables, but its own SQLite connections do not overwrite
    freed space, and its write-ahead queue keeps every write (document and metadata) until
    its vector index is persisted. This blanks the queued writes of deleted records, merges
    the full-text index (dropping deleted entries), and rewrites the file (VACUUM), with
    secure deletion on. Safe while the store is open in this process: Chroma's connections
    wait for the lock and read the rewritten file afterwards.

    The vector index files beside it (``<segment>/data_level0.bin``...) keep deleted
    vectors until Chroma reuses their slots (numbers, not text); their unused capacity is
    zeroed (``zero_unused_hnsw``). Chroma rewrites those files from memory when it next
    persists the index, so a running store may write that capacity again as it holds it in
    memory: run ``steadychat scrub`` on a stopped store for a guarantee.

    Args:
        folder: The store's folder (``PersistentClient(path=...)``).
        timeout: Seconds to wait for Chroma's locks.

    Returns:
        How many queued writes were blanked.

    Raises:
        ScrubError: The file stayed locked.
    """
    path = Path(folder) / CHROMA_FILE
    if not path.is_file():
        return 0
    conn = _connect(path, timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        blanked = 0
        if "embeddings_queue" in tables:
            blanked = conn.execute(_BLANK_FORGOTTEN_WRITES).rowcount
        if "embedding_fulltext_search" in tables:
            conn.execute(
                "INSERT INTO embedding_fulltext_search(embedding_fulltext_search) "
                "VALUES ('optimize')"
            )
        conn.execute("VACUUM")
        truncate_wal(conn)
    except sqlite3.OperationalError as exc:
        raise ScrubError(f"{path}: {exc}") from exc
    finally:
        conn.close()
    for header in Path(folder).glob("*/header.bin"):
        zero_unused_hnsw(header.parent)
    return blanked


# Chroma's HNSW header (header.bin): version, offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, ... (little-endian).
_HEADER = struct.Struct("<iQQQQ")


def zero_unused_hnsw(segment: str | Path) -> bool:
    """Zero the unused capacity of a persisted HNSW index (Chroma's ``data_level0.bin``).

    The index allocates room for more elements than it holds and writes the whole buffer to
    disk, the part past its last element uninitialised: whatever the process's heap held
    there, text included (observed: a deleted message's text). Only the elements the
    header counts are ever read back, so the rest is overwritten with zeros; the element
    slots themselves are zeroed by the index when it fills them.

    Args:
        segment: A vector segment's folder (``header.bin``, ``data_level0.bin``, ``length.bin``).

    Returns:
        Whether the files had the expected layout and were zeroed past the last element.
    """
    folder = Path(segment)
    try:
        header = (folder / "header.bin").read_bytes()
        if len(header) < _HEADER.size:
            return False
        version, _, capacity, count, element_size = _HEADER.unpack_from(header)
        data = folder / "data_level0.bin"
        if version != 1 or count > capacity or not data.is_file():
            return False
        for file, unit in ((data, element_size), (folder / "length.bin", 4)):
            # Written whole (capacity) or only up to its last element (nothing to zero).
            if not file.is_file() or file.stat().st_size != capacity * unit:
                continue
            with file.open("r+b") as handle:
                handle.seek(count * unit)
                handle.write(bytes((capacity - count) * unit))
    except OSError:
        log.warning("could not zero the unused part of %s", folder, exc_info=True)
        return False
    return True


def scrub_chroma_in_child(folder: str | Path, *, timeout: float = 60.0) -> int:
    """``scrub_chroma_file`` in a child process, for a store this process has open.

    Chroma links its own copy of SQLite: two copies in one process do not see each other's
    file locks (closing a descriptor in one drops the other's POSIX locks), so a scrub run
    beside an open Chroma client in the same process can meet "disk I/O error" or worse.
    Locks between processes hold, so the scrub runs in a child.

    Args:
        folder: The store's folder.
        timeout: Seconds the child may take.

    Returns:
        How many queued writes were blanked.

    Raises:
        ScrubError: The child failed.
    """
    import subprocess
    import sys

    code = (
        "import sys; from store.scrub import scrub_chroma_file; "
        "print(scrub_chroma_file(sys.argv[1]))"
    )
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(folder)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ScrubError(f"scrubbing {folder} took longer than {timeout} s") from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise ScrubError(lines[-1] if lines else f"scrubbing {folder} failed")
    return int(done.stdout.strip() or 0)
