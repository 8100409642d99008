"""`steadychat serve --model smollm2` from an empty data dir: converted once, real English."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_serve import free_port
from tests.english import english_problems

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def test_smollm2_answers_hello_in_readable_english(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "STEADYCHAT_DATA_DIR": str(tmp_path / "data"),
        "STEADYCHAT_API_KEYS": "",
    }
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the first start shows its progress
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "api.cli", "serve", "--model", "smollm2"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert process.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=180) as client:
                thread_id = client.post("/threads", json={}).json()["thread_id"]
                answer = client.post(
                    f"/threads/{thread_id}/messages",
                    json={"content": "Hello, who are you?", "max_tokens": 48, "temperature": 0},
                )
                assert answer.status_code == 200, answer.text
                reply = answer.json()["reply"]
                assert english_problems(reply) == [], reply
                models = client.get("/v1/models").json()
        finally:
            process.terminate()
            process.wait(timeout=60)
    log_text = log_path.read_text()
    # The first start converted the wheel's GGUF with a progress bar, into the data dir.
    assert "converting GGUF" in log_text
    assert (tmp_path / "data" / "models" / "smollm2" / "model.safetensors").is_file()
    assert "Traceback" not in log_text
    assert models["data"], models
