"""A deployment on loopback: PostgreSQL, a Chroma server and several API processes.

Used by the load benchmark and the multi-process tests. Every server listens on 127.0.0.1 on
a free port, keeps its files in a folder given by the caller and is stopped at exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["ApiProcess", "ChromaServer", "free_port", "postgres_server", "start_api"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(check: str, alive: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if alive.poll() is not None:
            raise RuntimeError(f"{check} exited early:\n{log.read_text(errors='replace')[-12000:]}")
        try:
            if httpx.get(check, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{check} not ready in time:\n{log.read_text(errors='replace')}")
        time.sleep(0.25)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session together with what it started.

    A profiler in front of a worker (heaptrack is a shell script) leaves the worker as its
    child: terminating the profiler's pid alone would leave the worker running.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and _group_alive(process):
            time.sleep(0.1)
        if not _group_alive(process):
            return


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _worker_pid(pid: int) -> int:
    """The first Python process among ``pid`` and its descendants (``pid`` if there is none)."""
    queue = [pid]
    while queue:
        current = queue.pop(0)
        try:
            if Path(f"/proc/{current}/comm").read_text().startswith("python"):
                return current
            queue += [
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
        except (OSError, ValueError):
            continue
    return pid


@dataclass
class ChromaServer:
    """A ``chroma run`` process on loopback over ``path``."""

    path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL (``STEADYCHAT_CHROMA_URL``)."""
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self, timeout_s: float = 60.0) -> Iterator[ChromaServer]:
        """Start the server, wait for its heartbeat, stop it at exit."""
        beside = Path(sys.executable).with_name("chroma")
        command = str(beside) if beside.exists() else shutil.which("chroma")
        if command is None:
            raise RuntimeError("the `chroma` command (package chromadb) is not installed")
        self.path.mkdir(parents=True, exist_ok=True)
        log = self.path.parent / f"chroma-{self.port}.log"
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        args = ["run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [command, *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            _wait_until(f"{self.url}/api/v2/heartbeat", self.process, log, timeout_s)
            yield self
        finally:
            _stop(self.process)


@dataclass
class ApiProcess:
    """One ``python -m api.cli serve`` process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The worker's process id (for its resident memory), below any profiler prefix."""
        return _worker_pid(self.process.pid)

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log.read_text(errors="replace")


def start_api(
    name: str,
    folder: Path,
    *,
    env: Mapping[str, str],
    model: str = "tiny",
) -> ApiProcess:
    """Start an API process (not waited for: see ``ApiProcess`` and ``wait_ready``).

    Args:
        name: A label for the process (its log file's name).
        folder: Its data dir (the tiny model is built there).
        env: ``STEADYCHAT_*`` settings on top of this process's environment.
        model: ``--model`` for ``serve``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / f"{name}.log"
    full = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "STEADYCHAT_DATA_DIR": str(folder),
        "STEADYCHAT_API_KEYS": "",
        **env,
    }
    # ``bench.memtrace`` runs the same CLI with tracemalloc snapshots (``bench load --memtrace``).
    launcher = "bench.memtrace" if full.get("STEADYCHAT_MEMTRACE_DIR") else "api.cli"
    command = [sys.executable, "-m", launcher, "serve", "--model", model]
    # A native profiler in front, e.g. "heaptrack -o DIR/api1" (``bench load --process-env``).
    command = shlex.split(full.get("STEADYCHAT_BENCH_COMMAND_PREFIX", "")) + command
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        # Its own session: a profiler in front (heaptrack is a shell script) is stopped with
        # the worker it started.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ApiProcess(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)


def wait_ready(api: ApiProcess, timeout_s: float = 240.0) -> None:
    """Wait until the process answers ``/readyz`` with 200."""
    _wait_until(f"{api.url}/readyz", api.process, api.log, timeout_s)


@contextlib.contextmanager
def api_processes(
    folder: Path,
    count: int,
    *,
    env: Mapping[str, str],
    model: str = "tiny",
    extra: Mapping[int, Mapping[str, str]] | None = None,
) -> Iterator[list[ApiProcess]]:
    """Start ``count`` API processes on the same settings, wait for all, stop them at exit.

    ``extra`` adds settings to some processes by index (an A/B comparison within one run).
    """
    extra = extra or {}
    started = [
        start_api(f"api{i}", folder / f"api{i}", env={**env, **extra.get(i, {})}, model=model)
        for i in range(count)
    ]
    try:
        for api in started:
            wait_ready(api)
        yield started
    finally:
        for api in started:
            _stop_group(api.process)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if on_path := shutil.which("initdb"):
        found.append(str(Path(on_path).parent))
    for folder in found:
        if (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


@contextlib.contextmanager
def postgres_server(folder: Path | None = None) -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback (initdb + pg_ctl); yields its URL.

    As root the server runs as the ``postgres`` account, since PostgreSQL refuses root.
    """
    bindir = _postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="scpg-", dir=None if user else folder))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run(
            args,
            check=True,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
            user=user.pw_uid if user is not None else None,
            group=user.pw_gid if user is not None else None,
        )

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth",
        "trust",
        "--no-sync",
        "--encoding",
        "UTF8",
        "--no-locale",
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off "
        "-c synchronous_commit=off -c max_connections=200"
    )
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-o",
        options,
        "-w",
        "start",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
