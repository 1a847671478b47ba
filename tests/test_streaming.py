"""Live output and progress: lines reach the user while the task still runs, under every executor.

The end-to-end tests start a real ``taskrun run`` and read its stdout line by line; the task
writes, then waits for a file that the test creates only after it has seen the lines. A
line that arrived only at the end would never be seen, and the test would time out.
"""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskrun
from taskrun import events as ev
from taskrun.errors import UsageError
from taskrun.report import ConsoleReporter, PlainReporter
from taskrun.streaming import Feed, LineSink, progress

EXECUTORS = ["inline", "thread", "process", "dask"]
WAIT = 120.0  # seconds: a bound on a hung run, never a synchronisation

TASKS = """
import ctypes, ctypes.util, logging, os, subprocess, sys, time
from pathlib import Path
import taskrun
from taskrun import sh, task

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


def wait_for(name):
    while not Path(name).exists():
        time.sleep(0.01)


@task
def talk() -> int:
    print("from print", flush=True)
    logging.getLogger("talk").info("from logging")
    sh("echo from sh")
    subprocess.run([sys.executable, "-c", "print('from subprocess')"], check=True)
    if os.environ.get("FD_WRITES"):
        os.write(1, b"from fd 1\\n")
        os.write(2, b"from fd 2\\n")
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.printf(b"from printf\\n")
        libc.fflush(None)
    taskrun.progress(1, 2, "half way")
    wait_for("release")
    taskrun.progress(2, 2, "done")
    print("after release")
    return 1
"""

LINES = ["from print", "INFO from logging", "from sh", "from subprocess"]
FD_LINES = ["from fd 1", "from fd 2", "from printf"]


class Run:
    """A `taskrun run --json` in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskrun", "run", "--json", *args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CI": "", **(env or {})},
        )
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []  # lines on stdout that are not JSON
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lines_after: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, predicate: Any) -> dict[str, Any]:
        """Read events until one matches ``predicate``; fail if the run ends first."""
        deadline = time.monotonic() + WAIT
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"the run ended first; events: {self.events}; raw: {self.raw}")
            try:
                event = json.loads(line)
            except ValueError:
                self.raw.append(line.rstrip("\n"))
                continue
            self.events.append(event)
            if predicate(event):
                return event

    def finish(self) -> int:
        while (line := self._lines.get(timeout=WAIT)) is not None:
            self._lines_after.append(line)
        self._lines.put(None)  # for kill()
        return self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        while self._lines.get(timeout=WAIT) is not None:  # the reader saw the end
            pass
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def run_in(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []

    def start(*args: str, tasks: str = TASKS, env: dict[str, str] | None = None) -> Run:
        (tmp_path / "tasks.py").write_text(tasks)
        run = Run(tmp_path, *args, env=env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def outputs(run: Run, task: str = "talk") -> list[str]:
    return [e["line"] for e in run.events if e["event"] == "output" and e["task"] == task]


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_output_and_progress_arrive_while_the_task_runs(
    executor: str, run_in: Any, tmp_path: Path
) -> None:
    """print, logging, sh() and subprocess lines and a progress report come before the end.

    Raw writes to descriptors 1 and 2 too, except on a Dask cluster (see docs/watching.md).
    """
    fd = {"FD_WRITES": "1"} if executor != "dask" else {}
    run = run_in("--executor", executor, "-j", "1", env=fd)
    expected = LINES + (FD_LINES if fd else [])
    run.until(lambda e: e["event"] == "progress")
    for line in expected:  # every line was out before the progress report
        assert line in outputs(run), (line, run.events)
    assert outputs(run).index("from print") < outputs(run).index("from subprocess")
    first = next(e for e in run.events if e["event"] == "progress")
    assert (first["done"], first["total"], first["message"]) == (1, 2, "half way")
    assert not any(e["event"] in ("ran", "failed") for e in run.events)
    (tmp_path / "release").touch()
    run.until(lambda e: e["event"] == "summary")
    assert run.finish() == 0
    ran = next(e for e in run.events if e["event"] == "ran")
    assert "after release" in outputs(run)
    assert run.events.index(ran) > max(
        i for i, e in enumerate(run.events) if e["event"] == "output"
    ), "every output line comes before the task's ran event"
    assert ran["output"].splitlines() == outputs(run)
    assert all(isinstance(e["time"], float) for e in run.events if e["event"] == "output")
    last = [e for e in run.events if e["event"] == "progress"][-1]
    assert (last["done"], last["total"], last["message"]) == (2, 2, "done")


QUEUE = """
import time
from pathlib import Path
from taskrun import task


