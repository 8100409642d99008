"""The LoCoMo benchmark runs on data of LoCoMo's shape and prints ours against the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.locomo import fill_budget, load_conversations, main


def _conversation(folder: Path) -> None:
    sessions = {
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "I adopted a grey kitten called Pixel."},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Lovely! Where did you find her?"},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "At the shelter on Elm Street."},
        ],
        "session_2_date_time": "10:00 am on 3 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "I ran my first marathon in Porto."},
            {"speaker": "Ana", "dia_id": "D2:2", "text": "Congratulations, how long did it take?"},
            {"speaker": "Ben", "dia_id": "D2:3", "text": "Four hours and ten minutes."},
        ],
    }
    qa = [
        {
            "question": "What is the kitten called?",
            "answer": "Pixel",
            "evidence": ["D1:1"],
            "category": 4,
        },
        {
            "question": "Where did Ben run a marathon?",
            "answer": "Porto",
            "evidence": ["D2:1"],
            "category": 4,
        },
        {
            "question": "When did Ana adopt the kitten?",
            "answer": "8 May 2023",
            "evidence": ["D1:1"],
            "category": 2,
        },
        {"question": "Ignored category", "answer": "x", "evidence": [], "category": 5},
    ]
    (folder / "conv-1.json").write_text(
        json.dumps(
            {"conversation": {"speaker_a": "Ana", "speaker_b": "Ben"}, **sessions, "qa": qa}
        ),
        encoding="utf-8",
    )


def test_conversations_load_with_session_dates_and_categories(tmp_path: Path) -> None:
    _conversation(tmp_path)
    [conversation] = load_conversations(tmp_path)
    assert len(conversation.turns) == 6
    assert len(conversation.questions) == 3  # category 5 is left out


def test_budget_takes_turns_in_order_while_they_fit() -> None:
    texts = ["a" * 40, "b" * 400, "c" * 40]  # 10, 100, 10 tokens at len/4
    assert fill_budget([0, 1, 2], texts, 25) == [0, 2]


def test_run_prints_ours_against_every_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _conversation(tmp_path)
    rates = tmp_path / "rates.json"
    code = main(
        [
            "--data",
            str(tmp_path),
            "--embedder",
            "hash",
            "--budgets",
            "20",
            "60",
            "--json",
            str(rates),
        ]
    )
    assert code in (0, None)
    out = capsys.readouterr().out
    for name in ("sliding window", "BM25", "RRF fusion", "ChromaMemory", "ours / RRF fusion"):
        assert name in out
    data = json.loads(rates.read_text())
    assert data  # the rates of every strategy are written for later comparison


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="conv-"):
        load_conversations(tmp_path)
