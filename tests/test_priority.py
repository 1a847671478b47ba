"""Critical-path-first scheduling: which waiting task starts first (taskrun.priority).

Durations come from a run record written with the real recorder (no timing is involved:
the recorded numbers are made up), and the start order is read from the run's events at
``-j 1``, where every start is a choice among the waiting tasks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import taskrun
from taskrun import Registry
from taskrun import events as ev
from taskrun.priority import ReadyQueue, remaining_paths
from taskrun.runs import RUNS_DIR, RunRecorder, recorded_durations


@pytest.fixture(params=["inline", "thread"])
def executor(request: pytest.FixtureRequest) -> str:
    """Each order holds for the in-process executors (one slot: a choice at every start)."""
    return str(request.param)


def record(root: Path, durations: Mapping[str, float], *, cached: Mapping[str, float] = {}) -> None:
    """A completed run record in ROOT saying how long each task took."""
    recorder = RunRecorder(root / RUNS_DIR, {"command": ["taskrun", "run"], "tasks": []})
    for name, seconds in durations.items():
        recorder(ev.TaskRan(name, seconds, ("no entry",)))
    for name, seconds in cached.items():
        recorder(ev.TaskCached(name, seconds))
    n = len(durations) + len(cached)
    recorder(ev.RunFinished(n, len(cached), len(durations), 0, 0, 1.0, 0.0))
    recorder.close()


def chains() -> Registry:
    """Three quick independent tasks defined first, then a chain long0 -> long1."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def short_a() -> int:
            return 1

        @taskrun.task
        def short_b() -> int:
            return 1

        @taskrun.task
        def short_c() -> int:
            return 1

        @taskrun.task
        def long0() -> int:
            return 1

        @taskrun.task(deps=[long0])
        def long1(long0: int) -> int:
            return long0

    return reg


def started(root: Path, reg: Registry, executor: str) -> list[str]:
    """Run everything at -j 1; the tasks in the order they started."""
    order: list[str] = []

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.TaskStarted):
            order.append(event.task)

    result = taskrun.run(registry=reg, root=root, jobs=1, executor=executor, on_event=on_event)
    assert result.ok
    return order


def test_recorded_long_chain_starts_first(tmp_path: Path, executor: str) -> None:
    """With the chain recorded slow, it starts before the quick tasks defined ahead of it."""
    record(tmp_path, {"short_a": 0.1, "short_b": 0.1, "short_c": 0.1, "long0": 5, "long1": 5})
    order = started(tmp_path, chains(), executor)
    assert order == ["long0", "long1", "short_a", "short_b", "short_c"]


def test_fifo_switch_keeps_the_ready_order(
    tmp_path: Path, executor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TASKRUN_SCHEDULE=fifo (the benchmark baseline): tasks start in the order they got ready."""
    monkeypatch.setenv("TASKRUN_SCHEDULE", "fifo")
    record(tmp_path, {"short_a": 0.1, "short_b": 0.1, "short_c": 0.1, "long0": 5, "long1": 5})
    order = started(tmp_path, chains(), executor)
    assert order == ["short_a", "short_b", "short_c", "long0", "long1"]


def deep_quick_chain() -> Registry:
    """q0 -> q1 -> q2 (three tasks deep) defined before one task alone, slow."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def q0() -> int:
            return 0

        @taskrun.task(deps=[q0])
        def q1(q0: int) -> int:
            return q0

        @taskrun.task(deps=[q1])
        def q2(q1: int) -> int:
            return q1

        @taskrun.task
        def slow() -> int:
            return 1

    return reg


def test_without_records_the_deepest_path_starts_first(tmp_path: Path, executor: str) -> None:
    """No record: every task weighs the same, so the three-deep chain goes first."""
    assert started(tmp_path, deep_quick_chain(), executor)[0] == "q0"


def test_recorded_durations_outweigh_depth(tmp_path: Path, executor: str) -> None:
    """One slow task outranks a deeper chain of quick ones (cached times count too)."""
    record(tmp_path, {"q0": 0.01, "q1": 0.01}, cached={"q2": 0.01, "slow": 3.0})
    assert started(tmp_path, deep_quick_chain(), executor)[0] == "slow"


def test_unrecorded_task_weighs_the_median(tmp_path: Path, executor: str) -> None:
    """A task missing from the record weighs the median of the recorded ones, not 1 s."""
    record(tmp_path, {"q0": 0.1, "q1": 0.1, "q2": 0.1})
    # chain 0.3 s against slow at the median, 0.1 s (at 1 s it would go first).
    assert started(tmp_path, deep_quick_chain(), executor)[0] == "q0"


def test_remaining_paths_weighs_each_path() -> None:
    """The remaining path of a task is its weight plus its heaviest dependent's path."""
    deps = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    paths, default = remaining_paths(
        ["a", "b", "c", "d"], deps.__getitem__, {"a": 1.0, "b": 5.0, "c": 2.0}
    )
    assert default == 2.0  # median of 1, 5, 2
    assert paths == {"d": 2.0, "c": 4.0, "b": 7.0, "a": 8.0}


def test_ready_queue_ties_keep_arrival_order() -> None:
    """Equal priorities come out first in, first out; a pushed-front task comes out first."""
    queue: ReadyQueue[str] = ReadyQueue({"x": 1.0, "y": 1.0, "z": 2.0, "w": 1.0}.__getitem__)
    for name in ("x", "y", "z"):
        queue.append(name)
    queue.appendleft("w")
    assert [queue.popleft() for _ in range(4)] == ["w", "z", "x", "y"]


def test_queue_asks_no_priority_without_a_choice() -> None:
    """One waiting task at a time never needs a priority (a warm or serial run reads no record)."""
    asked: list[str] = []

    def priority(name: str) -> float:
        asked.append(name)
        return 0.0

    queue: ReadyQueue[str] = ReadyQueue(priority)
    for name in ("a", "b", "c"):
        queue.append(name)
        assert queue.popleft() == name
    assert asked == []


def test_durations_read_from_a_real_cli_record(tmp_path: Path) -> None:
    """A `taskrun run` leaves a record from which every task's duration can be read."""
    (tmp_path / "tasks.py").write_text(
        "from taskrun import task\n\n"
        "@task\ndef a() -> int:\n    return 1\n\n"
        "@task(deps=[a])\ndef b(a: int) -> int:\n    return a\n"
    )
    cli = [sys.executable, "-m", "taskrun", "run", "--executor", "inline"]
    subprocess.run(cli, cwd=tmp_path, check=True, capture_output=True)
    assert set(recorded_durations(tmp_path / RUNS_DIR)) == {"a", "b"}
    subprocess.run(cli, cwd=tmp_path, check=True, capture_output=True)  # all cached now
    durations = recorded_durations(tmp_path / RUNS_DIR)
    assert set(durations) == {"a", "b"} and all(d >= 0 for d in durations.values())
