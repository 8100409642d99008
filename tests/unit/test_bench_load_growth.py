"""``bench load``: resident-memory growth is read over the load, and the idle tail apart."""

from __future__ import annotations

from bench.load import _growth


def test_growth_counts_the_load_only_and_reports_the_idle_tail() -> None:
    samples = [
        {"t": 0.0, "api0": 500},  # before warm-up: left out
        {"t": 30.0, "api0": 1000},
        {"t": 60.0, "api0": 1100},
        {"t": 90.0, "api0": 1200},  # the load ends here
        {"t": 120.0, "api0": 900},  # idle: memory given back
    ]
    growth = _growth(samples, "api0", warmup_s=30.0, load_end=90.0)
    assert growth["after_warmup_kib"] == 1000
    assert growth["end_kib"] == 1200
    assert growth["growth_pct"] == 20.0
    assert growth["after_idle_kib"] == 900


def test_growth_without_an_idle_tail_has_none() -> None:
    samples = [{"t": 30.0, "api0": 1000}, {"t": 60.0, "api0": 1000}]
    assert _growth(samples, "api0", warmup_s=0.0, load_end=60.0)["after_idle_kib"] is None


def test_median_growth_reads_past_the_swing_between_two_samples() -> None:
    # Flat memory that swings by 8% between samples: the last sample is a peak.
    values = [1000, 1080] * 10 + [1000, 1080]
    samples = [{"t": 10.0 * i, "api0": v} for i, v in enumerate(values)]
    growth = _growth(samples, "api0", warmup_s=0.0, load_end=1000.0)
    assert growth["growth_pct"] == 8.0
    assert growth["median_growth_pct"] == 0.0
