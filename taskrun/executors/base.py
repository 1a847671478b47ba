"""The executor contract: what the scheduler hands over, what comes back, and the base class.

The scheduler builds a :class:`Call` for each task it runs and gives it to an
:class:`Executor`, which returns a :class:`concurrent.futures.Future` that always resolves
to an :class:`Outcome`. Whatever the task does (returns, raises, prints, hangs past its
timeout, kills its worker) becomes fields of the outcome; the future itself never raises
the user's exception. Executors run user code and nothing else: fingerprints, the cache and
type checks stay in the driver.

The helpers here (:func:`call_function`, :func:`describe_exception`,
:func:`format_user_traceback`) are shared by every backend, including the worker side of
process-based ones, so they import nothing but the standard library.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from taskrun.errors import UsageError

__all__ = [
    "Call",
    "Executor",
    "Outcome",
    "call_function",
    "cancelled_outcome",
    "describe_exception",
    "format_user_traceback",
    "resolved",
    "settle",
    "timed_out_outcome",
]

# Frames from files under this directory are taskrun's own (trampoline, executors, the
# `sh` helper) and are dropped from the tracebacks users see.
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at running one task: the function, its arguments, where to run it."""

    task: str  # task name, for messages
    fn: Callable[..., Any]  # may come from a task file loaded by path: not importable by name
    kwargs: Mapping[str, object]
    cwd: str  # the project root: the task runs with it as its working directory
    timeout: float | None  # seconds; None = no limit
    attempt: int = 1
    # What the task declares about files (relative posix paths / globs). Executors whose
    # workers share the project directory ignore them; one that runs elsewhere ships the
    # input files there and brings the outputs back.
    inputs: tuple[str, ...] = ()  # the declared input files that exist, expanded
    outputs: tuple[str, ...] = ()  # the declared output globs


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended. ``ok`` is True only when the function returned."""

    task: str
    ok: bool
    value: object = None  # the product, when ok
    error: str = ""  # when not ok: one line, such as "ValueError: bad input"
    traceback: str = ""  # trimmed to the user's frames
    output: str = ""  # stdout and stderr of the task, interleaved in order
    duration: float = 0.0  # seconds spent in the task function
    timed_out: bool = False
    crashed: bool = False  # the worker process died: failed, never silently re-run
    cancelled: bool = False  # stopped by Executor.cancel()/shutdown() before it finished
    # The qualified names of the exception's classes, its own first: what retry_on= matches
    # (exceptions themselves may not survive the trip back from a worker).
    error_types: tuple[str, ...] = ()


_E = TypeVar("_E", bound="Executor")


class Executor(ABC):
    """Runs calls, at most ``jobs`` at a time, and resolves a future per call.

    Contract for implementations:

    - :meth:`submit` never raises for anything the task does, and the future it returns
      always resolves to an :class:`Outcome` (never to an exception). Submitting to an
      executor that was shut down raises :class:`UsageError`.
    - :meth:`cancel` resolves every call not yet finished as ``cancelled``: queued calls
      never start, running ones are stopped where the backend can stop them (processes are
      killed) and abandoned where it cannot (threads run on, their result is dropped).
      The executor stays usable.
    - :meth:`shutdown` cancels what is left, releases workers, and is idempotent.
    - A future the caller cancels itself (``future.cancel()``) before it starts is skipped.
    """

    name: ClassVar[str]
    # Whether the executor tells its feed when a call leaves the queue for a slot
    # (feed.started); if not, the scheduler counts a call as started when it submits it.
    announces_start: ClassVar[bool] = False
    # Set by whoever runs the executor (taskrun.project.execute) before the first submit:
    # where live output, progress and starts go (a taskrun.streaming.Feed). None: nowhere.
    feed: Any = None

    def __init__(self, jobs: int) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise UsageError(
                f"executor '{self.name}': jobs must be a whole number of at least 1, got {jobs!r}"
            )
        self.jobs = jobs

    def sink_for(self, call: Call) -> Any:
        """The buffer a call running in this process writes its output to."""
        if self.feed is None:
            import io

            return io.StringIO()
        return self.feed.sink_for(call.task)

    @property
    def slots(self) -> int | None:
        """How many calls the scheduler keeps in flight at once; None: no limit.

        The scheduler submits a call only when it has a slot, so that nothing waits in an
        executor's queue holding its fingerprint's lock, and fail-fast has nothing queued
        to drop.
        """
        return self.jobs

    @abstractmethod
    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        """Start (or queue) ``call``; the future resolves to its :class:`Outcome`."""

    def cancel(self) -> None:  # noqa: B027 - a no-op is the right default (inline)
        """Resolve every unfinished call as cancelled; stop running ones where possible."""

    def shutdown(self) -> None:  # noqa: B027
        """Cancel what is left and release workers; safe to call more than once."""

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.cancel()
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} jobs={self.jobs}>"


# -- helpers shared by the backends ---------------------------------------------------------


def describe_exception(exc: BaseException) -> str:
    """One line naming the exception's type and its message: ``ValueError: bad input``."""
    cls = type(exc)
    module = getattr(cls, "__module__", "")
    name = cls.__qualname__
    if module not in ("builtins", "__main__", "", None):
        name = f"{module}.{name}"
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure it describes
        text = "<exception str() failed>"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return name
    more = " [...]" if len(lines) > 1 else ""
    return f"{name}: {lines[0].strip()}{more}"


