"""``steadychat migrate`` refuses bad arguments, a bad or busy source and an absent target."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.cli import main
from store.checkpointer import open_sync_checkpointer
from store.vector_memory import local_client

UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:9/steadychat"
UNREACHABLE_CHROMA = "http://127.0.0.1:9"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["migrate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An embedded deployment with nothing in it yet: the checkpoint tables, a Chroma folder."""
    folder = tmp_path / "data"
    with open_sync_checkpointer(f"sqlite:///{folder / 'checkpoints.sqlite'}"):
        pass
    local_client(folder / "chroma").heartbeat()
    return folder


def _targets() -> list[str]:
    return ["--to-checkpointer-url", UNREACHABLE_PG, "--to-chroma-url", UNREACHABLE_CHROMA]


def test_a_missing_data_dir_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _run(capsys, "--from", str(tmp_path / "nope"), *_targets())
    assert code == 2 and out == ""
    line = _one_line(err)
    assert line.startswith("steadychat migrate: no checkpoints file at ")
    assert str(tmp_path / "nope") in line


def test_a_file_that_is_not_a_database_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    (folder / "chroma").mkdir(parents=True)
    (folder / "checkpoints.sqlite").write_text("these are notes, not a database\n" * 100)
    code, _, err = _run(capsys, "--from", str(folder), *_targets())
    assert code == 2
    assert "is not a SQLite database" in _one_line(err)


def test_a_database_without_checkpoints_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    (folder / "chroma").mkdir(parents=True)
    with sqlite3.connect(folder / "checkpoints.sqlite") as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    code, _, err = _run(capsys, "--from", str(folder), *_targets())
    assert code == 2
    assert "holds no LangGraph checkpoints" in _one_line(err)


def test_a_missing_chroma_folder_is_refused(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    shutil.rmtree(data_dir / "chroma")
    (data_dir / "chroma").mkdir()  # a folder, but no Chroma store in it
    code, _, err = _run(capsys, "--from", str(data_dir), *_targets())
    assert code == 2
    assert "no Chroma store at" in _one_line(err) and "--from-chroma-path" in err


@pytest.fixture
def server_holding(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A connection that keeps the checkpoints file open, as a running server does (WAL)."""
    conn = sqlite3.connect(data_dir / "checkpoints.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("SELECT count(*) FROM checkpoints").fetchall()
    yield conn
    conn.close()


def test_a_source_in_use_is_refused_until_its_server_stops(
    capsys: pytest.CaptureFixture[str], data_dir: Path, server_holding: sqlite3.Connection
) -> None:
    code, _, err = _run(capsys, "--from", str(data_dir), "--dry-run")
    assert code == 2
    line = _one_line(err)
    assert "is in use by another process" in line and "stop the steadychat server" in line
    server_holding.close()
    code, out, _ = _run(capsys, "--from", str(data_dir), "--dry-run")
    assert code == 0
    assert "threads: 0 (0 live, 0 deleted)" in out and "dry run: nothing was written" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to-checkpointer-url", "sqlite:///other.db"], "must be a postgresql:// URL"),
        (["--to-checkpointer-url", "mysql://db/x"], "unsupported checkpoint URL scheme"),
        (["--to-chroma-url", "localhost:8000"], "must look like http://host:port"),
    ],
)
def test_a_target_of_the_wrong_kind_is_refused(
    capsys: pytest.CaptureFixture[str], data_dir: Path, args: list[str], expected: str
) -> None:
    defaults = dict(zip(_targets()[::2], _targets()[1::2], strict=True))
    defaults.update(zip(args[::2], args[1::2], strict=True))
    flat = [part for pair in defaults.items() for part in pair]
    code, _, err = _run(capsys, "--from", str(data_dir), *flat)
    assert code == 2
    assert expected in _one_line(err)


def test_a_target_must_be_named(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, _, err = _run(capsys, "--from", str(data_dir))
    assert code == 2
    line = _one_line(err)
    assert "--to-checkpointer-url" in line and "STEADYCHAT_CHECKPOINTER_URL" in line
    assert "--to-chroma-url" in line and "STEADYCHAT_CHROMA_URL" in line


def test_the_target_defaults_come_from_the_settings(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEADYCHAT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("STEADYCHAT_CHECKPOINTER_URL", "postgresql://steady:s3cret@127.0.0.1:9/db")
    monkeypatch.setenv("STEADYCHAT_CHROMA_URL", UNREACHABLE_CHROMA)
    code, _, err = _run(capsys)
    assert code == 2
    line = _one_line(err)
    assert "cannot reach PostgreSQL at postgresql://steady:***@127.0.0.1:9/db" in line
    assert "s3cret" not in err


def test_an_unreachable_postgres_is_refused(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = _run(capsys, "--from", str(data_dir), *_targets())
    assert code == 2 and out == ""
    assert "cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:9/steadychat" in (
        _one_line(err)
    )


def test_a_dry_run_checks_that_a_named_target_answers(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, _, err = _run(capsys, "--from", str(data_dir), "--dry-run", *_targets())
    assert code == 2
    assert "cannot reach PostgreSQL" in _one_line(err)


def test_a_batch_size_below_one_is_an_argument_error(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--from", str(data_dir), "--dry-run", "--batch-size", "0"])
    assert exited.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
