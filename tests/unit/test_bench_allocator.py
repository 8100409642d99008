"""``steadychat bench allocator``: both thresholds run on the same turns and are compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.allocator import HeapTrimmer
from bench.allocator import run


@pytest.mark.skipif(not HeapTrimmer(1).supported, reason="mallopt thresholds are glibc's")
def test_the_benchmark_times_both_arms_on_the_same_prompts(tmp_path: Path) -> None:
    out = tmp_path / "allocator.json"
    arguments = ["--rounds", "2", "--prompt-tokens", "120", "--tokens", "2"]
    results = run([*arguments, "--models", str(tmp_path), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert set(results["median_round_s"]) == {"risen", "fixed"}
    assert all(s > 0 for s in results["median_round_s"].values())
    assert results["prompt_tokens"][0] >= 120  # the long prompt is as long as asked
    assert results["threshold_kib"] == 4096  # the service's default
    ratio = results["median_round_s"]["fixed"] / results["median_round_s"]["risen"]
    assert results["ratio_fixed_over_risen"] == pytest.approx(ratio)
