"""Load and soak: N clients over M threads against API processes on PostgreSQL + Chroma server.

Starts a throwaway PostgreSQL and a ``chroma run`` on loopback (or uses the URLs given), then
API processes (``python -m api.cli serve``) on them, and lets clients post turns for a fixed
time, streamed and not, each client to the processes in turn. Every thread's messages carry
a canary word of that thread; a reply or context account of one thread that names another
thread's canary is a cross-thread leak. It counts 5xx answers, streams that end without
their closing event, "database is locked" and Chroma errors in the processes' logs, the time
to first token (p50/p95) and samples the resident memory of each process, so that a soak
shows whether memory levels off after warm-up.

Writes ``load.json`` (stable keys) and ``load_rss.png`` (RSS over time) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import ApiProcess, ChromaServer, api_processes, postgres_server

__all__ = ["LoadReport", "main", "rss_kib"]


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class LoadReport:
    """What the clients saw."""

    requests: int = 0
    ok: int = 0
    status: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    transport_errors: int = 0
    streams: int = 0
    streams_without_end: int = 0
    stream_error_events: int = 0
    leaks: int = 0
    ttft_s: list[float] = field(default_factory=list)
    reply_s: list[float] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.requests += 1
        self.status[str(status)] = self.status.get(str(status), 0) + 1
        if status >= 500:
            self.server_errors += 1
        elif status == 200:
            self.ok += 1


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Sampler(threading.Thread):
    """Samples the RSS of each process every ``every`` seconds."""

    def __init__(self, apis: list[ApiProcess], every: float) -> None:
        super().__init__(daemon=True)
        self.apis = apis
        self.every = every
        self.start_time = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - self.start_time, 1)}
            for api in self.apis:
                try:
                    row[api.name] = rss_kib(api.pid)
                except OSError:
                    row[api.name] = None
            self.samples.append(row)
            self.stopped.wait(self.every)


async def _client(
    index: int,
    apis: list[ApiProcess],
    threads: list[str],
    canaries: dict[str, str],
    deadline: float,
    stream_ratio: float,
    report: LoadReport,
    seed: int,
) -> None:
    rng = random.Random(seed + index)
    thread = threads[index % len(threads)]
    others = [c for t, c in canaries.items() if t != thread]
    turn = 0
    async with httpx.AsyncClient(timeout=300) as client:
        while time.monotonic() < deadline:
            api = apis[(index + turn) % len(apis)]
            turn += 1
            stream = rng.random() < stream_ratio
            text = (
                f"Remember {canaries[thread]} item {turn} from client {index}: "
                f"{rng.choice(['order', 'ticket', 'meeting', 'invoice'])} {rng.randint(1, 999)}."
            )
            body = {"content": text, "stream": stream}
            started = time.monotonic()
            try:
                if stream:
                    await _stream(client, api, thread, body, started, others, report)
                else:
                    response = await client.post(f"{api.url}/threads/{thread}/messages", json=body)
                    report.count(response.status_code)
                    if response.status_code == 200:
                        report.reply_s.append(time.monotonic() - started)
                        report.ttft_s.append(time.monotonic() - started)
                        report.leaks += any(c in response.text for c in others)
            except httpx.HTTPError:
                report.transport_errors += 1


async def _stream(
    client: httpx.AsyncClient,
    api: ApiProcess,
    thread: str,
    body: dict[str, Any],
    started: float,
    others: list[str],
    report: LoadReport,
) -> None:
    async with client.stream("POST", f"{api.url}/threads/{thread}/messages", json=body) as resp:
        report.count(resp.status_code)
        if resp.status_code != 200:
            await resp.aread()
            return
        report.streams += 1
        first: float | None = None
        events: list[str] = []
        text = []
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
                events.append(name)
                if name == "token" and first is None:
                    first = time.monotonic() - started
            elif line.startswith("data:"):
                text.append(line)
        if first is not None:
            report.ttft_s.append(first)
        report.reply_s.append(time.monotonic() - started)
        if not events or events[-1] not in ("done", "error"):
            report.streams_without_end += 1
        if "error" in events:
            report.stream_error_events += 1
        joined = "\n".join(text)
        report.leaks += any(c in joined for c in others)


_LOG_PATTERNS = {
    "database_is_locked": re.compile(r"database is locked", re.I),
    "chroma_errors": re.compile(r"chroma\w*\.errors|chromadb.*(error|exception)", re.I),
    "tracebacks": re.compile(r"^Traceback", re.M),
}


_GROWTH_WINDOW_S = 60.0


def _growth(
    samples: list[dict[str, Any]], name: str, warmup_s: float, load_end: float
) -> dict[str, Any]:
    series = [(s["t"], s[name]) for s in samples if s.get(name)]
    idle = [v for t, v in series if t > load_end]
    after = [(t, v) for t, v in series if warmup_s <= t <= load_end]
    if len(after) < 2:
        return {"after_warmup_kib": None, "end_kib": None, "growth_pct": None}
    start, end = after[0][1], after[-1][1]
    half = after[len(after) // 2 :]
    # RSS swings by a few percent between two samples (freed memory is handed back every
    # minute by the trimmer), so one sample at each end can read a trough against a peak:
    # the medians of the first and the last minute of the load are the steadier figure.
    first = [v for t, v in after if t < after[0][0] + _GROWTH_WINDOW_S]
    last = [v for t, v in after if t > after[-1][0] - _GROWTH_WINDOW_S]
    first_median, last_median = statistics.median(first), statistics.median(last)
    return {
        "after_warmup_kib": start,
        "end_kib": end,
        "peak_kib": max(v for _, v in after),
        "growth_pct": round(100.0 * (end - start) / start, 2),
        # Growth over the second half alone: near zero once memory has levelled off.
        "second_half_growth_pct": round(100.0 * (half[-1][1] - half[0][1]) / half[0][1], 2),
        "first_minute_median_kib": round(first_median),
        "last_minute_median_kib": round(last_median),
        "median_growth_pct": round(100.0 * (last_median - first_median) / first_median, 2),
        # After --idle-after seconds without requests, against the end of the load.
        "after_idle_kib": idle[-1] if idle else None,
    }


def _plot(
    samples: list[dict[str, Any]], names: list[str], warmup_s: float, load_end: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in names:
        points = [(s["t"], s[name] / 1024) for s in samples if s.get(name)]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.axvline(warmup_s, color="grey", linestyle="--", label="end of warm-up")
    if any(s["t"] > load_end for s in samples):
        ax.axvline(load_end, color="grey", linestyle=":", label="end of load (idle after)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("API processes under load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def _drive(args: argparse.Namespace, apis: list[ApiProcess]) -> dict[str, Any]:
    report = LoadReport()
    async with httpx.AsyncClient(timeout=60) as client:
        threads = []
        for _ in range(args.threads):
            created = await client.post(f"{apis[0].url}/threads", json={"title": "load"})
            created.raise_for_status()
            threads.append(created.json()["thread_id"])
    canaries = {t: f"canary{uuid.uuid4().hex[:10]}" for t in threads}
    sampler = Sampler(apis, args.sample_every)
    sampler.start()
    deadline = time.monotonic() + args.duration
    try:
        await asyncio.gather(
            *(
                _client(i, apis, threads, canaries, deadline, args.stream_ratio, report, args.seed)
                for i in range(args.clients)
            )
        )
        # Idle: no requests, sampling goes on. Memory the load held only while it ran (the
        # worker threads' state, in-flight turns) comes back here; a leak does not.
        load_end = round(time.monotonic() - sampler.start_time, 1)
        await asyncio.sleep(args.idle_after)
    finally:
        sampler.stopped.set()
        sampler.join()
    return await asyncio.to_thread(_summary, args, apis, report, sampler.samples, load_end)


def _summary(
    args: argparse.Namespace,
    apis: list[ApiProcess],
    report: LoadReport,
    samples: list[dict[str, Any]],
    load_end: float,
) -> dict[str, Any]:
    logs = {api.name: api.log_text() for api in apis}
    log_counts = {
        key: sum(len(pattern.findall(text)) for text in logs.values())
        for key, pattern in _LOG_PATTERNS.items()
    }
    names = [api.name for api in apis]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in logs.items():  # kept for reading what the counts above counted
        (out / f"{name}.log").write_text(text)
    _plot(samples, names, args.warmup, load_end, out / "load_rss.png")
    ttft = report.ttft_s
    return {
        "config": {
            "clients": args.clients,
            "threads": args.threads,
            "processes": args.processes,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "idle_after_s": args.idle_after,
            "stream_ratio": args.stream_ratio,
            "model": args.model,
            "embedder": args.embedder,
            "max_new_tokens": args.max_new_tokens,
            "process_env": args.process_env,
        },
        "requests": report.requests,
        "ok": report.ok,
        "status": report.status,
        "server_errors_5xx": report.server_errors,
        "transport_errors": report.transport_errors,
        "streams": report.streams,
        "streams_without_end": report.streams_without_end,
        "stream_error_events": report.stream_error_events,
        "cross_thread_leaks": report.leaks,
        "turns_per_s": round(report.ok / args.duration, 2),
        "ttft_p50_s": _quantile(ttft, 0.5),
        "ttft_p95_s": _quantile(ttft, 0.95),
        "reply_p50_s": statistics.median(report.reply_s) if report.reply_s else None,
        "log": log_counts,
        "load_end_s": load_end,
        "rss": {name: _growth(samples, name, args.warmup, load_end) for name in names},
        "rss_samples": samples,
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (N)")
    parser.add_argument("--threads", type=int, default=4, help="threads they share (M)")
    parser.add_argument("--processes", type=int, default=2, help="API processes")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument(
        "--soak", action="store_true", help="10 minutes of load (sets --duration 600)"
    )
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS counts")
    parser.add_argument(
        "--idle-after",
        type=float,
        default=0.0,
        help="seconds to go on sampling RSS without requests after the load (held vs leaked)",
    )
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--stream-ratio", type=float, default=0.5, help="share of streams")
    parser.add_argument("--model", default="tiny", help="--model of the API processes")
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2", help="their embedder")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="reply length")
    parser.add_argument("--postgres-url", help="an existing PostgreSQL (else one is started)")
    parser.add_argument("--chroma-url", help="an existing Chroma server (else one is started)")
    parser.add_argument(
        "--memtrace",
        action="store_true",
        help="trace each process's Python allocations (slower) and write what grew to --out",
    )
    parser.add_argument(
        "--memtrace-frames",
        type=int,
        default=12,
        help="call-stack depth of --memtrace; 0 samples only the counters, at full speed",
    )
    parser.add_argument(
        "--process-env",
        action="append",
        default=[],
        metavar="INDEX:KEY=VALUE",
        help="a setting for one process only, e.g. 1:STEADYCHAT_ENGINE=serial (A/B in one run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/load", help="folder for JSON and PNG")


def main(argv: list[str] | None = None) -> int:
    """Run the load benchmark and print its JSON summary (RSS samples left out)."""
    parser = argparse.ArgumentParser(prog="steadychat bench load", description=__doc__)
    _arguments(parser)
    args = parser.parse_args(argv)
    if args.soak:
        args.duration = 600.0
    with tempfile.TemporaryDirectory(prefix="steadychat-load-") as tmp:
        folder = Path(tmp)
        with (
            _postgres(args.postgres_url, folder) as dsn,
            _chroma(args.chroma_url, folder) as chroma_url,
        ):
            env = {
                "STEADYCHAT_CHECKPOINTER_URL": dsn,
                "STEADYCHAT_CHROMA_URL": chroma_url,
                "STEADYCHAT_EMBEDDER": args.embedder,
                "STEADYCHAT_MAX_NEW_TOKENS": str(args.max_new_tokens),
                "STEADYCHAT_LOG_LEVEL": "warning",
            }
            if args.memtrace:
                env["STEADYCHAT_MEMTRACE_DIR"] = str(folder / "memtrace")
                env["STEADYCHAT_MEMTRACE_EVERY"] = str(max(args.sample_every, 30.0))
                env["STEADYCHAT_MEMTRACE_FRAMES"] = str(args.memtrace_frames)
            extra = _process_env(args.process_env, args.processes, parser)
            with api_processes(
                folder, args.processes, env=env, model=args.model, extra=extra
            ) as apis:
                result = asyncio.run(_drive(args, apis))
            if args.memtrace:
                _memtrace_reports(folder / "memtrace", Path(args.out), args.warmup)
    out = Path(args.out)
    (out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "rss_samples"}
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


def _process_env(
    items: list[str], processes: int, parser: argparse.ArgumentParser
) -> dict[int, dict[str, str]]:
    extra: dict[int, dict[str, str]] = {}
    for item in items:
        index, _, setting = item.partition(":")
        key, equals, value = setting.partition("=")
        if not index.isdigit() or int(index) >= processes or not key or not equals:
            parser.error(f"--process-env {item!r}: expected INDEX:KEY=VALUE, INDEX < {processes}")
        extra.setdefault(int(index), {})[key] = value
    return extra


def _memtrace_reports(folder: Path, out: Path, warmup_s: float) -> None:
    from bench.memtrace import report

    for traced in sorted(p for p in folder.glob("*") if p.is_dir()):
        text = report(traced, warmup_s)
        (out / f"memtrace_{traced.name}.txt").write_text(text)
        if (traced / "counters.jsonl").exists():
            (out / f"memtrace_{traced.name}.jsonl").write_text(
                (traced / "counters.jsonl").read_text()
            )


def _postgres(url: str | None, folder: Path) -> Any:
    import contextlib

    if url:
        return contextlib.nullcontext(url)
    return postgres_server(folder)


def _chroma(url: str | None, folder: Path) -> Any:
    import contextlib

    if url:
        return contextlib.nullcontext(url)

    @contextlib.contextmanager
    def started() -> Any:
        with ChromaServer(folder / "chroma").running() as server:
            yield server.url

    return started()


if __name__ == "__main__":
    raise SystemExit(main())
