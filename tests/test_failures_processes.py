"""Cleanup under real signals: Ctrl-C runs run_if="always" tasks; a second Ctrl-C skips them."""

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

SERVICE = """
    import time
    from pathlib import Path
    from taskrun import Outcome, task

    @task(cache=False)
    def service() -> str:
        Path("service.started").touch()
        time.sleep(120)
        Path("service.finished").touch()
        return "up"

    @task(deps=[service], run_if="always", cache=False)
    def stop(service: Outcome[str]) -> str:
        Path("stop.started").write_text(service.state)
        if Path("stop.hang").exists():
            time.sleep(120)
        Path("stop.finished").touch()
        return "stopped"
"""


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_ctrl_c_runs_always_tasks_then_exits_130(tmp_path: Path, executor: str) -> None:
    """Ctrl-C cancels the running task, runs the cleanup with its Outcome, exits 130."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(SERVICE))
    proc = start(tmp_path, "run", "stop", "--json", "--executor", executor)
    wait_for(tmp_path / "service.started")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert (tmp_path / "stop.started").read_text() == "cancelled"
    assert (tmp_path / "stop.finished").exists()
    assert not (tmp_path / "service.finished").exists()
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [(e["event"], e.get("task")) for e in events]
    assert ("cancelled", "service") in kinds and ("ran", "stop") in kinds
    assert kinds.index(("interrupted", None)) < kinds.index(("ran", "stop"))
    assert ("ran", "service") not in kinds


def test_second_ctrl_c_skips_the_cleanup(tmp_path: Path) -> None:
    """A second Ctrl-C stops the cleanup task too, and the run still exits 130."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(SERVICE))
    (tmp_path / "stop.hang").touch()
    proc = start(tmp_path, "run", "stop", "--json", "--executor", "process")
    wait_for(tmp_path / "service.started")
    proc.send_signal(signal.SIGINT)
    wait_for(tmp_path / "stop.started")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert not (tmp_path / "stop.finished").exists()
    events = [json.loads(line) for line in out.splitlines()]
    cancelled = {e["task"]: e for e in events if e["event"] == "cancelled"}
    assert set(cancelled) == {"service", "stop"}
    assert "again" in cancelled["stop"]["reason"]
