"""Faults on the process side: timeouts, signals, stray children, fail-fast, lock waits.

Everything here uses real `taskrun` processes and real signals. Leftover processes are
found through /proc by a marker unique to each test in their command line (`sleep
300.<n>`), so a survivor of one test is never confused with another's; the tests
synchronise on files the tasks write, never on sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

_serial = itertools.count(1)
EXECUTORS = ["thread", "inline", "process"]


def marker() -> str:
    """A `sleep` argument no other process on this machine has: 300.<pid><n>."""
    return f"300.{os.getpid()}{next(_serial):03d}"


def survivors(mark: str) -> list[int]:
    """Live processes whose command line contains ``mark`` (zombies have none)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if mark in cmdline:
            found.append(int(name))
    return found


def assert_none_survive(mark: str, patience: float = 10.0) -> None:
    """No process with ``mark`` is left: SIGKILL is asynchronous, so allow it to land."""
    deadline = time.monotonic() + patience
    left = survivors(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = survivors(mark)
    for pid in left:  # clean up after a failure: these are this test's own processes
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes with {mark} survived: {left}"


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"taskrun ended before {path.name} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def project(tmp_path: Path, source: str) -> Path:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(source))
    return tmp_path


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "TASKRUN_CACHE_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- item 8: processes never outlive taskrun --------------------------------------------------


def test_sh_timeout_kills_what_the_command_started() -> None:
    """sh(..., timeout=) kills the command's whole process group, not only /bin/sh."""
    from taskrun.errors import ShellError
    from taskrun.shell import sh

    mark = marker()
    with pytest.raises(ShellError, match=r"timed out after 0\.5s"):
        sh(f"sleep {mark}; echo done", timeout=0.5, echo=False)
    assert_none_survive(mark)


SIGNALLED = """
    from taskrun import task, sh

    @task
    def hold() -> None:
        sh("sleep {mark} & touch started; wait")
"""


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_kills_the_tasks_commands(
    tmp_path: Path, executor: str, sig: signal.Signals, code: int, word: str
) -> None:
    """SIGINT and SIGTERM: cleanup, a message, exit 130/143, and no sh() child survives."""
    mark = marker()
    root = project(tmp_path, SIGNALLED.format(mark=mark))
    proc = start(root, "run", "--executor", executor)
    wait_for(root / "started", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    assert f"taskrun: error: {word}" in err and "Traceback" not in err, err
    assert_none_survive(mark)


TIMED_OUT = """
    import time
    from pathlib import Path
    from taskrun import task, sh

    @task(timeout=1)
    def stuck() -> None:
        sh("sleep {mark} & touch started; wait")

    @task
    def after() -> None:
        Path("after-started").touch()
        while not Path("release").exists():
            time.sleep(0.02)
"""


@pytest.mark.parametrize("executor", EXECUTORS)
def test_task_timeout_kills_its_commands_at_once(tmp_path: Path, executor: str) -> None:
    """A task past its timeout has its sh() children killed then, not when the run ends."""
    mark = marker()
    root = project(tmp_path, TIMED_OUT.format(mark=mark))
    proc = start(root, "run", "-j", "1", "--keep-going", "--executor", executor)
    try:
        wait_for(root / "after-started", proc)
        assert (root / "started").exists()
        assert_none_survive(mark)  # while taskrun still runs the next task
    finally:
        (root / "release").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "timed out after 1s" in out + err


DYING = """
    import os, signal, time
    from pathlib import Path
    from taskrun import task, sh

    @task(timeout=1)
    def deaf() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worker cannot die of SIGTERM
        sh("sleep {mark} & touch started; wait")

    @task
    def crash() -> None:
        sh("sleep {mark} >/dev/null 2>&1 & touch started")
        os._exit(3)  # the worker dies without killing what its task started

    @task
    def after() -> None:
        while not Path("started").exists():
            time.sleep(0.02)
        Path("after-started").touch()
        while not Path("release").exists():
            time.sleep(0.02)
"""


@pytest.mark.parametrize(
    ("how", "says"), [("deaf", "timed out after 1s"), ("crash", "exited with code 3")]
)
def test_a_worker_that_dies_unclean_leaves_no_commands(tmp_path: Path, how: str, says: str) -> None:
    """A process worker SIGKILLed after ignoring SIGTERM past its grace period, or one that
    crashes, had its sh() commands (sessions of their own) killed too, while the run goes on."""
    mark = marker()
    root = project(tmp_path, DYING.format(mark=mark))
    proc = start(root, "run", how, "after", "-j", "2", "--keep-going", "--executor", "process")
    try:
        wait_for(root / "after-started", proc)
        assert_none_survive(mark)  # while taskrun still runs the other task
    finally:
        (root / "release").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert says in out + err, (out, err)


STRAY = """
    import subprocess
    from taskrun import task, sh

    @task
    def popen() -> None:
        subprocess.Popen(["sleep", "{mark}"])  # inherits stdout, never waited for

    @task
    def orphan() -> None:
        import os
        os.system("sleep {mark} &")  # its parent shell exits at once

    @task
    def background() -> None:
        sh("sleep {mark} >/dev/null 2>&1 &")
"""


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("how", ["popen", "orphan", "background"])
def test_stray_children_do_not_outlive_the_run(tmp_path: Path, executor: str, how: str) -> None:
    """A task's stray child neither keeps `taskrun run | cat` open nor survives taskrun."""
    mark = marker()
    root = project(tmp_path, STRAY.format(mark=mark))
    proc = start(root, "run", how, "--executor", executor)
    # EOF on stdout means nothing holds the pipe any more (a stray sleep would for 300 s).
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert_none_survive(mark)


# -- item 10: fail-fast --------------------------------------------------------------------

FAIL_FAST = """
    from pathlib import Path
    from taskrun import task

    @task
    def first() -> None:
        raise RuntimeError("boom")

    @task
    def second() -> None:
        Path("ran-second").touch()

    @task
    def third() -> None:
        Path("ran-third").touch()
"""


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_fail_fast_starts_nothing_after_a_failure(tmp_path: Path, executor: str) -> None:
    """With -j 1, the tasks queued behind a failing one never run; they are reported skipped."""
    root = project(tmp_path, FAIL_FAST)
    proc = start(root, "run", "-j", "1", "--json", "--executor", executor)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert not (root / "ran-second").exists() and not (root / "ran-third").exists()
    events = [json.loads(line) for line in out.splitlines()]
    skipped = {e["task"]: e["reason"] for e in events if e["event"] == "skipped"}
    reason = "stopped after 'first' failed (use --keep-going to go on)"
    assert skipped == {"second": reason, "third": reason}
    assert [e["task"] for e in events if e["event"] == "started"] == ["first"]


# -- item 9: waiting for another process's lock ----------------------------------------------

GATED = """
    import os
    import time
    from pathlib import Path
    from taskrun import task

    def gate(name: str) -> str:
        with open("computed.log", "a") as fh:
            fh.write(f"{{name}} {{os.getpid()}}\\n")
        Path(f"started-{{name}}").touch()
        while not Path("go").exists():
            time.sleep(0.02)
        return name

{tasks}
"""


def gated_project(tmp_path: Path, names: list[str]) -> Path:
    tasks = "\n".join(f"@task\ndef {n}() -> str:\n    return gate({n!r})\n" for n in names)
    return project(tmp_path, GATED.format(tasks=textwrap.indent(tasks, "    ")))


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_waiting_for_another_process_does_not_spin(tmp_path: Path) -> None:
    """A run waiting for a fingerprint another run computes uses under 5% of a CPU."""
    root = gated_project(tmp_path, ["slow"])
    first = start(root, "run", "slow")
    second = None
    try:
        wait_for(root / "started-slow", first)
        second = start(root, "run", "slow")
        assert second.stdout is not None
        line = second.stdout.readline()  # blocks until the second run reports it waits
        assert line.startswith("waiting  slow"), line
        cpu0, wall0 = cpu_seconds(second.pid), time.monotonic()
        time.sleep(2.0)  # the measuring window, not a synchronisation
        cpu1, wall1 = cpu_seconds(second.pid), time.monotonic()
    finally:
        (root / "go").touch()
    _out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert "cached   slow" in out2
    ratio = (cpu1 - cpu0) / (wall1 - wall0)
    assert ratio < 0.05, f"the waiting run used {ratio:.0%} of a CPU"


def test_concurrent_runs_share_the_work(tmp_path: Path) -> None:
    """Three runs over six independent tasks compute each once, between them, all at once."""
    names = [f"t{i}" for i in range(6)]
    root = gated_project(tmp_path, names)
    runs = [start(root, "run", "-j", "1", "--json") for _ in range(3)]
    try:
        # Each run holds the lock of the one task it runs, not of every task it queued,
        # so the three runs compute three different tasks at the same time.
        deadline = time.monotonic() + 60
        while len(list(root.glob("started-*"))) < 3:
            dead = [r for r in runs if r.poll() is not None]
            assert not dead, [r.communicate() for r in dead]
            assert time.monotonic() < deadline, (
                f"runs serialised: only {sorted(p.name for p in root.glob('started-*'))} started"
            )
            time.sleep(0.02)
    finally:
        (root / "go").touch()
    summaries = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, (out, err)
        summaries.append(json.loads(out.splitlines()[-1]))
    lines = (root / "computed.log").read_text().split("\n")[:-1]
    computed = sorted(line.split()[0] for line in lines)
    assert computed == names  # each task computed exactly once
    assert len({line.split()[1] for line in lines}) == 3  # by three processes
    for summary in summaries:
        assert summary["total"] == 6 and summary["cached"] + summary["ran"] == 6
        assert summary["failed"] == 0 and summary["skipped"] == 0


def test_the_cli_in_process_leaves_the_callers_children_alone(tmp_path: Path) -> None:
    """Only the `taskrun` command sweeps its children: a program calling the CLI keeps its own."""
    from click.testing import CliRunner

    from taskrun.cli import main

    mark = marker()
    mine = subprocess.Popen(["sleep", mark])
    try:
        source = "from taskrun import task\n\n@task\ndef a() -> int:\n    return 1\n"
        root = project(tmp_path, source)
        result = CliRunner().invoke(main, ["-C", str(root), "run"])
        assert result.exit_code == 0, result.output
        assert mine.poll() is None and survivors(mark) == [mine.pid]
    finally:
        mine.kill()
        mine.wait()
