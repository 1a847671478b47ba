"""Raw writes to descriptors 1 and 2 by tasks running in the taskrun process are attributed.

With the ``thread`` and ``inline`` executors, ``taskrun run`` points its descriptors 1 and
2 at a pipe while the run goes on (taskrun.executors.fdcapture). These tests start a real
``taskrun`` process with real descriptors (pipes, a pseudo-terminal) and read what it
printed; concurrent tasks synchronise on files, never on time.
"""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from taskrun import events as ev
from taskrun.report import ConsoleReporter

WAIT = 120.0  # seconds: a bound on a hung run, never a synchronisation

RAW = """
import os, sys
from taskrun import task


@task
def talk() -> int:
    print("from print", flush=True)
    os.write(1, b"raw fd write\\n")
    os.system("echo from-system")
    os.write(2, b"raw fd 2\\n")
    sys.stderr.write("from stderr\\n")
    os.write(1, b"no newline")
    return 1
"""

RAW_LINES = ["from print", "raw fd write", "from-system", "raw fd 2", "from stderr", "no newline"]

TWO = """
import os, time
from pathlib import Path
from taskrun import task


def wait_for(name):
    while not Path(name).exists():
        time.sleep(0.01)


@task
def one() -> int:
    Path("one-started").touch()
    wait_for("two-started")
    print("one print", flush=True)
    os.write(1, b"one raw\\n")
    os.system("echo one system")
    Path("one-wrote").touch()
    wait_for("two-wrote")
    return 1


@task
def two() -> int:
    Path("two-started").touch()
    wait_for("one-started")
    print("two print", flush=True)
    os.write(2, b"two raw\\n")
    os.system("echo two system")
    Path("two-wrote").touch()
    wait_for("one-wrote")
    return 2
"""

HANG = """
import os, time
from pathlib import Path
from taskrun import task


@task
def hang() -> int:
    Path("started").touch()
    os.write(1, b"before the signal\\n")
    while not Path("never").exists():
        time.sleep(0.01)
    return 1
"""


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "", "NO_COLOR": "1"}


