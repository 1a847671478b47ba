"""``taskrun.start``: a run in the background, with a handle to watch and cancel it.

``taskrun.run`` is the blocking form (``project.run``). ``start`` validates the same way,
right away (a definition or invocation error raises from ``start`` itself), then runs on a
background thread, which becomes the run's driver. The handle reads the driver's state
without locks: each task's state is one string, replaced whole.

The run changes the process's working directory to the project root while it goes (as
``run`` does); code in other threads that uses relative paths sees that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RunHandle", "RunStatus", "start"]


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A snapshot of a background run: each task's state and how far it got."""

    states: Mapping[str, str]  # pending, parked, running, retrying, or how the task ended
    done: int  # tasks that have ended
    total: int
    finished: bool  # the run is over (handle.result() returns at once)

    def names(self, state: str) -> list[str]:
        return [n for n, s in self.states.items() if s == state]


_ENDED = frozenset({"ran", "cached", "failed", "skipped", "cancelled"})


class RunHandle:
    """A run started by :func:`start`: ``status()``, ``cancel()``, ``result(timeout=)``."""

    def __init__(self) -> None:
        self._scheduler_slot: list[Any] = []
        self._done = threading.Event()
        self._outcome: Any = None
        self._error: BaseException | None = None
        self._cancel_reason = ""
        self._lock = threading.Lock()

    def _launch(self, go: Callable[[], Any]) -> None:
        thread = threading.Thread(target=self._main, args=(go,), name="taskrun-start", daemon=True)
        thread.start()

    def _main(self, go: Callable[[], Any]) -> None:
        try:
            self._outcome = go()
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            self._done.set()

    def _attach(self, scheduler: Any) -> None:
        with self._lock:
            self._scheduler_slot.append(scheduler)
            if self._cancel_reason:
                scheduler.request_cancel(self._cancel_reason)

    def status(self) -> RunStatus:
        """Each task's state now (all pending before the run has started)."""
        scheduler = self._scheduler_slot[0] if self._scheduler_slot else None
        states = scheduler.states() if scheduler is not None else {}
        done = sum(1 for s in states.values() if s in _ENDED)
        return RunStatus(states, done, len(states), self._done.is_set())

    def cancel(self) -> None:
        """Stop the run: queued tasks never start, running ones are cancelled where the
        executor can stop them, ``run_if="always"`` tasks still run. Returns at once;
        ``result()`` waits for the end."""
        with self._lock:
            self._cancel_reason = "cancelled by handle.cancel()"
            for scheduler in self._scheduler_slot:
                scheduler.request_cancel(self._cancel_reason)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The :class:`~taskrun.scheduler.RunResult`; waits up to ``timeout`` seconds.

        Raises :class:`TimeoutError` if the run is still going at the timeout, and
        whatever the run raised (a cache error, say) if it did.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"the run is still going after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._outcome


def start(targets: Any = (), **kwargs: Any) -> RunHandle:
    """Start ``taskrun.run(targets, **kwargs)`` in the background; return its handle.

    Definition and invocation errors raise here, before anything runs.
    """
    from taskrun.project import prepare_run

    handle = RunHandle()
    go = prepare_run(targets, on_scheduler=handle._attach, **kwargs)
    handle._launch(go)
    return handle
