"""Every ``steadychat`` command the README documents runs as written, the way a clone runs it.

The commands run in subprocesses through the CLI with the ``tests`` package made unimportable,
as for the installed console script (which has no ``tests``). Commands covered elsewhere:
``steadychat serve --model tiny`` (tests/e2e/test_serve.py), ``steadychat serve --model
smollm2`` (tests/e2e/test_smollm2.py), ``langgraph dev`` (tests/e2e/test_studio.py),
``bash scripts/setup.sh`` and ``bash scripts/test.sh`` (CI runs them: .ci/run). The LoCoMo
benchmark runs one conversation at the store level here; its full run takes tens of minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import ChromaServer
from bench.locomo import DEFAULT_DATA as LOCOMO

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
# As the console script: `main` of api.cli, and no tests package to lean on.
_CLI = "import sys; sys.modules['tests'] = None; from api.cli import main; sys.exit(main())"

COVERED_HERE = {
    "chat", "serve", "replay", "state", "bench", "build-tiny-model", "sweep", "scrub", "migrate",
}  # fmt: skip


def steadychat(
    *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``steadychat ARGS`` with the repository on the path and the tests package hidden."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def test_the_readme_names_no_command_this_file_does_not_run() -> None:
    readme = (ROOT / "README.md").read_text() + (ROOT / "bench" / "README.md").read_text()
    named = set(re.findall(r"`steadychat ([a-z-]+)", readme))
    assert named, "the README documents no steadychat command"
    assert named <= COVERED_HERE, named - COVERED_HERE


def test_documented_commands_run_from_a_clone(tmp_path: Path, isolated_data_dir: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()

    # serve / chat without --model offline: one line naming the offline models, no traceback.
    for command in (["serve"], ["chat"]):
        done = steadychat(*command, cwd=work)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert "--model smollm2" in lines[0] and "--model tiny" in lines[0]

    # chat: piped input, /help, a turn, exit.
    done = steadychat(
        "chat", "--model", "tiny", "--profile", "precise", "--thread", "readme",
        cwd=work, stdin="/help\nHello, I am Ada.\n/profile creative\nexit\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "/profile NAME" in done.stderr and "(profile: creative)" in done.stderr
    assert "assistant> " in done.stdout

    # replay FILE --thread ID, then state ID (which loads no model: an unknown one is fine).
    transcript = tmp_path / "turns.json"
    transcript.write_text(json.dumps(["Hi, my name is Ada Lovelace.", "My order is #A1001."]))
    done = steadychat("replay", str(transcript), "--thread", "t1", "--model", "tiny", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "replayed 2 turns" in done.stdout
    done = steadychat("state", "t1", cwd=work, env={"STEADYCHAT_MODEL": "no/such-model"})
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["slots"]["name"]["value"] == "Ada Lovelace"
    done = steadychat("state", "nope", cwd=work)
    assert done.returncode == 1 and "no thread 'nope'" in done.stderr

    # sweep [--days N]: t1 is not idle, so it stays; scrub (server stopped) keeps it too.
    done = steadychat("sweep", "--days", "30", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "deleted 0 thread(s)" in done.stdout + done.stderr
    done = steadychat("scrub", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "scrubbed" in done.stdout + done.stderr
    done = steadychat("state", "t1", cwd=work)
    assert done.returncode == 0 and json.loads(done.stdout)["slots"]["name"]["value"]

    # build-tiny-model PATH
    done = steadychat("build-tiny-model", str(tmp_path / "tiny"), cwd=work)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tiny" / "config.json").is_file()

    # bench long-conversation (short), writing its JSON and plot.
    out = tmp_path / "long.json"
    done = steadychat("bench", "long-conversation", "--turns", "4", "--json", str(out), cwd=work)
    assert done.returncode == 0, done.stderr
    assert "prompt_tokens" in done.stdout
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 0


@pytest.mark.postgres
def test_migrate_moves_a_data_dir_to_postgres_and_a_chroma_server(
    tmp_path: Path, isolated_data_dir: Path, postgres_db: str
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    transcript = tmp_path / "turns.json"
    transcript.write_text(json.dumps(["Hi, my name is Ada Lovelace.", "My order is #A1001."]))
    done = steadychat("replay", str(transcript), "--thread", "t1", "--model", "tiny", cwd=work)
    assert done.returncode == 0, done.stderr
    data = str(isolated_data_dir)
    with ChromaServer(tmp_path / "chroma").running() as chroma:
        target = ["--to-checkpointer-url", postgres_db, "--to-chroma-url", chroma.url]
        done = steadychat("migrate", "--from", data, "--dry-run", cwd=work)
        assert done.returncode == 0, done.stderr
        assert "threads: 1 (1 live, 0 deleted)" in done.stdout
        assert "dry run: nothing was written" in done.stdout
        done = steadychat("migrate", "--from", data, *target, cwd=work)
        assert done.returncode == 0, done.stderr
        assert "copied: 1 thread(s)" in done.stdout and "verified" in done.stdout
        # The thread now reads from the target.
        served_there = {
            "STEADYCHAT_CHECKPOINTER_URL": postgres_db,
            "STEADYCHAT_CHROMA_URL": chroma.url,
            "STEADYCHAT_DATA_DIR": str(tmp_path / "elsewhere"),
        }
        done = steadychat("state", "t1", cwd=work, env=served_there)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["slots"]["name"]["value"] == "Ada Lovelace"


def test_bench_locomo_finds_the_data_of_a_clone_or_asks_for_it(tmp_path: Path) -> None:
    # Outside a clone and without --data: a plain message naming the option.
    done = steadychat("bench", "locomo", "--data", str(tmp_path / "none"), cwd=tmp_path)
    assert done.returncode != 0
    assert "steadychat bench locomo --data" in done.stderr
    assert "Traceback" not in done.stderr
    if LOCOMO is None:
        pytest.skip("LoCoMo data (shared/benchmarks/locomo) is not beside this clone")
    out = tmp_path / "locomo.json"
    done = steadychat(
        "bench", "locomo", "--conversations", "1", "--arms", "store", "--embedder", "hash",
        "--budgets", "1000", "--json", str(out),
        cwd=ROOT, env={"STEADYCHAT_LOCOMO_DIR": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ChromaMemory" in done.stdout
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 0
