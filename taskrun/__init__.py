"""taskrun: a build-system-style task runner with a result cache you can trust.

Only the public API lives here; see the docs for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskrun.api import run, start
from taskrun.errors import (
    DefinitionError,
    InvocationError,
    TaskFailed,
    TaskrunError,
)
from taskrun.files import Dir, File
from taskrun.globs import optional
from taskrun.outcome import Outcome, cancelled, skip
from taskrun.registry import Registry, default_registry, define_type, task

if TYPE_CHECKING:
    from taskrun.digests import register_digest
    from taskrun.scheduler import RunResult, TaskResult
    from taskrun.shell import sh

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

__all__ = [
    "DefinitionError",
    "Dir",
    "File",
    "InvocationError",
    "Outcome",
    "Registry",
    "RunResult",
    "TaskFailed",
    "TaskResult",
    "TaskrunError",
    "__version__",
    "cancelled",
    "default_registry",
    "define_type",
    "optional",
    "progress",
    "register_digest",
    "run",
    "sh",
    "skip",
    "start",
    "task",
]


def __getattr__(name: str) -> Any:
    # perf: `sh` lives with the shell helpers; importing it lazily keeps `import taskrun`
    # (and so `taskrun list`) free of subprocess machinery it does not need.
    if name == "sh":
        from taskrun.shell import sh

        return sh
    if name in ("RunResult", "TaskResult"):  # perf: they live with the scheduler
        from taskrun import scheduler

        return getattr(scheduler, name)
    if name == "progress":
        from taskrun.streaming import progress

        return progress
    if name == "register_digest":
        # perf: canonical forms pull in decimal, fractions and uuid; only a task file
        # that registers one (or a run that digests a product) needs them.
        from taskrun.digests import register_digest

        return register_digest
    raise AttributeError(f"module 'taskrun' has no attribute {name!r}")
