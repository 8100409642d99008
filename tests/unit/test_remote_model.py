"""RemoteChatModel's requests and its reading of engine answers, over httpx's MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage

from graph.errors import EngineUnavailableError
from graph.remote_model import RemoteChatModel, load_remote_chat_model
from graph.settings import Settings

Handler = Callable[[httpx.Request], httpx.Response]


def _sse(*events: dict[str, Any], done: bool = True) -> str:
    lines = [f"data: {json.dumps(event)}\n\n" for event in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines)


def _text(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


REPLY = _sse(
    _text("Hello"),
    _text(" there"),
    _text("", "stop"),
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
)


def _model(tiny_model_path: Path, handler: Handler, **settings: Any) -> RemoteChatModel:
    model = load_remote_chat_model(
        Settings(model=str(tiny_model_path), engine_url="http://engine.test/v1", **settings)
    )
    # The one seam: the connection pool the model would open to the engine.
    model._client = httpx.Client(
        base_url="http://engine.test", transport=httpx.MockTransport(handler)
    )
    return model


def _recording(sent: list[dict[str, Any]], body: str = REPLY, status: int = 200) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append({"path": request.url.path, **json.loads(request.content)})
        return httpx.Response(status, text=body, headers={"content-type": "text/event-stream"})

    return handler


def test_the_request_carries_the_local_prompt_and_the_sampling(tiny_model_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    model = _model(tiny_model_path, _recording(sent), engine_model="served-name")
    messages = [HumanMessage("hi")]
    reply = model.invoke(
        messages, temperature=0.5, top_p=0.9, top_k=7, repetition_penalty=1.2, seed=-1, stop="x"
    )
    request = sent[0]
    assert request["path"] == "/v1/completions"
    assert request["model"] == "served-name"
    assert request["prompt"] == model._to_chat_prompt(messages)
    assert request["stream"] is True
    assert (request["temperature"], request["top_p"], request["top_k"]) == (0.5, 0.9, 7)
    assert request["repetition_penalty"] == 1.2
    assert request["seed"] == 2**32 - 1
    assert request["stop"] == ["x"]
    assert reply.content == "Hello there"
    assert reply.usage_metadata == {
        "input_tokens": model.get_num_tokens_from_messages(messages),
        "output_tokens": 3,
        "total_tokens": model.get_num_tokens_from_messages(messages) + 3,
    }


@pytest.mark.parametrize("sampling", ["standard", "generation_config"])
def test_sampling_dialects(tiny_model_path: Path, sampling: str) -> None:
    sent: list[dict[str, Any]] = []
    model = _model(tiny_model_path, _recording(sent), engine_sampling=sampling)
    model.invoke("hi", temperature=0.5, top_k=7, repetition_penalty=1.2, max_new_tokens=9)
    request = sent[0]
    assert "top_k" not in request and "repetition_penalty" not in request
    if sampling == "generation_config":
        config = json.loads(request["generation_config"])
        assert config == {
            "do_sample": True,
            "max_new_tokens": 9,
            "temperature": 0.5,
            "top_p": config["top_p"],
            "top_k": 7,
            "repetition_penalty": 1.2,
        }
        greedy: list[dict[str, Any]] = []
        _model(tiny_model_path, _recording(greedy), engine_sampling=sampling).invoke(
            "hi", temperature=0
        )
        assert json.loads(greedy[0]["generation_config"])["do_sample"] is False
        assert greedy[0]["temperature"] == 0.0
    else:
        assert "generation_config" not in request


def test_the_reply_budget_is_what_the_context_window_leaves(tiny_model_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    model = _model(tiny_model_path, _recording(sent), context_window=256)
    messages = [HumanMessage("hi")]
    model.invoke(messages, max_new_tokens=1000)
    assert sent[0]["max_tokens"] == 256 - model.get_num_tokens_from_messages(messages)
    with pytest.raises(ValueError, match="context window"):
        model.invoke("word " * 300)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, "boom"),
        (503, "loading"),
        (429, "busy"),
        (200, _sse(_text("Hel"), _text("lo"), done=False)),  # ended before the reply did
        (200, "data: {not json\n\n"),
        (200, _sse({"error": "CUDA out of memory"})),
    ],
)
def test_outages_raise_engine_unavailable(tiny_model_path: Path, status: int, body: str) -> None:
    model = _model(tiny_model_path, _recording([], body=body, status=status))
    with pytest.raises(EngineUnavailableError) as info:
        model.invoke("hi")
    assert info.value.retry_after_s > 0
    with pytest.raises(EngineUnavailableError):
        list(model.stream("hi"))


def test_a_refused_request_is_a_failure_not_an_outage(tiny_model_path: Path) -> None:
    model = _model(tiny_model_path, _recording([], body='{"detail": "bad field"}', status=422))
    with pytest.raises(RuntimeError, match="422") as info:
        model.invoke("hi")
    assert not isinstance(info.value, EngineUnavailableError)


def test_unknown_call_arguments_and_other_models_are_refused(tiny_model_path: Path) -> None:
    model = _model(tiny_model_path, _recording([]))
    with pytest.raises(ValueError, match="unsupported"):
        model.invoke("hi", frequency=1)
    with pytest.raises(ValueError, match="cannot switch"):
        model.invoke("hi", model="another")


def test_engine_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="engine_url"):
        Settings(engine_url="engine:8000")
    assert Settings(engine_url=" ").engine_url is None


def test_serve_takes_the_engine_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import api.serve
    from api.cli import main

    seen: list[Settings] = []
    monkeypatch.setattr(api.serve, "serve", seen.append)
    code = main(["serve", "--engine-url", "http://gpu-1:8000/v1", "--engine-model", "qwen"])
    assert code == 0
    assert (seen[0].engine_url, seen[0].engine_model) == ("http://gpu-1:8000/v1", "qwen")
