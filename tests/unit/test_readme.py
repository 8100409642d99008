"""The README documents every setting and the test command CI runs."""

from __future__ import annotations

from pathlib import Path

from graph.settings import Settings

ROOT = Path(__file__).parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"STEADYCHAT_{name.upper()}" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    # The two commands come first: the second fenced line is the test command.
    first_block = readme.split("```")[1].splitlines()
    assert first_block[2].startswith("bash scripts/test.sh")
    assert "bash scripts/test.sh" in ci