def _run(root: Path, tasks: str, *args: str) -> subprocess.CompletedProcess[str]:
    (root / "tasks.py").write_text(tasks)
    return subprocess.run(
        [sys.executable, "-m", "taskrun", "run", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=WAIT,
    )


@pytest.mark.parametrize("executor", [None, "inline"])
def test_raw_writes_of_a_task_in_process_are_its_lines_in_plain_output(
    tmp_path: Path, executor: str | None
) -> None:
    """os.write(1/2) and os.system output show as `talk | line`, once each; summary last."""
    args = ("--executor", executor) if executor else ()
    done = _run(tmp_path, RAW, *args)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    for text in RAW_LINES:  # the unfinished last line too, as a line of its own
        assert lines.count(f"talk | {text}") == 1, (text, done.stdout)
    assert not any(line in RAW_LINES for line in lines), done.stdout  # nothing raw
    assert done.stderr == ""  # fd 2 writes were caught too
    # The terminal was given back whole: the summary is the last line, complete.
    assert lines[-1].startswith("1 task: 0 cached, 1 ran, 0 failed in "), done.stdout
    assert done.stdout.endswith(")\n")


def test_raw_writes_are_output_events_of_their_task_with_json(tmp_path: Path) -> None:
    """With --json every raw line is an `output` event of its task, before its `ran`."""
    done = _run(tmp_path, RAW, "--json")
    assert done.returncode == 0, done
    events = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON
    outputs = [e for e in events if e["event"] == "output"]
    assert [e["line"] for e in outputs] == RAW_LINES
    assert {e["task"] for e in outputs} == {"talk"}
    ran = next(e for e in events if e["event"] == "ran")
    assert events.index(ran) > events.index(outputs[-1])
    assert ran["output"].splitlines() == RAW_LINES
    assert events[-1]["event"] == "summary" and events[-1]["ok"] is True
    assert done.stderr == ""


def test_raw_lines_of_two_tasks_running_at_once_are_labelled_and_none_is_lost(
    tmp_path: Path,
) -> None:
    """Both tasks are running when they write: raw lines are `? | line`, each exactly once.

    Python-level writes still go to their own task (per-thread routing), never twice.
    """
    done = _run(tmp_path, TWO, "-j", "2", "one", "two")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    for text in ("one raw", "one system", "two raw", "two system"):
        assert lines.count(f"? | {text}") == 1, (text, done.stdout)
        assert not any(line.endswith(text) and not line.startswith("? | ") for line in lines)
    assert lines.count("one | one print") == 1 and lines.count("two | two print") == 1
    assert sum("print" in line for line in lines) == 2, done.stdout
    assert lines[-1].startswith("2 tasks: 0 cached, 2 ran, 0 failed in "), done.stdout
    assert done.stderr == ""
    # The run record keeps them too, apart from the tasks (`?` is not a task).
    shown = subprocess.run(
        [sys.executable, "-m", "taskrun", "show"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=WAIT,
    )
    assert shown.returncode == 0, shown
    record = shown.stdout.splitlines()
    for text in ("one raw", "one system", "two raw", "two system"):
        assert record.count(f"    ? | {text}") == 1, shown.stdout
    assert not any(line.split()[1:2] == ["?"] for line in record), shown.stdout


def test_raw_lines_of_two_tasks_are_unattributed_output_events_with_json(
    tmp_path: Path,
) -> None:
    done = _run(tmp_path, TWO, "-j", "2", "--json", "one", "two")
    assert done.returncode == 0, done
    events = [json.loads(line) for line in done.stdout.splitlines()]
    raw = sorted(e["line"] for e in events if e["event"] == "output" and e["task"] == "?")
    assert raw == ["one raw", "one system", "two raw", "two system"]
    for task in ("one", "two"):
        mine = [e["line"] for e in events if e["event"] == "output" and e["task"] == task]
        assert mine == [f"{task} print"]


def test_sigterm_during_a_capture_gives_the_terminal_back(tmp_path: Path) -> None:
    """Terminated mid-task: the raw line was attributed, and the CLI's own last words
    (written to descriptor 2 after the run) reach the real stderr."""
    (tmp_path / "tasks.py").write_text(HANG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed as it came: the task is in its loop now
        assert first == "hang | before the signal\n"
        assert (tmp_path / "started").exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, (out, err)
    assert "interrupted (in flight, not recorded: hang)" in out
    assert "terminated (SIGTERM)" in err  # written after the restore: not lost in the pipe


def test_the_live_view_shows_raw_lines_under_their_task_not_over_it(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) raw writes come out as the task's lines."""
    (tmp_path / "tasks.py").write_text(RAW)
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", "run"],
        cwd=tmp_path,
        stdin=sub,
        stdout=sub,
        stderr=sub,
        env={**_env(), "TERM": "xterm"},
    )
    os.close(sub)
    chunks = []
    try:
        while True:
            try:
                data = os.read(main, 1 << 16)
            except OSError:  # EIO: every holder of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
    assert proc.returncode == 0
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    lines = text.split("\n")
    for raw in RAW_LINES:
        assert f"talk | {raw}" in lines, (raw, text)
        assert raw not in lines, (raw, text)  # never written bare (under the live view)
    assert "1 task: 0 cached, 1 ran, 0 failed in " in lines[-2], text


def test_console_prints_unattributed_lines_at_once() -> None:
    """A `?` line has no running task to show it under, nor an end: printed as it comes."""
    out = io.StringIO()
    reporter = ConsoleReporter(out, color=False, size=(80, 24))
    reporter(ev.RunStarted(tasks=("a", "b"), targets=("a", "b"), jobs=2, executor="thread"))
    reporter(ev.TaskStarted("a", ("no entry",)))
    reporter(ev.TaskStarted("b", ("no entry",)))
    reporter(ev.TaskOutput(ev.UNATTRIBUTED, "from C", 0.0))
    assert "? | from C\n" in out.getvalue()
    reporter.close()
