"""The inline executor: each call runs in the thread that submits it, one at a time.

For debugging (a breakpoint in a task just works) and for runs where parallelism does not
pay. ``jobs`` is accepted and ignored.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

from taskrun.errors import UsageError
from taskrun.executors.base import Call, Executor, Outcome, resolved, timed_out_outcome
from taskrun.executors.local import LocalSession, run_here
from taskrun.shell import ProcessGroups

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Runs each call to completion inside :meth:`submit`; the future is already done."""

    name = "inline"

    def __init__(self, jobs: int = 1) -> None:
        super().__init__(jobs)
        self._session = LocalSession()
        self._groups = ProcessGroups()  # of the calls' sh() commands; see cancel()
        self._closed = False

    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        if self._closed:
            raise UsageError("the inline executor was shut down; make a new one")
        self._session.enter(call.cwd)
        sink = self.sink_for(call)
        if call.timeout is None:
            # In the calling thread, so Ctrl-C raises KeyboardInterrupt out of submit().
            return resolved(run_here(call, sink, interruptible=True, groups=self._groups.child()))
        return resolved(_run_with_deadline(call, sink, self._groups.child()))

    def cancel(self) -> None:
        # Ctrl-C or SIGTERM reached the driver while a call ran (or a timed-out call's
        # thread runs on): kill what its commands started; later calls may start more.
        self._groups.kill()
        self._groups.reopen()

    def shutdown(self) -> None:
        self._closed = True
        self._groups.kill()  # what tasks left running (`cmd &`) does not outlive the run
        self._session.close()


def _run_with_deadline(call: Call, sink: Any, groups: ProcessGroups) -> Outcome:
    """Run ``call`` on a helper thread and stop waiting for it at its deadline.

    Why a thread: a function cannot be stopped from outside in the thread that runs it,
    and ignoring ``timeout=`` would hang the whole run on a stuck task. So a call with a
    timeout runs on a daemon helper while this thread waits (still interruptible by
    Ctrl-C); at the deadline it is abandoned and reported as timed out. The abandoned
    thread runs on in the background until it returns or the process exits, and what it
    does after the deadline is ignored; the commands it started with ``sh()`` are killed
    (with their process groups) and it cannot start new ones. The price: such a call is
    not on the main thread (``signal.signal`` fails there), and a breakpoint in it is
    awkward.
    """
    box: list[Outcome] = []

    def target() -> None:
        box.append(run_here(call, sink, interruptible=False, groups=groups))

    helper = threading.Thread(target=target, name=f"taskrun-inline-{call.task}", daemon=True)
    start = time.perf_counter()
    helper.start()
    helper.join(call.timeout)
    if box:
        return box[0]
    groups.kill()  # the thread runs on, abandoned; what its commands started does not
    finish = getattr(sink, "finish", None)
    if finish is not None:
        finish(wait=0)
    return timed_out_outcome(call, output=sink.getvalue(), duration=time.perf_counter() - start)
