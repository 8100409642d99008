"""Shared fixtures: an isolated offline environment, the tiny model and a chat model over it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pg_fixtures import postgres_db, postgres_dsn  # noqa: F401  (shared fixtures)

if TYPE_CHECKING:
    from graph.chat_model import QwenChatModel
    from graph.settings import Settings

# Libraries read these when they are imported, before any fixture runs.
_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "1",
}
os.environ.update(_OFFLINE)


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the test models are tiny, so more threads only add contention."""
    import torch

    torch.set_num_threads(1)


TINY_MAX_NEW_TOKENS = 24
"""Default reply length of ``tiny_chat_model``; calls may pass ``max_new_tokens`` to change it."""


@pytest.fixture(autouse=True)
def isolated_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Offline, no ``STEADYCHAT_*`` from the shell, and a data dir under ``tmp_path``."""
    for name in list(os.environ):
        if name.startswith("STEADYCHAT_"):
            monkeypatch.delenv(name)
    for name, value in _OFFLINE.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "steadychat-data"
    monkeypatch.setenv("STEADYCHAT_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny random-weight Qwen3 model, built once per test session."""
    from graph.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_chat_model(tiny_model_path: Path) -> Iterator[QwenChatModel]:
    """A ``QwenChatModel`` over the tiny model (shared by the session: do not mutate it).

    Replies are random text, ``TINY_MAX_NEW_TOKENS`` tokens at most unless a call passes
    ``max_new_tokens``; ``model_name`` is ``"tiny"``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graph.chat_model import QwenChatModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    yield QwenChatModel.from_model(
        model, tokenizer, model_id="tiny", max_tokens=TINY_MAX_NEW_TOKENS
    )


@pytest.fixture
def tiny_settings(tiny_model_path: Path, isolated_data_dir: Path) -> Settings:
    """``Settings(model="tiny")`` whose data dir already holds the session's tiny model."""
    from graph.settings import Settings

    settings = Settings(model="tiny", data_dir=isolated_data_dir, checkpointer_url="memory")
    target = settings.tiny_model_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(tiny_model_path, target_is_directory=True)
    return settings
