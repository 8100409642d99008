"""`steadychat chat` on a real terminal (a pty): readline keeps a history file, /help answers."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def _read_until(
    fd: int, needle: bytes, seen: bytearray, *, count: int, timeout_s: float = 240
) -> None:
    """Read from ``fd`` into ``seen`` until ``needle`` occurs ``count`` times."""
    deadline = time.monotonic() + timeout_s
    while seen.count(needle) < count:
        assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen.extend(chunk)
    assert seen.count(needle) >= count, seen.decode(errors="replace")[-2000:]


def test_terminal_chat_edits_lines_and_keeps_history(isolated_data_dir: Path) -> None:
    history = isolated_data_dir / "chat_history"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("an old line\n")
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "chat", "--model", "tiny", "--max-new-tokens", "4"],
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(slave)
    seen = bytearray()
    lines = [
        b"/help\r",
        b"helo\x1b[D\x1b[Dl\r",  # two left arrows, then the missing letter: "hello"
        b"\x1b[A\x1b[A\x1b[A\r",  # three up arrows: back past this session to "an old line"
        b"exit\r",
    ]
    try:
        for count, line in enumerate(lines, 1):
            _read_until(master, b"you> ", seen, count=count)
            os.write(master, line)
        assert process.wait(timeout=120) == 0, seen.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    output = seen.decode(errors="replace")
    assert "/profile NAME" in output  # /help answered
    assert output.count("assistant> ") == 2, output
    # What was sent, as readline saved it: the edited line whole, the recalled line again.
    assert history.read_text().splitlines() == [
        "an old line",
        "/help",
        "hello",
        "an old line",
        "exit",
    ]
