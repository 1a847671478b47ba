"""Shared fixtures: an isolated registry, a project on disk, and the CLI in-process.

Keep these generic; test modules build what they need on top of them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

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
