"""A test double: an executor that decides outcomes with a handler and records every call.

For testing the scheduler (and users' own tooling) without running task code::

    ex = MockExecutor(handler=lambda call: 42)           # every task returns 42
    ex = MockExecutor(handler=lambda call: Outcome(call.task, ok=False, error="boom"))
    ex = MockExecutor(hold=True)                         # futures wait for release()
    ...
    ex.release("compile")                                # finish the held 'compile' call

The handler gets the :class:`Call` and returns an :class:`Outcome` (used as is) or any
other value (the product of a successful call); an exception it raises becomes a failed
outcome. Without a handler, the task function itself is called, in the calling thread,
without output capture.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

from taskrun.errors import UsageError
from taskrun.executors.base import (
    Call,
    Executor,
    Outcome,
    call_function,
    cancelled_outcome,
    describe_exception,
    resolved,
    settle,
)

__all__ = ["MockExecutor"]

Handler = Callable[[Call], object]


class MockExecutor(Executor):
    """Records calls; resolves them with ``handler`` at once, or on :meth:`release` if held."""

    name = "mock"

    def __init__(
        self, jobs: int = 1, handler: Handler | None = None, *, hold: bool = False
    ) -> None:
        super().__init__(jobs)
        self.handler = handler
        self.hold = hold
        self.calls: list[Call] = []  # every call submitted, in order
        self.cancelled = 0  # how many times cancel() was called
        self.closed = False
        self._lock = threading.Lock()
        self._held: list[tuple[Call, concurrent.futures.Future[Outcome]]] = []

    @property
    def held(self) -> tuple[str, ...]:
        """Task names of the calls waiting for :meth:`release`, in submission order."""
        with self._lock:
            return tuple(call.task for call, _ in self._held)

    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        if self.closed:
            raise UsageError("the mock executor was shut down")
        with self._lock:
            self.calls.append(call)
            if self.hold:
                future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
                self._held.append((call, future))
                return future
        return resolved(self._decide(call))

    def release(self, task: str | None = None) -> int:
        """Resolve the held calls of ``task`` (all held calls if None); return how many."""
        with self._lock:
            chosen = [(c, f) for c, f in self._held if task is None or c.task == task]
            self._held = [(c, f) for c, f in self._held if not (task is None or c.task == task)]
        for call, future in chosen:
            settle(future, self._decide(call))
        return len(chosen)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1
        self._drop_held()

    def shutdown(self) -> None:
        self.closed = True
        self._drop_held()

    def _drop_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for call, future in held:
            settle(future, cancelled_outcome(call))

    def _decide(self, call: Call) -> Outcome:
        if self.handler is None:
            return call_function(call.task, call.fn, call.kwargs, interruptible=True)
        try:
            result = self.handler(call)
        except Exception as exc:  # noqa: BLE001
            return Outcome(task=call.task, ok=False, error=describe_exception(exc))
        if isinstance(result, Outcome):
            return result
        return Outcome(task=call.task, ok=True, value=result)
