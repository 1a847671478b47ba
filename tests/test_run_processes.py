"""What only real processes show: signals, exit codes, two runs on one cache, hash seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def taskrun(root: Path, *args: str, env: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
    full_env = {**os.environ, **(env or {})}
    full_env.pop(
        "TASKRUN_CACHE_KEY", None
    ) if env is None or "TASKRUN_CACHE_KEY" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def project(tmp_path: Path, source: str) -> Path:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(source))
    return tmp_path


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


SLOW = """
    import time
    from taskrun import task

    @task
    def slow(n: int = 1) -> int:
        with open("runs.log", "a") as fh:
            fh.write("slow\\n")
        open("started", "w").close()
        time.sleep(1.5)
        return n * 2
"""


def test_two_processes_on_one_cache_compute_once(tmp_path: Path) -> None:
    """Two taskrun processes sharing a cache: one computes, the other waits and hits."""
    gated = "while not os.path.exists('release'):\n            time.sleep(0.02)"
    source = SLOW.replace("time.sleep(1.5)", gated).replace("import time", "import os, time")
    root = project(tmp_path, source)
    first = start(root, "run", "slow")
    try:
        wait_for(root / "started")
        second = start(root, "run", "slow")
        assert second.stdout is not None
        waiting = second.stdout.readline()  # the first run holds the task until released
    finally:
        (root / "release").touch()
    _out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    out2 = waiting + out2
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert (root / "runs.log").read_text().split() == ["slow"]
    assert "cached   slow" in out2
    assert "waiting  slow" in out2


def test_sigint_exits_130_and_records_nothing(tmp_path: Path) -> None:
    """Ctrl-C during a task: exit code 130, a clean message, no cache entry."""
    root = project(tmp_path, SLOW.replace("time.sleep(1.5)", "time.sleep(30)"))
    proc = start(root, "run", "slow")
    wait_for(root / "started")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
    assert "Traceback" not in err
    plan = taskrun(root, "run", "--dry-run", "--json")
    events = [json.loads(line) for line in plan.stdout.splitlines()]
    assert [e["action"] for e in events if e["event"] == "planned"] == ["run"]
    assert events[0]["reasons"] == ["no entry"]


SEEDED = """
    from taskrun import task

    @task
    def words(text: str = "b a c a b") -> dict[str, int]:
        counts = {}
        for w in text.split():
            counts[w] = counts.get(w, 0) + 1
        return counts

    @task(deps=[words])
    def distinct(words: dict[str, int], extra: list[str] = ["z", "y", "x"]) -> list[str]:
        with open("runs.log", "a") as fh:
            fh.write("distinct\\n")
        return sorted(set(words) | set(extra))
"""


def test_fingerprints_are_stable_across_hash_seeds(tmp_path: Path) -> None:
    """A second process with another PYTHONHASHSEED hits every task."""
    root = project(tmp_path, SEEDED)
    cold = taskrun(root, "run", env={"PYTHONHASHSEED": "1"})
    assert cold.returncode == 0, cold.stderr
    warm = taskrun(root, "run", env={"PYTHONHASHSEED": "2"})
    assert warm.returncode == 0, warm.stderr
    assert "2 tasks: 2 cached, 0 ran" in warm.stdout
    assert (root / "runs.log").read_text().split() == ["distinct"]


def test_mis_signed_entries_are_recomputed(tmp_path: Path) -> None:
    """Entries signed with another key are never loaded: a warning, a rerun, exit 0."""
    root = project(tmp_path, SEEDED)
    assert taskrun(root, "run", env={"TASKRUN_CACHE_KEY": "one"}).returncode == 0
    other = taskrun(root, "run", env={"TASKRUN_CACHE_KEY": "two"})
    assert other.returncode == 0, other.stderr
    assert "warning" in other.stdout
    assert "2 tasks: 0 cached, 2 ran" in other.stdout
    again = taskrun(root, "run", env={"TASKRUN_CACHE_KEY": "two"})
    assert "2 tasks: 2 cached, 0 ran" in again.stdout


def test_exit_code_1_when_a_task_fails(tmp_path: Path) -> None:
    """A failing task gives exit code 1, its error and traceback at the end."""
    root = project(
        tmp_path,
        """
        from taskrun import task

        def helper(x):
            return 1 / x

        @task
        def divide(x: int = 0) -> float:
            print("about to divide")
            return helper(x)
    """,
    )
    result = taskrun(root, "run")
    assert result.returncode == 1
    assert "failed   divide: ZeroDivisionError: division by zero" in result.stdout
    assert "[divide] about to divide" in result.stdout
    assert "return 1 / x" in result.stdout
    assert "\x1b" not in result.stdout
