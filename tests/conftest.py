"""Shared fixtures: an isolated registry, a project on disk, the CLI in-process, and the
executors (every behaviour of tests/test_executors.py runs on each of them).

Keep these generic; test modules build what they need on top of them.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result
from executor_support import PATIENCE, load_tasks

from taskrun.executors import Executor, make_executor
from taskrun.registry import Registry

WriteProject = Callable[..., Path]
RunCli = Callable[..., Result]


@pytest.fixture
def registry() -> Iterator[Registry]:
    """A fresh registry, active for the test, so module-level ``@task`` lands in it."""
    reg = Registry()
    with reg.activate():
        yield reg


def _write_project(
    directory: Path,
    source: str,
    pyproject: str | None = None,
    *,
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``tasks.py`` (dedented), an optional ``pyproject.toml`` and extra files."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tasks.py").write_text(textwrap.dedent(source), encoding="utf-8")
    if pyproject is not None:
        (directory / "pyproject.toml").write_text(textwrap.dedent(pyproject), encoding="utf-8")
    for rel, text in (files or {}).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def write_project() -> WriteProject:
    """``write_project(tmp_path, source, pyproject=None, files=None)`` -> the project dir."""
    return _write_project


@pytest.fixture
def run_cli() -> RunCli:
    """``run_cli(directory, *args)``: ``taskrun -C directory *args`` through CliRunner.

    ``directory=None`` runs without ``-C``. Keyword arguments go to ``CliRunner.invoke``
    (``env=``, ``input=``). The result has ``exit_code``, ``stdout``, ``stderr``, ``output``.
    """
    from taskrun.cli import main

    def run(directory: Path | None, *args: str, **kwargs: object) -> Result:
        runner = CliRunner()
        argv = (["-C", str(directory)] if directory is not None else []) + list(args)
        return runner.invoke(main, argv, prog_name="taskrun", **kwargs)  # type: ignore[arg-type]

    return run


# -- executors -----------------------------------------------------------------------------
# One behavioural suite for every executor: a test that takes `executor` runs on inline,
# thread, process and dask (a LocalCluster of two one-thread worker processes on
# 127.0.0.1, one per test module); narrower fixtures name the executors a behaviour
# concerns. The dask cases are marked slow and are skipped without the dask extra.

_HAS_DASK = importlib.util.find_spec("distributed") is not None
_DASK = pytest.param(
    "dask",
    marks=[
        pytest.mark.slow,
        pytest.mark.skipif(not _HAS_DASK, reason="the dask extra is not installed"),
    ],
)
EVERY_EXECUTOR = ["inline", "thread", "process", _DASK]
PARALLEL = ["thread", "process", _DASK]  # run calls at the same time
OUT_OF_PROCESS = ["process", _DASK]  # calls pickled to another process
IN_PROCESS = ["inline", "thread"]  # calls run in the driver process


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The project root calls run in (a directory of its own, not pytest's cwd)."""
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.fixture
def tasks(tmp_path: Path) -> ModuleType:
    """The executor tests' task module, loaded by path and not importable by name."""
    return load_tasks(tmp_path / "defs")


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """A file that lets blocked tasks go; created at teardown so abandoned threads end."""
    path = tmp_path / "release"
    yield path
    path.write_text("x")


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """A Dask executor owning a LocalCluster of two one-thread workers, for the module."""
    from taskrun.executors.dask import DaskExecutor

    ex = DaskExecutor(2)
    ex.connect()
    yield ex
    ex.shutdown()


def _executor(name: str, request: pytest.FixtureRequest) -> Iterator[Executor]:
    if name == "dask":  # the module's cluster: started once, shut down by its fixture
        cluster = request.getfixturevalue("dask_cluster")
        # A test before may have killed a worker (a timeout, a crash); its nanny's
        # replacement can take seconds on a loaded machine, and two calls that must run at
        # once would both queue on the one worker left. (A hang guard, not a timing.)
        cluster._client.wait_for_workers(2, timeout=PATIENCE)
        yield cluster
        return
    ex = make_executor(name, 2)
    yield ex
    ex.shutdown()


@pytest.fixture(params=EVERY_EXECUTOR)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each executor with two jobs (dask: the module's two-worker cluster)."""
    yield from _executor(request.param, request)


@pytest.fixture(params=PARALLEL)
def parallel(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """The executors that run two calls at once."""
    yield from _executor(request.param, request)


@pytest.fixture(params=OUT_OF_PROCESS)
def remote(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """The executors that run calls in other processes (arguments and products pickled)."""
    yield from _executor(request.param, request)


@pytest.fixture(params=EVERY_EXECUTOR)
def executor_name(request: pytest.FixtureRequest) -> str:
    """The name of each executor, for a test that makes its own (dask: with a LocalCluster
    of its own)."""
    name: str = request.param
    return name


@pytest.fixture(params=PARALLEL)
def parallel_name(request: pytest.FixtureRequest) -> str:
    """The name of an executor that runs calls at once, for a test that makes its own
    (dask: `make_executor("dask", n)` starts a LocalCluster of its own, n workers)."""
    name: str = request.param
    return name
