"""What Studio reads off the graph: JSON schemas of input, output and context, and the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fakes import ScriptedChatModel
from graph.builder import Deps, compile_graph
from graph.compose import studio_settings
from store.embeddings import load_embedder
from store.vector_memory import ChromaMemory

ROOT = Path(__file__).parents[2]


def test_the_graph_describes_its_input_output_and_context_as_json_schema() -> None:
    memory = ChromaMemory.ephemeral(load_embedder("hash"))
    graph = compile_graph(Deps(chat_model=ScriptedChatModel(), memory=memory), checkpointer=None)
    assert "messages" in graph.get_input_jsonschema()["properties"]
    output = graph.get_output_jsonschema()["properties"]
    assert {"slots", "summary_l1", "pending_questions", "context_account"} <= set(output)
    context = graph.get_context_jsonschema()
    assert context is not None
    knobs = context["properties"]
    assert knobs["profile"]["default"] == "general"
    assert {"top_k", "max_new_tokens", "generation", "window_tokens", "persona"} <= set(knobs)


def test_studio_keeps_runtime_data_outside_the_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STEADYCHAT_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    data_dir = studio_settings().data_dir.resolve()
    assert data_dir == tmp_path / "cache" / "steadychat" / "studio"
    assert ROOT.resolve() not in data_dir.parents


def test_studio_uses_the_data_dir_it_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STEADYCHAT_DATA_DIR", str(tmp_path / "mine"))
    assert studio_settings().data_dir == tmp_path / "mine"
