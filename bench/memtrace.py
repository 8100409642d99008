"""Where a worker's memory goes: tracemalloc snapshots of an API process over a load run.

``steadychat bench load --memtrace`` starts each API process through this module instead of
``python -m api.cli`` directly. Once the service answers ``/readyz``, tracemalloc starts and a
daemon thread writes, every ``STEADYCHAT_MEMTRACE_EVERY`` seconds, a snapshot of the Python
heap (``snap-<seconds>.tm``) and a line of counters (``counters.jsonl``: resident memory,
traced bytes, live objects, the largest object counts by type and the sizes of the
service's bounded caches) into ``STEADYCHAT_MEMTRACE_DIR/<name of its data dir>``.
``report`` then compares the first snapshot after warm-up with the last one: what grew, by
line and by call stack.

Python allocations are what tracemalloc sees; growth of resident memory without growth of
traced bytes points at native memory (the allocator's arenas, torch, Chroma's Rust client).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["report"]


def _status() -> dict[str, int]:
    """The numeric fields of ``/proc/self/status`` (sizes in KiB), read once per sample."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if words and words[0].isdigit():
            fields[key] = int(words[0])
    return fields


def _rss_parts_kib(status: dict[str, int]) -> dict[str, int]:
    """Resident memory by kind: anonymous (heaps, stacks), file-backed (mapped libraries and
    files, which the kernel can drop and read again) and shared."""
    return {
        key.lower()[3:] + "_kib": status[key]
        for key in ("RssAnon", "RssFile", "RssShmem")
        if key in status
    }


def _tensor_kib(objects: list[Any]) -> dict[str, int]:
    """Bytes of the torch tensors Python holds, each storage counted once (native memory
    tracemalloc does not see), and how many tensors hold them."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    storages: dict[int, int] = {}
    tensors = 0
    for obj in objects:
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
                continue
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            tensors += 1
        except (RuntimeError, ReferenceError, NotImplementedError):
            continue
    return {"tensors": tensors, "tensor_kib": sum(storages.values()) // 1024}


def _cache_sizes() -> dict[str, int]:
    """Entries held by the service's bounded caches, where they are already imported."""
    sizes: dict[str, int] = {}
    for module_name, names in (
        ("store.lexical", ("tokenize_doc",)),
        ("nodes.text", ("stem",)),
    ):
        module = sys.modules.get(module_name)
        for name in names:
            info = getattr(getattr(module, name, None), "cache_info", None)
            if info is not None:
                sizes[f"{module_name}.{name}"] = info().currsize
    return sizes


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Any:
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2


