"""The bench's worker processes: a profiler put in front is stopped with the worker it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster import _stop_group, _worker_pid

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux /proc")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_a_wrapped_worker_is_found_and_stopped_with_its_wrapper() -> None:
    # A shell that does not exec its command, as heaptrack's launcher script does not.
    wrapper = subprocess.Popen(
        ["bash", "-c", f'"{sys.executable}" -c "import time; time.sleep(300)"; true'],
        start_new_session=True,
    )
    try:
        worker = 0
        for _ in range(100):
            worker = _worker_pid(wrapper.pid)
            if worker != wrapper.pid:
                break
            time.sleep(0.05)
        assert worker != wrapper.pid
        assert "python" in Path(f"/proc/{worker}/comm").read_text()
        _stop_group(wrapper)
        assert wrapper.poll() is not None
        assert not _alive(worker)
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()


def test_an_unwrapped_worker_is_its_own_pid() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    try:
        assert _worker_pid(process.pid) == process.pid
        _stop_group(process)
        assert process.poll() is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
