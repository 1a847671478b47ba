"""Plain output (no terminal): cache hits are counted, everything else is listed.

Each test runs ``taskrun run`` as a real subprocess with stdout piped (not a terminal), on
a project of factory-made tasks, inline at ``-j 1`` so the order of lines is fixed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TASKS = """
from pathlib import Path

from taskrun import File, task


def make(i):
    @task(name=f"leaf{i}")
    def leaf(x: int = 1) -> int:
        if x == 0:
            raise ValueError("x must not be 0")
        return x

    return leaf


LEAVES = [make(i) for i in range(10)]


@task(deps=[LEAVES[3]])
def total(leaf3: int) -> int:
    return leaf3


@task(outputs=["build/out.txt"])
def writer() -> File:
    Path("build").mkdir(exist_ok=True)
    Path("build/out.txt").write_text("hello\\n")
    return File("build/out.txt")
"""


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`taskrun run --executor inline -j 1 ARGS` in ROOT, stdout piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env.pop("CI", None)
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "taskrun", "run", "--executor", "inline", "-j", "1", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def timeless(text: str) -> list[str]:
    return [re.sub(r"\d+\.\d+s", "Ns", line) for line in text.splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The 12-task project, run once (everything cached from now on)."""
    (tmp_path / "tasks.py").write_text(TASKS)
    first = run(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sum(line.startswith("ran      ") for line in first.stdout.splitlines()) == 12
    return tmp_path


def test_warm_run_is_one_line_of_hits_and_the_summary(project: Path) -> None:
    """Twelve hits, piped: one `cached   12 tasks` line, then the summary; nothing else."""
    warm = run(project)
    assert warm.returncode == 0
    assert timeless(warm.stdout) == [
        "cached   12 tasks",
        "12 tasks: 12 cached, 0 ran, 0 failed in Ns (saved Ns)",
    ]


def test_verbose_lists_every_hit(project: Path) -> None:
    """-v: each cached task on a line of its own."""
    warm = run(project, "-v")
    hits = [line for line in warm.stdout.splitlines() if line.startswith("cached ")]
    assert sorted(hits) == sorted(
        [f"cached   leaf{i}" for i in range(10)] + ["cached   total", "cached   writer"]
    )


def test_a_task_that_runs_is_listed_with_its_reason(project: Path) -> None:
    """One changed option: the hits are counted, the task that ran says why."""
    changed = run(project, "-o", "leaf5.x=2")
    assert changed.returncode == 0
    assert timeless(changed.stdout) == [
        "cached   11 tasks",
        "ran      leaf5 (Ns): option 'x' changed: 1 -> 2",
        "12 tasks: 11 cached, 1 ran, 0 failed in Ns (saved Ns)",
    ]


def test_failed_and_skipped_tasks_are_listed(project: Path) -> None:
    """A failure and the skip it causes each get their line; the hits one line."""
    failed = run(project, "-o", "leaf3.x=0", "--keep-going")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[0] == "cached   10 tasks"
    assert "failed   leaf3: ValueError: x must not be 0" in lines
    assert "skipped  total: upstream 'leaf3' failed" in lines
    assert lines[-1].startswith("12 tasks: 10 cached, 0 ran, 1 failed, 1 skipped")
    assert sum(line.startswith("cached ") for line in lines) == 1


def test_a_hit_that_restores_files_keeps_its_line(project: Path) -> None:
    """Restoring an output writes to the project, so that hit is named."""
    (project / "build" / "out.txt").unlink()
    again = run(project)
    assert timeless(again.stdout) == [
        "cached   10 tasks",  # the leaves, the first wave
        "cached   writer, restored 1 file(s)",
        "cached   total",  # a single hit is named
        "12 tasks: 12 cached, 0 ran, 0 failed in Ns (saved Ns)",
    ]
    assert (project / "build" / "out.txt").read_text() == "hello\n"


def test_json_still_has_an_event_per_hit(project: Path) -> None:
    """--json is unchanged: one `cached` event for every hit."""
    out = run(project, "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(e["task"] for e in events if e["event"] == "cached") == sorted(
        [f"leaf{i}" for i in range(10)] + ["total", "writer"]
    )


WAITS = """
import pathlib
import time

from taskrun import task


@task
def a() -> int:
    return 1


@task(deps=[a])
def b(a: int) -> int:
    return a


@task(deps=[b])
def waits(b: int) -> int:
    while not pathlib.Path("go").exists():  # the test creates it once it has read "ran b"
        time.sleep(0.01)
    return b
"""


def test_lines_reach_the_pipe_while_the_next_task_runs(tmp_path: Path) -> None:
    """Lines written back to back are flushed soon, not held until the run ends."""
    import selectors
    import time

    (tmp_path / "tasks.py").write_text(WAITS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", "run", "--executor", "inline", "-j", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    received = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 60  # a hang guard only; it normally takes 0.1 s
            while b"\nran      b " not in received:
                assert sel.select(timeout=max(0.0, deadline - time.monotonic())), received
                chunk = os.read(proc.stdout.fileno(), 65536)  # unbuffered: what has arrived
                assert chunk, f"the run ended early: {received!r}"
                received += chunk
        assert proc.poll() is None  # 'waits' is still running: the line came before the end
        (tmp_path / "go").touch()
        rest, _ = proc.communicate(timeout=60)
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert b"3 tasks: 0 cached, 3 ran, 0 failed" in rest
