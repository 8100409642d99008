"""`steadychat serve --model tiny` for real: a uvicorn process on loopback, offline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def steadychat_command() -> list[str]:
    script = Path(sys.executable).with_name("steadychat")
    assert script.exists(), "the steadychat console script is not installed (pip install -e .)"
    return [str(script)]


@contextlib.contextmanager
def running_server(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """Start ``steadychat serve --model tiny`` on a free port and wait until it is ready."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STEADYCHAT_DATA_DIR": str(data_dir),
        "STEADYCHAT_API_KEYS": "",
    }
    log_path = data_dir / "server.log"
    command = [*steadychat_command(), "serve", "--model", "tiny"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, f"serve exited early:\n{log_path.read_text()}"
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready in time:\n{log_path.read_text()}"
                time.sleep(0.5)
            yield url, process, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_serve_tiny_model_end_to_end(tmp_path: Path) -> None:
    with running_server(tmp_path) as (url, process, log_path):
        with httpx.Client(base_url=url, timeout=120) as client:
            check_conversation(client)
            listed = client.get("/threads", headers={"X-Request-Id": "e2e-list"})
            assert listed.status_code == 200
            assert listed.headers["x-request-id"] == "e2e-list"
        # Ctrl-C stops the server gracefully: the service closes and the process exits 0.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    log = log_path.read_text()
    assert "e2e-list" in log
    assert "Traceback" not in log


def check_conversation(client: httpx.Client) -> None:
    """One JSON turn, one streamed turn, then the thread, health and metrics."""
    thread_id = client.post("/threads", json={"title": "e2e"}).json()["thread_id"]
    reply = client.post(
        f"/threads/{thread_id}/messages",
        json={"content": "Hello, my name is Ada.", "max_tokens": 8, "temperature": 0},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["turn"] == 1
    assert isinstance(body["reply"], str)
    assert 0 < body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["prompt_tokens"] > 0

    events: list[str] = []
    done: dict[str, object] = {}
    with client.stream(
        "POST",
        f"/threads/{thread_id}/messages",
        json={"content": "And again?", "stream": True, "max_tokens": 6, "temperature": 0},
    ) as response:
        assert response.status_code == 200
        name = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
                events.append(name)
            elif line.startswith("data:") and name == "done":
                done = json.loads(line.split(":", 1)[1])
    assert events[-1] == "done"
    assert events.count("done") == 1
    assert done["turn"] == 2

    detail = client.get(f"/threads/{thread_id}").json()
    assert detail["thread"]["turns"] == 2
    assert len(detail["window"]) == 4
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "steadychat_turn_duration_seconds_count" in client.get("/metrics").text
