"""`steadychat replay` / `state`: transcripts load as given, plain strings are answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.replay import parse_transcript, replay, run_replay, thread_state
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

TRANSCRIPT = [
    {
        "role": "user",
        "content": "Hi, my name is Li Ming and my order number is #20240815CN001.",
        "timestamp": "2024-08-15T09:00:00+08:00",
    },
    {
        "role": "assistant",
        "content": "Hello Li Ming, I can see that order.",
        "timestamp": "2024-08-15T09:00:05+08:00",
    },
    {"role": "user", "content": "请用中文回答。", "timestamp": "2024-08-15T09:01:00+08:00"},
    {"role": "assistant", "content": "好的。"},
    "我的订单什么时候到？",
]


def test_bad_transcripts_are_refused_with_the_item_named() -> None:
    with pytest.raises(ValueError, match="JSON list"):
        parse_transcript({"role": "user"})
    with pytest.raises(ValueError, match="item 0"):
        parse_transcript([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="item 1: unknown role"):
        parse_transcript(["hi", {"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="item 0"):
        parse_transcript([42])


async def test_recorded_turns_are_stored_as_given(tmp_path: Path) -> None:
    model = ScriptedChatModel(default="它明天到。")
    settings = Settings(data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=model) as service:
        turn = await replay(service, "support", parse_transcript(TRANSCRIPT))
        state = await thread_state(service, "support")
    assert turn == 3
    # Only the last, plain-string turn reached the model.
    assert len(model.history) == 1
    window = state["window"]
    assert [m["content"] for m in window if m["role"] == "assistant"] == [
        "Hello Li Ming, I can see that order.",
        "好的。",
        "它明天到。",
    ]
    assert window[0]["timestamp"] == "2024-08-15T09:00:00+08:00"
    assert window[1]["timestamp"] == "2024-08-15T09:00:05+08:00"
    # A recorded reply without a time takes its user message's time.
    assert window[3]["timestamp"] == "2024-08-15T09:01:00+08:00"
    assert state["slots"]["name"]["value"] == "Li Ming"
    assert state["slots"]["order_id"]["value"] == "20240815CN001"


@pytest.mark.slow
def test_replay_then_state_from_the_command_line(tmp_path: Path) -> None:
    transcript = tmp_path / "conversation.json"
    transcript.write_text(json.dumps(TRANSCRIPT, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "STEADYCHAT_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "api.cli"]
    done = subprocess.run(
        [*cli, "replay", str(transcript), "--thread", "t1", "--model", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 3 turns into thread t1" in done.stdout
    assert "3/3" in done.stderr  # the progress bar reached the end
    shown = subprocess.run(
        [*cli, "state", "t1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["info"]["turns"] == 3
    assert state["slots"]["language"]["value"]
    assert len(state["window"]) == 6
    missing = subprocess.run(
        [*cli, "state", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert missing.returncode == 1 and "no thread" in missing.stderr


def test_replay_refuses_what_the_service_would_and_says_why(
    tmp_path: Path, tiny_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # These used to end the command with a traceback.
    with pytest.raises(ValueError, match="item 1: the message is empty"):
        parse_transcript(["hi", "   "])
    with pytest.raises(ValueError, match="item 0: the message is empty"):
        parse_transcript([{"role": "user", "content": ""}])
    transcript = tmp_path / "conversation.json"
    transcript.write_text(json.dumps(["hello"]), encoding="utf-8")
    settings = tiny_settings.model_copy(update={"embedder": "hash", "data_dir": tmp_path})
    assert run_replay(settings, transcript, " \t ") == 1
    assert "thread id" in capsys.readouterr().err
