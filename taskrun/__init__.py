"""taskrun: a build-system-style task runner with a result cache you can trust.

Only the public API lives here; see the docs for the rest.
"""

from __future__ import annotations

from typing import Any

from taskrun.errors import (
    DefinitionError,
    InvocationError,
    TaskFailed,
    TaskrunError,
)
from taskrun.files import Dir, File
from taskrun.outcome import Outcome, cancelled, skip
from taskrun.registry import Registry, default_registry, define_type, task

__version__ = "0.1.0"

__all__ = [
    "DefinitionError",
    "Dir",
    "File",
    "InvocationError",
    "Outcome",
    "Registry",
    "TaskFailed",
    "TaskrunError",
    "__version__",
    "cancelled",
    "default_registry",
    "define_type",
    "register_digest",
    "run",
    "sh",
    "skip",
    "start",
    "task",
]


def run(*args: Any, **kwargs: Any) -> Any:
    """Run targets and what they need; see :func:`taskrun.project.run`."""
    from taskrun.project import run as _run

    return _run(*args, **kwargs)


def start(*args: Any, **kwargs: Any) -> Any:
    """Start a run in the background; see :func:`taskrun.api.start` (a handle with
    ``status()``, ``cancel()`` and ``result(timeout=)``)."""
    from taskrun.api import start as _start

    return _start(*args, **kwargs)


def __getattr__(name: str) -> Any:
    # perf: `sh` lives with the file helpers; importing it lazily keeps `import taskrun`
    # (and so `taskrun list`) free of subprocess machinery it does not need.
    if name == "sh":
        from taskrun.shell import sh

        return sh
    if name == "register_digest":
        # perf: canonical forms pull in decimal, fractions and uuid; only a task file
        # that registers one (or a run that digests a product) needs them.
        from taskrun.digests import register_digest

        return register_digest
    raise AttributeError(f"module 'taskrun' has no attribute {name!r}")