@task
def first() -> int:
    while not Path("release").exists():
        time.sleep(0.01)
    print("first returns", flush=True)
    return 1


@task
def second() -> int:
    while not Path("release").exists():
        time.sleep(0.01)
    print("second returns", flush=True)
    return 2
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_task_waiting_for_a_slot_is_queued_not_started(
    executor: str, run_in: Any, tmp_path: Path
) -> None:
    """With -j 1 and two tasks, one is started and the other queued until a slot is free."""
    run = run_in("--executor", executor, "-j", "1", tasks=QUEUE)
    started = run.until(lambda e: e["event"] == "started")
    queued = {e["task"] for e in run.events if e["event"] == "queued"}
    other = ({"first", "second"} - {started["task"]}).pop()
    if other not in queued:  # both are handed over at once, only one may run
        run.until(lambda e: e["event"] == "queued" and e["task"] == other)
    (tmp_path / "release").touch()
    second_start = run.until(lambda e: e["event"] == "started")
    assert second_start["task"] == other
    assert f"{started['task']} returns" in outputs(run, started["task"]), (
        "the second task is started only once the first one's call has returned"
    )
    run.until(lambda e: e["event"] == "summary")
    assert run.finish() == 0


ECHO = """
from taskrun import sh, task


@task
def build() -> str:
    return sh("echo compiled").stdout
"""


@pytest.mark.slow
def test_verbose_echoes_the_commands_sh_runs(run_in: Any) -> None:
    """`-v` shows `$ command` before the command's own output; without it, no echo."""
    run = run_in("-v", tasks=ECHO)
    run.until(lambda e: e["event"] == "summary")
    assert run.finish() == 0
    assert outputs(run, "build") == ["$ echo compiled", "compiled"]
    quiet = run_in("--force-all", tasks=ECHO)
    quiet.until(lambda e: e["event"] == "summary")
    assert quiet.finish() == 0
    assert outputs(quiet, "build") == ["compiled"]


# -- the pieces ---------------------------------------------------------------------------------
def test_line_sink_sends_whole_lines_and_the_rest_at_the_end() -> None:
    """A line is sent when its newline is written; an unfinished one when the call ends."""
    seen: list[ev.Event] = []
    sink = LineSink("t", Feed(seen.append))
    sink.write("one\ntw")
    assert [e.line for e in seen if isinstance(e, ev.TaskOutput)] == ["one"]
    sink.write("o\nthr")
    sink.finish()
    sink.write("ignored after finish\n")
    assert [e.line for e in seen if isinstance(e, ev.TaskOutput)] == ["one", "two", "thr"]
    assert sink.getvalue() == "one\ntwo\nthrignored after finish\n"


def test_feed_turns_an_executor_start_into_started_with_the_reasons() -> None:
    """started() after queued gives one started event carrying the queued reasons."""
    seen: list[ev.Event] = []
    feed = Feed(seen.append)
    feed(ev.TaskQueued("t", ("no entry",), 2))
    feed.started("t")
    feed.started("t")  # a second announcement of the same attempt says nothing
    assert seen[1:] == [ev.TaskStarted("t", ("no entry",), 2)]


def test_progress_outside_a_task_does_nothing_and_checks_its_arguments() -> None:
    """progress() with no running task is a no-op; bad numbers are a clear error."""
    progress(1, 10, "fine")
    taskrun.progress(3)
    with pytest.raises(UsageError, match="done must be a number"):
        progress(-1)
    with pytest.raises(UsageError, match="total must be a number above 0"):
        progress(1, 0)


def test_progress_is_throttled_but_the_last_report_always_goes() -> None:
    """A loop reporting every item sends a handful of reports, including the final one."""
    seen: list[ev.Event] = []
    sink = LineSink("t", Feed(seen.append))
    from taskrun.streaming import set_channel

    set_channel(sink)
    try:
        for i in range(1, 10001):
            progress(i, 10000)
    finally:
        set_channel(None)
    reports = [e for e in seen if isinstance(e, ev.TaskProgress)]
    assert reports[0].done == 1 and reports[-1].done == 10000
    assert len(reports) < 100


