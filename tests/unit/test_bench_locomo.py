"""The LoCoMo benchmark runs on data of LoCoMo's shape and prints ours against the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli import main as cli_main
from bench.locomo import fill_budget, load_conversations, main
from bench.locomo_product import plan_replay


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
            "--arms",
            "store",
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


FILLER = [
    "We spent the whole afternoon talking about the weather, the traffic on the ring road and "
    "how the bakery on the corner changed its opening hours again this month.",
    "My neighbour keeps asking whether I have seen the new series everyone talks about; I have "
    "not, but I promised to watch the first episode with him next weekend.",
    "Work was busy: three meetings, a long review of the quarterly numbers and a printer that "
    "jammed every time somebody tried to print more than two pages.",
    "The garden needs attention, the hedge has grown over the path and the tomatoes are finally "
    "turning red after all that rain we had in the spring.",
]


def _long_conversation(folder: Path) -> None:
    """Facts in the first session, then enough talk that they leave the verbatim window."""
    sessions: dict[str, object] = {
        "session_1_date_time": "9:00 am on 2 March, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "I adopted a grey kitten called Pixel."},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Lovely! Where did you find her?"},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "At the animal shelter on Elm Street."},
            {"speaker": "Ben", "dia_id": "D1:4", "text": "I ran my first marathon in Porto."},
        ],
    }
    for number in range(2, 6):
        # Sessions open with either speaker, as LoCoMo's do.
        speakers = ("Ben", "Ana") if number % 2 else ("Ana", "Ben")
        sessions[f"session_{number}_date_time"] = f"10:00 am on {number} May, 2023"
        sessions[f"session_{number}"] = [
            {
                "speaker": speakers[i % 2],
                "dia_id": f"D{number}:{i + 1}",
                "text": f"{FILLER[(number + i) % len(FILLER)]} ({number}.{i})",
            }
            for i in range(9)
        ]
    qa = [
        {"question": "What is the kitten called?", "answer": "Pixel", "evidence": ["D1:1"],
         "category": 4},
        {"question": "Where did Ana find the kitten?", "answer": "Elm Street",
         "evidence": ["D1:3"], "category": 1},
        {"question": "Where did Ben run a marathon?", "answer": "Porto", "evidence": ["D1:4"],
         "category": 2},
    ]  # fmt: skip
    (folder / "conv-7.json").write_text(
        json.dumps({"speaker_a": "Ana", "speaker_b": "Ben", **sessions, "qa": qa}),
        encoding="utf-8",
    )


def test_replay_plan_keeps_whole_exchanges_and_who_said_what(tmp_path: Path) -> None:
    _long_conversation(tmp_path)
    [conversation] = load_conversations(tmp_path)
    plan = plan_replay(conversation)
    assert set(plan.where) == {t.dia_id for t in conversation.turns}
    # Whoever opens a session speaks as the user there; every turn keeps its speaker's name.
    assert plan.where["D1:1"] == (1, "user") and plan.where["D1:2"] == (1, "assistant")
    assert plan.steps[0].text == "Ana: I adopted a grey kitten called Pixel."
    assert plan.steps[0].recorded_reply == "Ben: Lovely! Where did you find her?"
    assert plan.where["D3:1"][1] == "user" and plan.texts["D3:1"].startswith("Ben: ")
    # A session of odd length ends with a user turn whose recorded reply is empty.
    assert plan.steps[plan.where["D2:9"][0] - 1].recorded_reply == ""
    assert plan.ask_time.date().isoformat() == "2023-05-06"


def test_the_product_path_scores_the_assembled_prompt(
    tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _long_conversation(tmp_path)
    rates = tmp_path / "rates.json"
    code = cli_main(
        [
            "bench",
            "locomo",
            "--data",
            str(tmp_path),
            "--model",
            str(tiny_model_path),
            "--embedder",
            "hash",
            "--arms",
            "product",
            "--json",
            str(rates),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "product path" in out and "goals" in out
    data = json.loads(rates.read_text())
    group = data["groups"]["all"]
    assert group["conversations"] == ["conv-7"]
    for arm in ("product", "fusion_same_tokens", "product_in_a_row"):
        for key in ("all", "multi-hop", "temporal", "open-domain", "single-hop"):
            assert {"questions", "evidence", "answer", "prompt_tokens"} <= set(group[arm][key])
    product = group["product"]
    assert product["all"]["questions"] == 3
    # The facts of the first session are far outside the window: only recall brings them.
    assert product["all"]["memory_tokens"] > 0
    assert 0 < product["all"]["prompt_tokens"] <= 8192
    # Asked from the replayed state, no question sees another one.
    assert product["all"]["polluting"] == 0
    assert {g["goal"] for g in data["goals"]} >= {
        "evidence in the assembled prompt, all questions",
        "answer string in the assembled prompt, all questions",
    }
    assert rates.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
