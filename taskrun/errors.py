"""The one error tree of taskrun.

Every error taskrun raises on purpose is a :class:`TaskrunError`; the class carries the
exit code the command line turns it into (``cli.py`` is the only place that does)::

    TaskrunError (2)
    ├── DefinitionError (2)       a task file's definitions are wrong (import time)
    ├── UsageError (2)            the command line or the Python API was called wrongly
    ├── InvocationError (2)       option values are wrong; carries every problem at once
    ├── ConfigError (2)           [tool.taskrun] or the environment is wrong
    ├── FingerprintError (2)      a value cannot be encoded canonically
    ├── ProbeError (2)            a declared runtime-fact probe (`gcc --version`) failed
    ├── CacheError (1)            the cache cannot be used (I/O, locked, bad archive)
    │   └── IntegrityError (1)    an entry or blob failed its digest or signature
    ├── TaskFailed (1)            a task raised, timed out, or broke its contract
    │   └── ProductTypeError (1)  a product failed its declared type
    ├── ShellError (1)            a command run with `sh(...)` exited non-zero
    └── Interrupted (130)         the run was cancelled by the user (Ctrl-C)
        └── Terminated (143)      the run was stopped by SIGTERM

``TypeCheckError`` is the low-level failure of one value against one type; invocation
gathers them into an :class:`InvocationError`, the scheduler into a :class:`TaskFailed`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CacheError",
    "ConfigError",
    "DefinitionError",
    "FingerprintError",
    "IntegrityError",
    "Interrupted",
    "InvocationError",
    "ProbeError",
    "Problem",
    "ProductTypeError",
    "ShellError",
    "TaskFailed",
    "TaskrunError",
    "Terminated",
    "TypeCheckError",
    "UsageError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    if len(close) == 1:
        return f" (did you mean '{close[0]}'?)"
    listed = ", ".join(f"'{c}'" for c in close)
    return f" (did you mean one of {listed}?)"


class TaskrunError(Exception):
    """Base of every error taskrun raises on purpose."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class DefinitionError(TaskrunError):
    """A task or type definition is wrong; raised while the task file is imported."""


class UsageError(TaskrunError):
    """The command line or the Python API was used wrongly."""


class ConfigError(TaskrunError):
    """A setting in ``[tool.taskrun]`` or the environment is wrong."""


class FingerprintError(TaskrunError):
    """A value cannot be encoded canonically, so it cannot enter a fingerprint."""


class ProbeError(TaskrunError):
    """A declared runtime-fact probe (such as ``gcc --version``) failed."""


class TypeCheckError(TaskrunError):
    """One value failed one type: unparsable text, wrong kind, or a false predicate."""

    def __init__(self, message: str, *, type_name: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an invocation: where it is and what to do."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class InvocationError(TaskrunError):
    """Option values or targets are wrong. Carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} with this invocation; nothing was run:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class CacheError(TaskrunError):
    """The cache cannot be used as asked."""

    exit_code = 1


class IntegrityError(CacheError):
    """An entry or blob failed its digest or signature check."""


class TaskFailed(TaskrunError):
    """A task raised, timed out, or broke its contract."""

    exit_code = 1

    def __init__(self, task: str, message: str) -> None:
        super().__init__(f"task '{task}' failed: {message}")
        self.task = task
        self.reason = message


class ProductTypeError(TaskFailed):
    """A task's product failed its declared type; the product is not cached."""


class ShellError(TaskrunError):
    """A command run with ``sh(..., check=True)`` failed; the message ends with its tail."""

    exit_code = 1

    def __init__(self, message: str, *, command: str, returncode: int | None) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode


class Interrupted(TaskrunError):
    """The run was cancelled (Ctrl-C); nothing in flight was recorded."""

    exit_code = 130


class Terminated(Interrupted):
    """The run was stopped by SIGTERM, cleaned up as after Ctrl-C (exit code 128 + 15)."""

    exit_code = 143
