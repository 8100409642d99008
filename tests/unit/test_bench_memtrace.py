"""``bench load --memtrace``: the report names what grew between two heap snapshots."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from bench.memtrace import report

_HELD: list[bytes] = []


def _grow() -> None:
    _HELD.extend(bytes(1024) + bytes([i % 256]) for i in range(2000))


def test_report_names_the_line_that_grew_after_warmup(tmp_path: Path) -> None:
    tracemalloc.start(5)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "snap-000010.tm"))
        _grow()
        tracemalloc.take_snapshot().dump(str(tmp_path / "snap-000070.tm"))
    finally:
        tracemalloc.stop()
    rows = [
        {
            "t": 10,
            "rss_kib": 1000,
            "traced_kib": 10,
            "gc_objects": 5,
            "top_types": {"bytes": 1},
            "caches": {},
        },
        {
            "t": 70,
            "rss_kib": 3000,
            "traced_kib": 2010,
            "gc_objects": 2005,
            "top_types": {"bytes": 2001},
            "caches": {},
        },
    ]
    (tmp_path / "counters.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = report(tmp_path, warmup_s=5)
    by_line = text.split("## by line")[1].splitlines()[1]
    assert "test_bench_memtrace.py" in by_line and "+2" in by_line  # +2 MiB-ish, first row
    assert "rss 1000 -> 3000 KiB" in text
    assert "bytes +2000" in text
    _HELD.clear()


def test_report_says_when_there_is_too_little_to_compare(tmp_path: Path) -> None:
    assert "fewer than two samples" in report(tmp_path, warmup_s=0)


def test_tensor_bytes_count_each_storage_once() -> None:
    import torch

    from bench.memtrace import _tensor_kib

    weights = torch.zeros(256, 1024)  # 1 MiB of float32
    view = weights[:10]  # shares the storage: no new memory
    other = torch.zeros(128, 1024)  # 0.5 MiB more
    counted = _tensor_kib([weights, view, other, "not a tensor"])
    assert counted == {"tensors": 3, "tensor_kib": 1536}