def format_user_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (chained causes included) without taskrun's frames."""
    te = traceback.TracebackException.from_exception(exc)
    _trim(te, set())
    return "".join(te.format())


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:  # chains can loop through __context__
        return
    seen.add(id(te))
    kept = [f for f in te.stack if not os.path.abspath(f.filename).startswith(_OWN_DIR)]
    te.stack = traceback.StackSummary.from_list(kept)
    for linked in (te.__cause__, te.__context__):
        if linked is not None:
            _trim(linked, seen)
    for sub in getattr(te, "exceptions", None) or ():  # exception groups
        _trim(sub, seen)


def call_function(
    task: str, fn: Callable[..., Any], kwargs: Mapping[str, object], *, interruptible: bool
) -> Outcome:
    """Call ``fn(**kwargs)`` in this thread and describe how it ended (``output`` left empty).

    With ``interruptible``, a KeyboardInterrupt propagates (the inline executor runs in the
    driver's main thread, where Ctrl-C must reach the scheduler); otherwise it is a failure
    like any other exception. SystemExit is always a failure: ``sys.exit()`` in a task must
    not end the driver.
    """
    start = time.perf_counter()
    try:
        value = fn(**kwargs)
    except KeyboardInterrupt as exc:
        if interruptible:
            raise
        return _failure(task, exc, time.perf_counter() - start)
    except BaseException as exc:  # noqa: BLE001 - the task's failure is data, not our error
        marker = getattr(exc, "taskrun_skip_marker", None)
        if marker is not None:
            # taskrun.skip(): a result, not a failure; the driver stores it like a product.
            return Outcome(task=task, ok=True, value=marker, duration=time.perf_counter() - start)
        return _failure(task, exc, time.perf_counter() - start)
    return Outcome(task=task, ok=True, value=value, duration=time.perf_counter() - start)


def _failure(task: str, exc: BaseException, duration: float) -> Outcome:
    from taskrun.rules import exception_names

    return Outcome(
        task=task,
        ok=False,
        error=describe_exception(exc),
        traceback=format_user_traceback(exc),
        duration=duration,
        error_types=exception_names(exc),
    )


def timed_out_outcome(call: Call, *, output: str = "", duration: float = 0.0) -> Outcome:
    """The outcome of a call stopped at its deadline."""
    return Outcome(
        task=call.task,
        ok=False,
        error=f"timed out after {call.timeout:g}s",
        output=output,
        duration=duration,
        timed_out=True,
    )


def cancelled_outcome(
    call: Call, *, running: bool = False, output: str = "", duration: float = 0.0
) -> Outcome:
    """The outcome of a call stopped by cancel() or shutdown() before it finished."""
    return Outcome(
        task=call.task,
        ok=False,
        error="cancelled while it ran" if running else "cancelled before it started",
        output=output,
        duration=duration,
        cancelled=True,
    )


def resolved(outcome: Outcome) -> concurrent.futures.Future[Outcome]:
    """A future that is already done with ``outcome``."""
    future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
    future.set_result(outcome)
    return future


def settle(future: concurrent.futures.Future[Outcome], outcome: Outcome) -> None:
    """Resolve ``future`` unless the caller cancelled it meanwhile."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(outcome)
