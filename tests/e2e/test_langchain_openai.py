"""LangChain's ChatOpenAI against `steadychat serve --model tiny`: a real uvicorn server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.e2e.test_serve import START_TIMEOUT_S, free_port

pytestmark = pytest.mark.slow


class Order(BaseModel):
    """An order to place."""

    customer: str = Field(description="Who orders")
    quantity: int = Field(description="How many")
    express: bool


@tool
def get_weather(city: str, days: int) -> str:
    """The weather forecast of a city for some days."""
    return f"sunny in {city} for {days} days"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[str]:
    """``python -m api.cli serve --model tiny`` on a free loopback port, until the module ends."""
    data_dir = tmp_path_factory.mktemp("serve")
    (data_dir / "models").mkdir()
    (data_dir / "models" / "tiny").symlink_to(tiny_model_path, target_is_directory=True)
    port = free_port()
    env = {
        **os.environ,
        "STEADYCHAT_DATA_DIR": str(data_dir),
        "STEADYCHAT_EMBEDDER": "hash",
        "STEADYCHAT_CHECKPOINTER_URL": "memory",
        "STEADYCHAT_API_KEYS": "",
    }
    command = [sys.executable, "-m", "api.cli", "serve", "--model", "tiny"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = data_dir / "server.log"
    root = Path(__file__).resolve().parents[2]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
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
            yield f"{url}/v1"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _chat(server: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="steadychat",
        base_url=server,
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        timeout=120,
        **kwargs,
    )


def test_plain_and_streamed_replies(server: str) -> None:
    chat = _chat(server, max_completion_tokens=16, temperature=1.0, seed=3)
    reply = chat.invoke("Hello, who are you?")
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0

    chunks = list(chat.stream("Hello, who are you?"))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == reply.content


def test_bind_tools_with_tool_choice_required_calls_a_tool(server: str) -> None:
    chat = _chat(server, max_completion_tokens=120, temperature=1.0, seed=11)
    reply = chat.bind_tools([get_weather], tool_choice="required").invoke(
        "What will the weather be in Lyon?"
    )
    [call] = reply.tool_calls
    assert call["name"] == "get_weather"
    assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["days"], int)
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    # The result goes back as a tool message, through the model's template.
    answer = chat.bind_tools([get_weather]).invoke(
        [
            ("user", "What will the weather be in Lyon?"),
            reply,
            get_weather.invoke(call),
        ]
    )
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_streamed_tool_calls(server: str) -> None:
    chat = _chat(server, max_completion_tokens=120, temperature=1.0, seed=12)
    merged: Any = None
    for chunk in chat.bind_tools([get_weather], tool_choice="get_weather").stream("Weather?"):
        merged = chunk if merged is None else merged + chunk
    [call] = merged.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "days"}


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_parses_into_the_schema(server: str, method: str) -> None:
    chat = _chat(server, max_completion_tokens=150, temperature=1.0, seed=13)
    order = chat.with_structured_output(Order, method=method).invoke(  # type: ignore[arg-type]
        "Ada orders three lamps, express."
    )
    assert isinstance(order, Order)


def test_structured_output_in_json_mode_parses_a_json_object(server: str) -> None:
    chat = _chat(server, max_completion_tokens=60, temperature=1.0, seed=14)
    schema = Order.model_json_schema()
    value = chat.with_structured_output(schema, method="json_mode").invoke(
        "Return the order as JSON: Ada, three lamps, express."
    )
    assert isinstance(value, dict)


def test_an_unknown_model_is_refused(server: str) -> None:
    import openai

    chat = ChatOpenAI(model="gpt-4o", base_url=server, api_key="unused", max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as caught:
        chat.invoke("hi")
    assert caught.value.code == "model_not_found"
