"""Planted-facts answers: the conversations, the normalised match, the window, the arm's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli import main as cli_main
from bench.planted import planted_conversation
from bench.planted_answers import contains_value, window_prompt


@pytest.mark.parametrize("language", ["en", "zh"])
def test_facts_are_told_once_early_and_asked_with_their_value(language: str) -> None:
    conv = planted_conversation(language, 200)  # type: ignore[arg-type]
    assert len(conv.turns) == 200 and len(conv.facts) == 8
    texts = [user for user, _, _ in conv.turns]
    for fact in conv.facts:
        assert fact.turn <= 120 and texts[fact.turn - 1] == fact.statement
        assert fact.value in fact.statement
        assert sum(fact.value in t for t in texts) == 1  # told once, never repeated
    assert conv.ask_time > conv.turns[-1][2]
    # Deterministic, and the values change with the length.
    assert planted_conversation(language, 200) == conv  # type: ignore[arg-type]
    other = planted_conversation(language, 500)  # type: ignore[arg-type]
    assert [f.value for f in other.facts] != [f.value for f in conv.facts]


def test_a_reply_counts_when_it_says_the_value_whatever_its_case_or_spacing() -> None:
    assert contains_value("Your flight leaves on 14 March.", "14 March")
    assert contains_value("It's 14-march, I think", "14 March")
    assert contains_value("你的经理叫 王丽。", "王丽")
    assert contains_value("ＭＯＣＨＩ!", "Mochi")  # full-width letters
    assert not contains_value("Your flight leaves on 4 March.", "14 March")
    assert not contains_value("anything", "")


def test_the_window_keeps_the_latest_turns_that_fit_the_budget() -> None:
    conv = planted_conversation("en", 50)

    def count(messages: list[object]) -> int:
        return 10 * len(messages)

    prompt = window_prompt(conv, "What is my dog called?", 45, count)
    assert len(prompt) == 3  # one exchange and the question
    assert prompt[0].content == conv.turns[-1][0] and prompt[-1].content == "What is my dog called?"


def test_the_arm_runs_the_product_and_the_window_with_one_model(
    tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planted.json"
    code = cli_main(
        [
            "bench",
            "planted",
            "--model",
            str(tiny_model_path),
            "--embedder",
            "hash",
            "--languages",
            "en",
            "--lengths",
            "60",
            "--facts",
            "2",
            "--context-window",
            "2048",
            "--max-new-tokens",
            "4",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "sliding window" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["rates"]) == {"en-60", "en", "all"}
    assert {"ours", "window", "ours_prompt_has", "window_prompt_has"} <= set(data["rates"]["all"])
    first = data["results"][0]
    assert first["fact_turn"] == 2 and first["turns"] == 60
    # Told at turn 2 of 60: beyond the window's reach at the same tokens, recalled by ours.
    assert first["ours_prompt_has"] and not first["window_prompt_has"]
    assert first["window_tokens"] <= first["ours_tokens"]
    assert out.with_suffix(".png").stat().st_size > 0
