"""The turn graph's topology, pinned as a Mermaid snapshot (update the file on purpose only)."""

from __future__ import annotations

from pathlib import Path

from graph.builder import Deps, build_graph
from tests.fakes import ScriptedChatModel

SNAPSHOT = Path(__file__).parent / "snapshots" / "turn_graph.mmd"


def test_turn_graph_matches_the_mermaid_snapshot() -> None:
    drawing = build_graph(Deps(chat_model=ScriptedChatModel())).compile().get_graph()
    assert drawing.draw_mermaid().strip() == SNAPSHOT.read_text().strip()


def test_compaction_is_optional_and_retrieval_always_runs() -> None:
    edges = {
        (e.source, e.target, e.conditional)
        for e in build_graph(Deps(chat_model=ScriptedChatModel())).compile().get_graph().edges
    }
    assert ("extract_slots", "compact_summary", True) in edges
    assert ("extract_slots", "retrieve_memory", True) in edges
    assert ("compact_summary", "retrieve_memory", False) in edges
    assert ("generate_reply", "remember", False) in edges
