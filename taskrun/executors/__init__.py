"""Executors: where task functions run.

Every backend implements the small :class:`Executor` base class (``base.py``): the
scheduler submits a :class:`Call` and gets a future that always resolves to an
:class:`Outcome`. Choose one by name with :func:`make_executor`:

- ``inline``: in the driver's own thread, one call at a time (debugging).
- ``thread``: ``jobs`` daemon threads in the driver (I/O- and subprocess-bound tasks).
- ``process``: ``jobs`` reusable worker processes (CPU-bound tasks, isolation).
- ``dask``: a Dask cluster (optional extra; ``taskrun.executors.dask``, imported lazily).

:class:`MockExecutor` is the test double.
"""

from __future__ import annotations

import importlib
from typing import Any

from taskrun.errors import UsageError, did_you_mean
from taskrun.executors.base import Call, Executor, Outcome
from taskrun.executors.inline import InlineExecutor
from taskrun.executors.mock import MockExecutor
from taskrun.executors.process import ProcessExecutor
from taskrun.executors.thread import ThreadExecutor

__all__ = [
    "EXECUTOR_NAMES",
    "Call",
    "Executor",
    "InlineExecutor",
    "MockExecutor",
    "Outcome",
    "ProcessExecutor",
    "ThreadExecutor",
    "executor_class",
    "make_executor",
]

EXECUTOR_NAMES: tuple[str, ...] = ("inline", "thread", "process", "dask")

_BUILTIN: dict[str, type[Executor]] = {
    "inline": InlineExecutor,
    "thread": ThreadExecutor,
    "process": ProcessExecutor,
}
# Imported on first use, so taskrun works without the optional dependencies.
# name -> (module, class, the extra that installs what it needs)
_LAZY: dict[str, tuple[str, str, str]] = {
    "dask": ("taskrun.executors.dask", "DaskExecutor", "taskrun[dask]"),
}


def executor_class(name: str) -> type[Executor]:
    """The executor class called ``name``; a :class:`UsageError` names the choices."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _LAZY:
        module_name, class_name, extra = _LAZY[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise UsageError(
                    f"the '{name}' executor is not available in this version of taskrun"
                ) from None
            raise UsageError(
                f"the '{name}' executor needs {exc.name!r}, which is not installed;"
                f" install it with: pip install '{extra}'"
            ) from exc
        cls: type[Executor] = getattr(module, class_name)
        return cls
    choices = ", ".join(EXECUTOR_NAMES)
    raise UsageError(
        f"unknown executor '{name}'{did_you_mean(name, EXECUTOR_NAMES)}; choose one of: {choices}"
    )


def make_executor(name: str, jobs: int, **options: Any) -> Executor:
    """A new executor ``name`` running up to ``jobs`` calls at once; ``options`` go to it."""
    return executor_class(name)(jobs, **options)
