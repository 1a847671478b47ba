"""How an upstream task ended, as its dependents with a trigger rule see it; skips; cancellation.

A task with ``run_if="failed"`` or ``run_if="always"`` may run although an upstream failed,
was skipped or was cancelled, so it cannot receive plain products: it gets an
:class:`Outcome` per dependency instead (``.state``, ``.ok``, ``.value``, ``.error``).

``skip("why")`` inside a task ends it as *skipped*: a result like a product (cached, shown
with its reason), whose dependents are skipped too unless their rule says otherwise.

``cancelled()`` is the cooperative check for code running on a thread, which cannot be
killed: it turns True once the run cancelled the call (fail-fast, Ctrl-C, a handle's
``cancel()``). Process and Dask workers are stopped instead.

This module imports nothing but the standard library: workers import it to run calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

__all__ = [
    "OK_STATES",
    "STATES",
    "Outcome",
    "SkipMarker",
    "SkipTask",
    "cancel_scope",
    "cancelled",
    "skip",
    "swap_cancel_event",
]

T = TypeVar("T")

#: Every state a task can end in; the first two mean its product exists.
STATES: tuple[str, ...] = ("ran", "cached", "failed", "skipped", "cancelled")
OK_STATES: frozenset[str] = frozenset({"ran", "cached"})


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """How one upstream task ended: what a task with a trigger rule receives for it.

    ``state`` is one of ran, cached, failed, skipped, cancelled. ``value`` is the product
    when ``ok`` (ran or cached) and raises otherwise; ``error`` says what went wrong (the
    error line of a failure, the reason of a skip or a cancellation).
    """

    task: str
    state: str
    product: T | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the task produced its product (it ran, or its result was cached)."""
        return self.state in OK_STATES

    @property
    def value(self) -> T:
        """The product; asking for it when the task has none raises, naming why."""
        if not self.ok:
            from taskrun.errors import UsageError

            why = f": {self.error}" if self.error else ""
            raise UsageError(
                f"upstream task '{self.task}' has no product, it {self.state}{why};"
                " check outcome.ok (or outcome.state) before reading outcome.value"
            )
        return self.product  # type: ignore[return-value]

    def __repr__(self) -> str:
        detail = f", error={self.error!r}" if self.error else ""
        return f"Outcome(task={self.task!r}, state={self.state!r}{detail})"


@dataclass(frozen=True, slots=True)
class SkipMarker:
    """The product-like result of a task that called :func:`skip`; stored in the cache."""

    reason: str


class SkipTask(BaseException):
    """Raised by :func:`skip`. A BaseException, so ``except Exception`` in a task lets it by."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # Read by the executors (duck-typed, so the worker side needs no import of this).
        self.taskrun_skip_marker = SkipMarker(reason)


def skip(reason: str = "") -> NoReturn:
    """End the calling task as *skipped*, with ``reason``; its dependents skip too.

    A skip is a result: it is cached like a product (the next run skips from the cache
    without calling the task), unless the task has ``cache=False``.
    """
    raise SkipTask(str(reason) or "skipped by the task")


_scope = threading.local()  # .event: the threading.Event of the call this thread runs


def cancelled() -> bool:
    """True once the run has cancelled the task calling this (cooperative, for threads).

    A task on the thread executor cannot be killed: a long loop can call this and return
    early. Elsewhere it is False until the call is stopped (process and Dask workers are
    killed instead; the inline executor runs in the driver, which Ctrl-C interrupts).
    """
    event: threading.Event | None = getattr(_scope, "event", None)
    return event is not None and event.is_set()


@contextmanager
def cancel_scope(event: threading.Event | None) -> Iterator[None]:
    """Make :func:`cancelled` in this thread read ``event`` (executors wrap each call)."""
    previous = swap_cancel_event(event)
    try:
        yield
    finally:
        _scope.event = previous


def swap_cancel_event(event: threading.Event | None) -> threading.Event | None:
    """Make :func:`cancelled` in this thread read ``event``; returns the one it read before.

    :func:`cancel_scope` without the context manager (perf: the inline executor's per-call
    cost); the caller gives the returned event back the same way when the call ends.
    """
    previous: threading.Event | None = getattr(_scope, "event", None)
    _scope.event = event
    return previous
