"""`langgraph dev` serves the studio graph offline; two turns on one thread through the SDK."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_langgraph_dev_runs_two_turns_with_the_tiny_model(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "STEADYCHAT_MODEL": "tiny",
        "STEADYCHAT_DATA_DIR": str(tmp_path / "data"),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "1",
        "LANGSMITH_TRACING": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cli = Path(sys.executable).with_name("langgraph")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(cli),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(ROOT / "langgraph.json"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "langgraph dev did not start"
            time.sleep(0.5)
        client = get_sync_client(url=url)
        assistants = client.assistants.search(graph_id="steadychat")
        assert assistants, "the steadychat graph is not served"
        # Studio draws its forms from these schemas: the message input, and the context's
        # profile and knobs.
        schemas = client.assistants.get_schemas(assistants[0]["assistant_id"])
        for name in ("input_schema", "output_schema", "context_schema"):
            assert schemas.get(name), f"{name} is missing: {schemas}"
        assert "messages" in schemas["input_schema"]["properties"]
        assert {"slots", "context_account"} <= set(schemas["output_schema"]["properties"])
        knobs = set(schemas["context_schema"]["properties"])
        assert {"profile", "top_k", "max_new_tokens", "generation", "window_tokens"} <= knobs
        assert not any("cancel" in knob for knob in knobs), knobs
        thread = client.threads.create()
        context = {"profile": "precise", "max_new_tokens": 12}
        first = client.runs.wait(
            thread["thread_id"],
            "steadychat",
            input={"messages": [{"role": "user", "content": "Hi, my name is Alice Martin."}]},
            context=context,
        )
        assert first["turn"] == 1
        assert first["slots"]["name"]["value"] == "Alice Martin"
        second = client.runs.wait(
            thread["thread_id"],
            "steadychat",
            input={"messages": [{"role": "user", "content": "What is my name?"}]},
            context=context,
        )
        assert second["turn"] == 2
        roles = [m["type"] for m in second["messages"]]
        assert roles == ["human", "ai", "human", "ai"]
        assert second["context_account"]["turn"] == 2
        # The state block reached the model: the account counted a state section.
        assert second["context_account"]["sections"].get("state", 0) > 0
        log_text = (tmp_path / "server.log").read_text()
        assert "Failed to get" not in log_text, log_text[-3000:]
        assert "schema" not in "\n".join(
            line for line in log_text.splitlines() if "warning" in line.lower()
        ), log_text[-3000:]
        assert "UserWarning" not in log_text, log_text[-3000:]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
