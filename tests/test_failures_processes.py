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


STOPPED = """
    import threading
    import time
    from pathlib import Path
    from taskrun import task

    def wait_forever() -> None:
        Path("stuck.started").touch()
        threading.Event().wait()

    @task(timeout=0.5, cache=False)
    def stuck() -> None:
        print("waiting")
        wait_forever()

    @task(cache=False)
    def slow() -> None:
        print("waiting")
        wait_forever()

    @task(cache=False)
    def bad() -> None:
        while not Path("stuck.started").exists():
            time.sleep(0.02)
        raise RuntimeError("boom")
"""

# What faulthandler writes: in a task's output it reads as a crash inside taskrun.
DUMP = "Stack (most recent call first)"


def test_a_timed_out_task_shows_where_it_was_not_a_stack_dump(tmp_path: Path) -> None:
    """A process worker stopped at a timeout: its output has no stack dump of taskrun's
    frames; the failure shows the task's own frames, under a heading that says what they are."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(STOPPED))
    proc = start(tmp_path, "run", "stuck", "--executor", "process")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert DUMP not in out + err and "taskrun/executors" not in out + err, out + err
    assert "timed out stuck: timed out after 0.5s" in out
    assert "stuck | waiting" in out
    tasks_py = tmp_path / "tasks.py"
    where = textwrap.indent(
        textwrap.dedent(f"""\
            Where it was when it timed out (most recent call last):
              File "{tasks_py}", line 14, in stuck
                wait_forever()
              File "{tasks_py}", line 9, in wait_forever
                threading.Event().wait()
              File """),
        "  ",
    )
    assert where in out, out  # the frames of threading.py follow: the task called them


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_cancelled_task_shows_no_stack(tmp_path: Path, executor: str) -> None:
    """A task cancelled by fail-fast is reported cancelled, with its output and no stack."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(STOPPED))
    proc = start(tmp_path, "run", "slow", "bad", "-j", "2", "--executor", executor)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "cancelled slow: stopped after 'bad' failed" in out, out
    assert "slow | waiting" in out
    assert DUMP not in out + err and "wait_forever" not in out + err, out + err
