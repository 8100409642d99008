"""The steadychat command line: the chat loop, its commands, and the real console script."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from api.cli import main, run_chat
from graph.chat_model import QwenChatModel
from graph.settings import Settings
from nodes.profiles import get_profile
from tests.unit.test_chat_model import forced

REPO = Path(__file__).resolve().parents[2]


class RecordingOut(io.StringIO):
    """A stdout that remembers what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[str] = []

    def flush(self) -> None:
        self.flushes.append(self.getvalue())
        super().flush()


class FakeConversation:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.resets = 0
        self.profile = "general"

    def stream(self, text: str) -> Iterator[str]:
        self.sent.append(text)
        if text == "too long":
            raise ValueError("the prompt has 9000 tokens")
        yield from ["Hel", "lo", " there"]

    def reset(self) -> None:
        self.resets += 1

    def set_profile(self, name: str) -> None:
        if name not in {"general", "precise"}:
            raise ValueError(f"unknown profile {name!r}")
        self.profile = name


class LocalConversation:
    """A conversation kept in memory and sent whole to the chat model each turn."""

    def __init__(self, model: QwenChatModel, *, profile: str = "general") -> None:
        get_profile(profile)
        self._model = model
        self._profile = profile
        self._messages: list[BaseMessage] = []

    def set_profile(self, name: str) -> None:
        get_profile(name)
        self._profile = name

    def reset(self) -> None:
        self._messages.clear()

    def stream(self, text: str) -> Iterator[str]:
        """Stream the reply to ``text``; the exchange is kept only if the reply completes."""
        messages = [*self._messages, HumanMessage(text)]
        parts: list[str] = []
        for chunk in self._model.stream(messages, profile=self._profile):
            piece = str(chunk.content)
            if piece:
                parts.append(piece)
                yield piece
        self._messages.extend([messages[-1], AIMessage("".join(parts))])


def _chat(lines: str) -> tuple[int, FakeConversation, RecordingOut, str]:
    conversation = FakeConversation()
    out, err = RecordingOut(), io.StringIO()
    code = run_chat(conversation, stdin=io.StringIO(lines), stdout=out, stderr=err)
    return code, conversation, out, err.getvalue()


def test_replies_are_printed_piece_by_piece() -> None:
    code, conversation, out, _ = _chat("hello\n")
    assert code == 0
    assert conversation.sent == ["hello"]
    assert out.getvalue() == "assistant> Hello there\n"
    assert "assistant> Hel" in out.flushes
    assert "assistant> Hello" in out.flushes


@pytest.mark.parametrize("word", ["exit", "quit", "退出", "EXIT"])
def test_exit_words_end_with_code_zero(word: str) -> None:
    code, conversation, _, _ = _chat(f"hi\n{word}\nnever sent\n")
    assert code == 0
    assert conversation.sent == ["hi"]


def test_reset_profile_and_errors_keep_the_loop_going() -> None:
    code, conversation, _, err = _chat(
        "reset\n/profile precise\n/profile chatty\n\ntoo long\nstill here\n"
    )
    assert code == 0
    assert conversation.resets == 1
    assert conversation.profile == "precise"
    assert "unknown profile 'chatty'" in err
    assert "error: the prompt has 9000 tokens" in err
    assert conversation.sent == ["too long", "still here"]


def test_local_conversation_remembers_and_resets(tiny_chat_model: QwenChatModel) -> None:
    conversation = LocalConversation(tiny_chat_model, profile="general")
    with forced(tiny_chat_model, "first answer"):
        assert "".join(conversation.stream("one")) == "first answer"
    with forced(tiny_chat_model, "second answer") as script:
        pieces = list(conversation.stream("two"))
    assert "".join(pieces) == "second answer"
    assert len(pieces) > 1
    history = tiny_chat_model.get_num_tokens_from_messages(
        [HumanMessage("one"), AIMessage("first answer"), HumanMessage("two")]
    )
    assert len(script.prompt_ids) == history
    conversation.reset()
    with forced(tiny_chat_model, "fresh") as script:
        "".join(conversation.stream("three"))
    assert len(script.prompt_ids) == tiny_chat_model.get_num_tokens_from_messages(
        [HumanMessage("three")]
    )
    with pytest.raises(ValueError, match="unknown profile"):
        conversation.set_profile("chatty")


def test_build_tiny_model_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-tiny-model", str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "chat_template.jinja").is_file()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    assert main(["build-tiny-model", str(tmp_path / "junk")]) == 1
    assert "not a complete model folder" in capsys.readouterr().err


def test_bad_profile_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--model", "tiny", "--profile", "chatty"]) == 2
    assert "unknown profile" in capsys.readouterr().err


def test_help_does_not_import_the_model_stack() -> None:
    code = (
        "import sys, api.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core') if m in sys.modules]\n"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _steadychat() -> list[str]:
    script = Path(sys.executable).parent / "steadychat"
    if script.exists():
        return [str(script)]
    found = shutil.which("steadychat")
    return [found] if found else [sys.executable, "-m", "api.cli"]


@pytest.mark.slow
def test_piped_chat_with_the_tiny_model(tiny_settings: Settings) -> None:
    env = {**os.environ, "STEADYCHAT_DATA_DIR": str(tiny_settings.data_dir)}
    result = subprocess.run(
        [*_steadychat(), "chat", "--model", "tiny", "--max-new-tokens", "12"],
        input="hello\n你好\nexit\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    replies = result.stdout.split("assistant> ")[1:]
    assert len(replies) == 2
    assert all(reply.strip("\n") for reply in replies[:1]), result.stdout
    assert "Traceback" not in result.stderr


def test_ctrl_c_mid_reply_cancels_the_turn_and_chat_goes_on(tiny_settings: Settings) -> None:
    # Ctrl-C lands while the terminal waits for the next token: the step still runs on the
    # service's loop. Closing the stream then used to crash the CLI ("aclose(): asynchronous
    # generator is already running") and leave the turn running.
    import asyncio

    from api.cli import ServiceConversation

    settings = tiny_settings.model_copy(
        update={"embedder": "hash", "max_new_tokens": 2000, "default_profile": "creative"}
    )
    conversation = ServiceConversation(settings, thread_id="cli-ctrl-c")
    real_call = conversation._call
    calls = 0

    def interrupted(coro: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # waiting for the second token of the first reply
            asyncio.run_coroutine_threadsafe(coro, conversation._loop)
            raise KeyboardInterrupt
        return real_call(coro)

    conversation._call = interrupted  # type: ignore[method-assign]
    out, err = RecordingOut(), io.StringIO()
    try:
        code = run_chat(
            conversation,
            stdin=io.StringIO("tell me a long story\nsecond message\n"),
            stdout=out,
            stderr=err,
        )
        view = real_call(conversation._service.get_thread("cli-ctrl-c"))
    finally:
        conversation.close()
    assert code == 0
    assert "(interrupted)" in err.getvalue()
    assert out.getvalue().count("assistant> ") == 2
    assert [m.content for m in view.window if m.role == "user"] == ["second message"]