def _malloc_kib() -> dict[str, int]:
    """glibc's own account: bytes in use, free inside its arenas, and in mmapped blocks."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return {}
    info = mallinfo2()
    return {
        "in_use_kib": info.uordblks // 1024,
        "free_in_arenas_kib": info.fordblks // 1024,
        "mmapped_kib": info.hblkhd // 1024,
    }


def _counters(started: float) -> dict[str, Any]:
    objects = gc.get_objects()
    by_type: Counter[str] = Counter(type(o).__name__ for o in objects)
    current, peak = tracemalloc.get_traced_memory()
    status = _status()
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_kib": status.get("VmRSS", 0),
        "rss_parts": _rss_parts_kib(status),
        "malloc": _malloc_kib(),
        "native_threads": status.get("Threads", 0),
        "python_threads": threading.active_count(),
        **_tensor_kib(objects),
        "traced_kib": current // 1024,
        "traced_peak_kib": peak // 1024,
        "gc_objects": sum(by_type.values()),
        "top_types": dict(by_type.most_common(25)),
        "caches": _cache_sizes(),
    }


def _wait_ready(port: str) -> None:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)


def _sampler(folder: Path, every: float, port: str, frames: int) -> None:
    # Tracing starts once the service is ready: loading the model under tracemalloc takes
    # minutes, and what a soak looks for is what accumulates after start-up.
    _wait_ready(port)
    if frames > 0:  # 0: counters only, at full speed
        tracemalloc.start(frames)
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        time.sleep(every)
        row = _counters(started)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(folder / f"snap-{int(row['t']):06d}.tm"))
        with (folder / "counters.jsonl").open("a") as out:
            out.write(json.dumps(row) + "\n")


def report(folder: Path, warmup_s: float, top: int = 30) -> str:
    """What grew between the first snapshot after ``warmup_s`` and the last one, as text."""
    counters = folder / "counters.jsonl"
    rows = (
        [json.loads(line) for line in counters.read_text().splitlines()]
        if counters.exists()
        else []
    )
    kept = [r for r in rows if r["t"] >= warmup_s]
    if len(kept) < 2:
        return f"{folder}: fewer than two samples after warm-up\n"
    lines = [f"# {folder.name}: {kept[0]['t']} s -> {kept[-1]['t']} s"]
    a, b = kept[0], kept[-1]
    lines.append(
        f"rss {a['rss_kib']} -> {b['rss_kib']} KiB; traced {a['traced_kib']} -> "
        f"{b['traced_kib']} KiB; objects {a['gc_objects']} -> {b['gc_objects']}"
    )
    lines.append(f"rss parts: {a.get('rss_parts')} -> {b.get('rss_parts')}")
    lines.append(f"malloc: {a.get('malloc')} -> {b.get('malloc')}")
    lines.append(
        f"threads (native/python): {a.get('native_threads')}/{a.get('python_threads')} -> "
        f"{b.get('native_threads')}/{b.get('python_threads')}; torch tensors "
        f"{a.get('tensors')} ({a.get('tensor_kib')} KiB) -> {b.get('tensors')} "
        f"({b.get('tensor_kib')} KiB)"
    )
    grown = {
        k: b["top_types"].get(k, 0) - a["top_types"].get(k, 0)
        for k in set(a["top_types"]) | set(b["top_types"])
    }
    lines.append(
        "object counts grown: "
        + ", ".join(f"{k} {v:+d}" for k, v in sorted(grown.items(), key=lambda kv: -kv[1])[:12])
    )
    lines.append(f"caches: {a['caches']} -> {b['caches']}")
    snaps = sorted(folder.glob("snap-*.tm"))
    after = [p for p in snaps if int(p.stem.split("-")[1]) >= warmup_s]
    if len(after) < 2:
        return "\n".join(lines) + "\n(no heap snapshots to compare)\n"
    older = tracemalloc.Snapshot.load(str(after[0]))
    newer = tracemalloc.Snapshot.load(str(after[-1]))
    lines.append(f"snapshots: {after[0].name} -> {after[-1].name}")
    lines.append("\n## by line")
    for stat in newer.compare_to(older, "lineno")[:top]:
        lines.append(str(stat))
    lines.append("\n## by call stack (largest growth)")
    for stat in newer.compare_to(older, "traceback")[: max(5, top // 3)]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
        lines.extend("    " + line for line in stat.traceback.format(limit=12))
    return "\n".join(lines) + "\n"


def _port(argv: list[str]) -> str:
    return argv[argv.index("--port") + 1] if "--port" in argv else "8000"


def main() -> None:
    """Trace allocations, then run ``python -m api.cli`` with the remaining arguments."""
    frames = int(os.environ.get("STEADYCHAT_MEMTRACE_FRAMES", "12"))
    # One folder per process, named as its data dir (api0, api1, ...).
    folder = (
        Path(os.environ["STEADYCHAT_MEMTRACE_DIR"])
        / Path(os.environ.get("STEADYCHAT_DATA_DIR", "api")).name
    )
    every = float(os.environ.get("STEADYCHAT_MEMTRACE_EVERY", "60"))
    threading.Thread(
        target=_sampler, args=(folder, every, _port(sys.argv), frames), daemon=True
    ).start()
    sys.argv = ["api.cli", *sys.argv[1:]]
    runpy.run_module("api.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
