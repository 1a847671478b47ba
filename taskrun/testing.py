"""taskrun's pytest plugin: test your tasks in a temporary project with a fresh cache.

Installed with taskrun (entry point ``pytest11``), so its fixtures are available in every
test session; nothing is imported until a test asks for one.

- ``taskrun_registry`` -- a fresh :class:`~taskrun.Registry`, active for the test, so a
  module-level or in-test ``@task`` lands in it.
- ``taskrun_project`` -- a :class:`TaskProject`: a temporary project directory, its own
  cache directory and a registry. ``.write(source, files=...)`` writes (and loads) a task
  file, ``.copy(path)`` copies a real project there and loads its ``tasks.py``.
- ``run_tasks(*targets, **kwargs)`` -- :func:`taskrun.run` in that project: tasks run with
  the temporary project as their working directory, so declared outputs are written
  there, and the cache is the temporary one.
- ``override(task, fake)`` -- a context manager swapping a task's implementation; the fake
  needs the same option names and types (not the same defaults) and product type.
- :func:`assert_tasks` -- ``assert_tasks(result, ran=[...], cached=[...])``: these ran,
  these were cached, with a message that lists every task's state and reasons.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from taskrun.api import Target
    from taskrun.registry import Registry, TaskSpec
    from taskrun.scheduler import RunResult

__all__ = ["TaskProject", "assert_tasks"]

_NOT_COPIED = (".taskrun", "build", "__pycache__", ".venv", ".git", ".pytest_cache")


class TaskProject:
    """A temporary project: ``root`` (tasks run there), ``cache_dir`` and a ``registry``."""

    def __init__(self, root: Path, cache_dir: Path, registry: Registry) -> None:
        self.root = root
        self.cache_dir = cache_dir
        self.registry = registry
        root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<TaskProject {self.root}>"

    def path(self, relative: str | Path) -> Path:
        """A path in the project (``project.path("build/report.md").read_text()``)."""
        return self.root / relative

    def write(
        self,
        source: str | None = None,
        *,
        files: Mapping[str, str | bytes] | None = None,
        pyproject: str | None = None,
    ) -> TaskProject:
        """Write ``tasks.py`` (dedented; then loaded into the registry) and other files."""
        for relative, content in (files or {}).items():
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(textwrap.dedent(content), encoding="utf-8")
        if pyproject is not None:
            (self.root / "pyproject.toml").write_text(textwrap.dedent(pyproject), "utf-8")
        if source is not None:
            (self.root / "tasks.py").write_text(textwrap.dedent(source), encoding="utf-8")
            self.load()
        return self

    def copy(self, project: str | Path, *, ignore: Iterable[str] = _NOT_COPIED) -> TaskProject:
        """Copy the project at PROJECT here (without caches and builds) and load its tasks."""
        source = Path(project)
        if source.is_file():  # the task file itself
            source = source.parent
        shutil.copytree(
            source, self.root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*ignore)
        )
        self.load()
        return self

    def load(self) -> Registry:
        """Import this project's ``tasks.py`` into a fresh registry (which it then uses)."""
        from taskrun.loader import load_task_file

        self.registry = load_task_file(self.root / "tasks.py")
        return self.registry

    def run(self, *targets: Target, **kwargs: Any) -> RunResult:
        """:func:`taskrun.run` here: this project's root, cache and registry by default."""
        import taskrun

        kwargs.setdefault("registry", self.registry)
        kwargs.setdefault("root", self.root)
        kwargs.setdefault("cache_dir", self.cache_dir)
        return taskrun.run(list(targets), **kwargs)

    def override(
        self, task: str | Callable[..., Any], replacement: Callable[..., Any]
    ) -> AbstractContextManager[TaskSpec]:
        """Swap ``task``'s implementation for the ``with`` block (see Registry.override)."""
        return self.registry.override(task, replacement)


def assert_tasks(
    result: RunResult,
    *,
    ran: Iterable[str] | None = None,
    cached: Iterable[str] | None = None,
    failed: Iterable[str] | None = None,
    skipped: Iterable[str] | None = None,
) -> None:
    """Assert exactly which tasks of ``result`` ran, were cached, failed or were skipped.

    Each state given must match as a set; a state not given is not checked. On a mismatch
    the message lists every task with its state and reasons (or error).
    """
    __tracebackhide__ = True
    expected = {"ran": ran, "cached": cached, "failed": failed, "skipped": skipped}
    wrong = []
    for state, names in expected.items():
        if names is None:
            continue
        want, got = set(names), set(result.names(state))
        if want != got:
            extra = f" also {sorted(got - want)}" if got - want else ""
            missing = f" not {sorted(want - got)}" if want - got else ""
            wrong.append(f"{state}:{extra}{missing}")
    if wrong:
        lines = [
            f"  {t.name}: {t.state} {'; '.join(t.reasons) or t.error}".rstrip()
            for t in result.tasks.values()
        ]
        raise AssertionError("\n".join(["tasks not as expected: " + ", ".join(wrong), *lines]))


@pytest.fixture
def taskrun_registry() -> Iterator[Registry]:
    """A fresh registry, active for the test, so ``@task`` in the test lands in it."""
    from taskrun.registry import Registry

    registry = Registry()
    with registry.activate():
        yield registry


@pytest.fixture
def taskrun_project(tmp_path: Path, taskrun_registry: Registry) -> TaskProject:
    """A temporary project (``tmp_path/project``) with its own cache (``tmp_path/cache``)."""
    return TaskProject(tmp_path / "project", tmp_path / "cache", taskrun_registry)


@pytest.fixture
def run_tasks(taskrun_project: TaskProject) -> Callable[..., RunResult]:
    """``run_tasks(*targets, **kwargs)``: taskrun.run in the temporary project."""
    return taskrun_project.run


@pytest.fixture
def override(
    taskrun_project: TaskProject,
) -> Callable[[str | Callable[..., Any], Callable[..., Any]], AbstractContextManager[Any]]:
    """``with override(task, fake): ...`` in the temporary project's registry."""
    return taskrun_project.override
