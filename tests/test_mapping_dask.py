"""Mapped and streaming tasks on a real Dask cluster (a LocalCluster on loopback).

One cluster of two one-thread worker processes serves the module; each run connects to
it by address, like `taskrun run --executor dask --dask-address ...`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed", reason="the Dask executor needs taskrun[dask]")

import test_mapping as cases

from taskrun import events as ev
from taskrun.executors.dask import DaskExecutor
from taskrun.invocation import invoke
from taskrun.loader import load_task_file
from taskrun.project import execute, open_cache, runtime_of

pytestmark = pytest.mark.slow  # a cluster takes a second or two to start


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """The scheduler address of the module's LocalCluster."""
    ex = DaskExecutor(2)
    ex.connect()
    assert ex.scheduler_address is not None
    yield ex.scheduler_address
    ex.shutdown()


def run_dask(root: Path, targets: list[str], address: str, **kwargs: Any) -> tuple[Any, list[str]]:
    """Run on the cluster; return (result, what ran this time) like test_mapping.run."""
    log = root / "runs.log"
    log.unlink(missing_ok=True)
    registry = load_task_file(root / "tasks.py")
    invocation = invoke(registry, targets, root=root, options=kwargs.pop("options", None))
    cache = open_cache(root, None)
    try:
        result = execute(
            invocation,
            jobs=2,
            executor="dask",
            cache=cache,
            runtime=runtime_of(None, root),
            executor_options={"address": address},
            **kwargs,
        )
    finally:
        cache.close()
    return result, (log.read_text().splitlines() if log.exists() else [])


def test_item_calls_run_on_the_cluster(tmp_path: Path, address: str) -> None:
    """The C build on Dask: one call per source, outputs written, warm run all hits."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(cases.C_BUILD))
    (tmp_path / "src").mkdir()
    for name in "abc":
        (tmp_path / "src" / f"{name}.c").write_text(f"int {name};")
    result, ran = run_dask(tmp_path, ["link"], address)
    assert result.ok, result.tasks
    assert sorted(ran) == ["compile src/a.c", "compile src/b.c", "compile src/c.c", "link"]
    assert result.products["link"] == "-O2:INT A;|-O2:INT B;|-O2:INT C;"
    assert (tmp_path / "build" / "c.o").read_text() == "-O2:INT C;"
    (tmp_path / "src" / "b.c").write_text("int bb;")
    result, ran = run_dask(tmp_path, ["link"], address)
    assert sorted(ran) == ["compile src/b.c", "link"]


def test_items_stream_from_a_generator_on_the_cluster(tmp_path: Path, address: str) -> None:
    """A worker on this machine streams its items: the first item's call runs before it ends."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(cases.STREAM))
    events: list[ev.Event] = []
    result, ran = run_dask(tmp_path, ["report"], address, on_event=events.append)
    assert result.ok, result.tasks
    assert result.products["report"] == "ITEM0,ITEM1,ITEM2,ITEM3"
    order = [(type(e).__name__, getattr(e, "task", "")) for e in events]
    assert order.index(("TaskStarted", "process[item0]")) < order.index(("TaskRan", "discover"))
    assert sorted(ran) == ["process item0", "process item1", "process item2", "process item3"]
    cases.clear_marks(tmp_path)
    again, ran = run_dask(tmp_path, ["report"], address)
    assert ran == [] and again.state("discover") == "cached"


def test_a_failing_item_on_the_cluster_fails_alone(tmp_path: Path, address: str) -> None:
    """keep_going on Dask: the failing item fails, the others are cached."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        @task
        def numbers() -> list[int]:
            return [1, 2, 3]

        @task(map={"x": numbers})
        def check(x: int) -> int:
            if x == 2:
                raise ValueError("two")
            return x
    """)
    )
    result, _ = run_dask(tmp_path, ["check"], address, keep_going=True)
    assert [result.state(f"check[{i}]") for i in (1, 2, 3)] == ["ran", "failed", "ran"]
    assert result.state("check") == "failed"
