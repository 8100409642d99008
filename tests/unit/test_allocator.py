"""Freed native memory goes back to the system while the service runs (``api/allocator.py``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from pathlib import Path

import pytest

from api.allocator import HeapTrimmer, malloc_trim


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fragment_the_heap(libc: ctypes.CDLL) -> list[int]:
    """Allocate ~120 MiB in 4 KiB blocks, free 49 of every 50: the arena cannot shrink."""
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(30_000):
        block = libc.malloc(4096)
        ctypes.memset(block, 1, 4096)  # touched: resident
        blocks.append(block)
    kept = blocks[::50]
    for i, block in enumerate(blocks):
        if i % 50:
            libc.free(block)
    return kept


@pytest.mark.skipif(not HeapTrimmer(1).supported, reason="malloc_trim is glibc's")
def test_a_trim_gives_freed_pages_of_a_fragmented_heap_back() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    kept = _fragment_the_heap(libc)
    before = _rss_kib()
    assert malloc_trim()
    after = _rss_kib()
    for block in kept:
        libc.free(block)
    assert before - after > 60 * 1024  # most of the ~115 MiB freed is no longer resident


@pytest.mark.skipif(not HeapTrimmer(1).supported, reason="malloc_trim is glibc's")
def test_the_trimmer_trims_every_interval_until_stopped() -> None:
    trimmer = HeapTrimmer(0.02).start()
    deadline = time.monotonic() + 10
    while trimmer.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    done = trimmer.trims
    assert done >= 3
    time.sleep(0.1)
    assert trimmer.trims == done


def test_the_trimmer_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        HeapTrimmer(0)


_BLOCK_SCRIPT = """
import ctypes, ctypes.util, sys
from api.allocator import set_mmap_threshold
from bench.memtrace import _mallinfo2
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    print(set_mmap_threshold(4 << 20))
libc.free(libc.malloc(16 << 20))  # freeing a large block raises glibc's own threshold
before = _mallinfo2()().hblks
block = libc.malloc(8 << 20)
print(_mallinfo2()().hblks - before)  # 1: the block has pages of its own
"""


def _own_pages(arm: str, env: dict[str, str] | None = None) -> list[str]:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_SCRIPT, arm],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )
    return done.stdout.split()


@pytest.mark.skipif(not HeapTrimmer(1).supported, reason="mallopt thresholds are glibc's")
def test_a_fixed_threshold_keeps_large_blocks_out_of_the_arena() -> None:
    # glibc's own rule: after a 16 MiB block is freed, an 8 MiB block comes from the arena,
    # where a page still holding it cannot go back to the system.
    assert _own_pages("default") == ["0"]
    # Fixed at 4 MiB, it is mapped on its own, and unmapped when freed.
    assert _own_pages("fixed") == ["True", "1"]
    # A deployment that tunes glibc through its environment is left as it is.
    assert _own_pages("fixed", {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)}) == ["False", "0"]


def test_an_impossible_threshold_is_refused() -> None:
    from api.allocator import set_mmap_threshold

    with pytest.raises(ValueError, match="32 MiB"):
        set_mmap_threshold(0)
    with pytest.raises(ValueError, match="32 MiB"):
        set_mmap_threshold(64 << 20)
