"""Prompt assembly within a token budget (the fake counts one token per word)."""

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from nodes.budget import Section, assemble_prompt
from nodes.errors import ContextOverflowError
from tests.fakes import ScriptedChatModel

HEADINGS = {"state": "Known", "summary_l1": "Summary", "memories": "Recalled"}


def _window(turns: int, words: int = 20) -> list:
    out = []
    for t in range(1, turns + 1):
        out.append(HumanMessage(content=" ".join(["u"] * words), additional_kwargs={"turn": t}))
        out.append(AIMessage(content=" ".join(["a"] * words), additional_kwargs={"turn": t}))
    return out


def test_everything_kept_when_it_fits() -> None:
    model = ScriptedChatModel()
    result = assemble_prompt(
        model,
        rules="be good",
        sections=[Section(kind="state", label="state", text="name: Ada", priority=60)],
        headings=HEADINGS,
        window=_window(2),
        user=HumanMessage(content="hello"),
        budget=1000,
    )
    assert result.dropped == []
    assert "name: Ada" in result.messages[0].content
    assert len(result.messages) == 6
    assert result.total == model.get_num_tokens_from_messages(result.messages)


def test_memories_go_before_window_and_state_stays() -> None:
    model = ScriptedChatModel()
    sections = [
        Section(kind="state", label="state", text="name: Ada", priority=60),
        Section(kind="memories", label="memory:t1:user", text=" ".join(["m"] * 50), priority=10),
    ]
    result = assemble_prompt(
        model,
        rules="be good",
        sections=sections,
        headings=HEADINGS,
        window=_window(2),
        user=HumanMessage(content="hello"),
        budget=120,
    )
    assert result.dropped == ["memory:t1:user"]
    assert "name: Ada" in result.messages[0].content
    assert result.total <= 120


def test_oldest_exchange_dropped_whole_when_window_too_long() -> None:
    model = ScriptedChatModel()
    result = assemble_prompt(
        model,
        rules="rules",
        sections=[],
        headings=HEADINGS,
        window=_window(3),
        user=HumanMessage(content="hello"),
        budget=110,
    )
    assert result.dropped[0] == "window:t1"
    kept_turns = [m.additional_kwargs["turn"] for m in result.messages[1:-1]]
    # Pairs are never split: every kept turn appears twice (user and assistant).
    assert all(kept_turns.count(t) == 2 for t in kept_turns)
    assert result.total <= 110


def test_mandatory_parts_over_budget_raise() -> None:
    with pytest.raises(ContextOverflowError, match="over the budget"):
        assemble_prompt(
            ScriptedChatModel(),
            rules="rules",
            sections=[],
            headings=HEADINGS,
            window=[],
            user=HumanMessage(content=" ".join(["word"] * 200)),
            budget=50,
        )
