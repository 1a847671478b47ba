"""The thread executor: ``jobs`` daemon worker threads in the driver process.

Cheap to start and products need no pickling, but tasks share the interpreter (the GIL,
``os.chdir``, ``os.environ``). Best for tasks that wait on I/O or subprocesses.

Threading model: ``jobs`` worker threads take calls from one queue; a watchdog thread
(started with the first call that has a timeout) resolves overrunning calls at their
deadline. A thread cannot be killed, so a call that times out, or is running when
:meth:`ThreadExecutor.cancel` is called, is *abandoned*: its future resolves right away,
its thread keeps running the user's code in the background (its result is dropped, and it
exits when the code returns) and a fresh worker takes its place, so the pool stays at
``jobs``; the commands it started with ``sh()`` are killed with their process groups, and
it can start no more. All shared state is guarded by one lock; futures are resolved
outside it because their callbacks may submit more work.

Not ``concurrent.futures.ThreadPoolExecutor``: its workers are joined at interpreter exit,
so one stuck task (the very thing a timeout is for) would hang the process on the way out.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from taskrun.errors import UsageError
from taskrun.executors.base import (
    Call,
    Executor,
    Outcome,
    cancelled_outcome,
    settle,
    timed_out_outcome,
)
from taskrun.executors.local import LocalSession, run_here
from taskrun.executors.watchdog import Watchdog
from taskrun.shell import ProcessGroups

__all__ = ["ThreadExecutor"]

_executors = itertools.count(1)


@dataclass(eq=False, slots=True)
class _Job:
    call: Call
    future: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)


@dataclass(eq=False, slots=True)
class _Worker:
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class _Running:
    job: _Job
    worker: _Worker
    sink: Any  # io.StringIO or streaming.LineSink
    started: float  # time.perf_counter()
    groups: ProcessGroups  # of its sh() commands: killed when it is abandoned
    # Set when the call is cancelled while it runs: taskrun.cancelled() in the task reads it.
    cancel: threading.Event = field(default_factory=threading.Event)
    settled: bool = False  # its future has been (or is being) resolved; guarded by the lock


class ThreadExecutor(Executor):
    """Runs calls on a pool of ``jobs`` daemon threads."""

    name = "thread"
    announces_start = True

    def __init__(self, jobs: int) -> None:
        super().__init__(jobs)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # a call was queued, or closing
        self._queue: deque[_Job] = deque()
        self._running: set[_Running] = set()
        self._names = itertools.count(1)
        self.thread_prefix = f"taskrun-thread{next(_executors)}"  # names its threads
        self._live = 0  # worker threads not abandoned
        self._watchdog = Watchdog[_Running](
            self._lock,
            f"{self.thread_prefix}-watchdog",
            expire_locked=self._expire_locked,
            on_expired=self._expired,
        )
        self._closed = False
        self._session = LocalSession()
        self._groups = ProcessGroups()  # every call's, so shutdown kills what tasks left

    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        job = _Job(call)
        with self._lock:
            if self._closed:
                raise UsageError("the thread executor was shut down; make a new one")
            self._session.enter(call.cwd)
            self._queue.append(job)
            while self._live < self.jobs:  # perf: threads start with the first call
                self._spawn_locked()
            self._work.notify()
        return job.future

    def cancel(self) -> None:
        with self._lock:
            pending = self._take_pending_locked()
        _settle_cancelled(pending)

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._take_pending_locked()
            self._work.notify_all()
            self._watchdog.close_locked()
        _settle_cancelled(pending)
        self._groups.kill()  # what tasks left running (`cmd &`) does not outlive the run
        self._session.close()

    # -- internals (names ending in _locked expect the lock held) --------------------------

    def _spawn_locked(self) -> None:
        worker = _Worker()
        self._live += 1
        thread = threading.Thread(
            target=self._serve,
            args=(worker,),
            name=f"{self.thread_prefix}-{next(self._names)}",
            daemon=True,
        )
        thread.start()

    def _abandon_locked(self, worker: _Worker) -> None:
        worker.abandoned = True
        self._live -= 1
        if not self._closed:
            self._spawn_locked()

    def _take_pending_locked(self) -> list[tuple[_Job, _Running | None]]:
        """Unqueue every call and abandon every running one; the caller resolves them."""
        pending: list[tuple[_Job, _Running | None]] = [(job, None) for job in self._queue]
        self._queue.clear()
        for run in self._running:
            if not run.settled:
                run.settled = True
                run.cancel.set()
                self._abandon_locked(run.worker)
                run.groups.kill()
                pending.append((run.job, run))
        self._running.clear()
        return pending

    def _serve(self, worker: _Worker) -> None:
        """A worker thread: run queued calls until closed or abandoned."""
        while True:
            with self._lock:
                while not self._queue and not self._closed and not worker.abandoned:
                    self._work.wait()
                if self._closed or worker.abandoned:
                    return
                job = self._queue.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller cancelled it while queued
                run = _Running(
                    job, worker, self.sink_for(job.call), time.perf_counter(), self._groups.child()
                )
                self._running.add(run)
                if job.call.timeout is not None:
                    self._watchdog.add_locked(job.call.timeout, run)
                if self.feed is not None:
                    # Under the lock: a cancel() that comes after this call was taken up
                    # also comes after its `started` event, so events keep their order.
                    self.feed.started(job.call.task)
            outcome = run_here(
                job.call, run.sink, interruptible=False, cancel=run.cancel, groups=run.groups
            )
            with self._lock:
                self._running.discard(run)
                mine, run.settled = not run.settled, True
            if mine:
                settle(job.future, outcome)

    def _expire_locked(self, run: _Running) -> bool:
        """At its deadline (watchdog, lock held): abandon a call still running."""
        if run.settled:
            return False
        run.settled = True
        self._running.discard(run)
        self._abandon_locked(run.worker)
        run.groups.kill()
        return True

    def _expired(self, runs: list[_Running]) -> None:
        """Resolve the calls the watchdog expired as timed out (without the lock)."""
        for run in runs:
            duration = time.perf_counter() - run.started
            _finish(run.sink)
            output = run.sink.getvalue()
            settle(
                run.job.future,
                timed_out_outcome(run.job.call, output=output, duration=duration),
            )


def _finish(sink: Any) -> None:
    # An abandoned call runs on: what it writes from now on is nobody's business.
    finish = getattr(sink, "finish", None)
    if finish is not None:
        finish(wait=0)


def _settle_cancelled(pending: list[tuple[_Job, _Running | None]]) -> None:
    for job, run in pending:
        if run is None:
            settle(job.future, cancelled_outcome(job.call))
        else:
            _finish(run.sink)
            output, duration = run.sink.getvalue(), time.perf_counter() - run.started
            settle(
                job.future,
                cancelled_outcome(job.call, running=True, output=output, duration=duration),
            )