def test_plain_prints_output_lines_as_they_come_and_not_again() -> None:
    """Plain mode: `TASK | line` per output event; the ran line does not repeat them."""
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter(ev.TaskOutput("b", "hello", 0.0))
    reporter(ev.TaskRan("b", 0.1, ("no entry",), output="hello\n"))
    reporter.close()  # lines may wait up to PlainReporter.FLUSH_EVERY before they are written
    assert out.getvalue().splitlines() == ["b | hello", "ran      b (0.10s): no entry"]


def test_plain_progress_lines_are_throttled() -> None:
    """The first and the last report print a line; those in between only every few seconds."""
    out = io.StringIO()
    reporter = PlainReporter(out)
    for done in range(1, 11):
        reporter(ev.TaskProgress("p", done, 10, "files", 100.0 + done))
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress p 1/10 (10%) files",
        "progress p 10/10 (100%, 1/s) files",
    ]


def test_console_shows_progress_bar_and_last_output_under_the_running_task() -> None:
    """The live view draws the bar with rate and ETA, and the task's last lines beneath."""
    out = io.StringIO()
    reporter = ConsoleReporter(out, color=False, size=(100, 30))
    reporter(ev.RunStarted(tasks=("a", "b"), targets=("a", "b"), jobs=1, executor="thread"))
    reporter(ev.TaskQueued("a", ("no entry",)))
    reporter(ev.TaskQueued("b", ("no entry",)))
    reporter(ev.TaskStarted("a", ("no entry",)))
    reporter(ev.TaskOutput("a", "line 1", 0.0))
    reporter(ev.TaskOutput("a", "line 2", 0.0))
    reporter(ev.TaskOutput("a", "line 3", 0.0))
    reporter(ev.TaskProgress("a", 10, 100, "items", 1000.0))
    reporter(ev.TaskProgress("a", 30, 100, "items", 1002.0))
    with reporter._lock:
        view = reporter._live_text().splitlines()
    reporter.close()
    assert view[0].startswith("  a") and "30/100 (30%, 10/s, ETA 7.0s) items" in view[0]
    assert "[" in view[0] and "#" in view[0]
    assert view[1:3] == ["    | line 2", "    | line 3"]
    assert view[-1] == "[0/2] 1 running, 1 queued"


def test_console_prints_a_finished_tasks_output_above_the_view() -> None:
    """Output shown live under the task is printed whole once the task has finished."""
    out = io.StringIO()
    reporter = ConsoleReporter(out, color=False, size=(80, 24))
    reporter(ev.RunStarted(tasks=("a",), targets=("a",), jobs=1, executor="thread"))
    reporter(ev.TaskStarted("a", ("no entry",)))
    reporter(ev.TaskOutput("a", "hi", 0.0))
    assert "a | hi" not in out.getvalue()
    reporter(ev.TaskRan("a", 0.2, ("no entry",), output="hi\n"))
    reporter.close()
    assert "a | hi" in out.getvalue()


def test_force_color_colours_plain_output_and_wins_over_no_color() -> None:
    """FORCE_COLOR: plain lines get colours; the live view keeps them despite NO_COLOR."""
    from taskrun.report import make_reporter

    out = io.StringIO()
    plain = make_reporter(stream=out, live=False, environ={"FORCE_COLOR": "1"})
    plain(ev.TaskRan("b", 0.1, ("no entry",)))
    assert "\x1b[32m" in out.getvalue() and "ran      b" in out.getvalue()
    out = io.StringIO()
    make_reporter(stream=out, live=False, environ={})(ev.TaskRan("b", 0.1, ("no entry",)))
    assert "\x1b" not in out.getvalue()
    both = {"NO_COLOR": "", "FORCE_COLOR": "1"}
    live = make_reporter(stream=io.StringIO(), live=True, environ=both)
    assert isinstance(live, ConsoleReporter) and live.color
    live.close()
    dull = make_reporter(stream=io.StringIO(), live=True, environ={"NO_COLOR": ""})
    assert isinstance(dull, ConsoleReporter) and not dull.color
    dull.close()
