"""ChromaMemory over a real Chroma server (``chroma run``), shared by two clients, restarted."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nodes.errors import ThreadDeletedError
from nodes.memory import MemoryRecord
from store.embeddings import CharFrequencyEmbedder
from store.vector_memory import ChromaMemory

pytestmark = pytest.mark.slow


def _chroma_cli() -> str:
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if not found:
        pytest.fail("the `chroma` command (package chromadb) is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChromaServer:
    """A `chroma run` process on loopback, restartable on the same data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = path.parent / "chroma.log"

    def start(self) -> None:
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    _chroma_cli(),
                    "run",
                    "--path",
                    str(self.path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chroma server exited: {self.log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail("chroma server did not answer its heartbeat within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChromaServer]:
    running = ChromaServer(tmp_path / "chroma-data")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def rec(thread: str, turn: int, text: str) -> MemoryRecord:
    return MemoryRecord(
        id=f"{thread}:{turn}:user",
        text=text,
        thread_id=thread,
        user_id="u1",
        turn=turn,
        role="user",
        timestamp="2025-06-01T09:00:00+00:00",
    )


def test_two_clients_share_memory_deletions_and_survive_a_restart(server: ChromaServer) -> None:
    writer = ChromaMemory.from_url(server.url, CharFrequencyEmbedder())
    reader = ChromaMemory.from_url(server.url, CharFrequencyEmbedder())

    writer.add(
        [
            rec("t1", 1, "The staging database lives on host db-07."),
            rec("t1", 2, "Deploys happen every Thursday afternoon."),
            rec("t2", 1, "Unrelated thread about lunch plans."),
        ]
    )
    # Another client (another API process) sees the new records at once, keyword side included.
    hits = reader.search("which host is the staging database on", thread_id="t1", user_id=None, k=1)
    assert [h.record.text for h in hits] == ["The staging database lives on host db-07."]

    assert reader.delete_thread("t2") == 1
    with pytest.raises(ThreadDeletedError):
        writer.add([rec("t2", 2, "a late write from the other process")])

    server.stop()
    server.start()
    reopened = ChromaMemory.from_url(server.url, CharFrequencyEmbedder())
    assert reopened.count(thread_id="t1") == 2
    assert reopened.count(thread_id="t2") == 0
    hits = reopened.search("deploy day", thread_id="t1", user_id=None, k=1)
    assert [h.record.turn for h in hits] == [2]
    with pytest.raises(ThreadDeletedError):
        reopened.add([rec("t2", 3, "still refused after a restart")])


def test_a_clients_keyword_index_follows_the_other_clients_writes(server: ChromaServer) -> None:
    # Each API process keeps its own keyword index; what another one writes or deletes on the
    # shared server must reach it on its next search.
    here = ChromaMemory.from_url(server.url, CharFrequencyEmbedder())
    there = ChromaMemory.from_url(server.url, CharFrequencyEmbedder())
    here.add([rec("t1", 1, "The staging database lives on host db-07.")])
    assert here.search("staging database host", thread_id="t1", user_id=None, k=1)
    there.add([rec("t1", 2, "The release freeze starts on the ninth.")])
    hits = here.search("when does the release freeze start", thread_id="t1", user_id=None, k=1)
    assert [h.record.turn for h in hits] == [2]
    there.delete_records(["t1:2:user"])
    hits = here.search("release freeze", thread_id="t1", user_id=None, k=5)
    assert [h.record.turn for h in hits] == [1]
    there.clear_thread("t1")
    assert here.search("staging database", thread_id="t1", user_id=None, k=5) == []
