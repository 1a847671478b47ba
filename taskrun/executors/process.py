"""The process executor: up to ``jobs`` worker processes, each running one call at a time.

Tasks get real parallelism and isolation: a task that hangs past its timeout, segfaults or
calls ``os._exit`` takes down only its worker, which is killed or reaped and replaced, and
the call is reported as failed (``timed_out`` or ``crashed``), never silently re-run.

Processes and threads:

- **Workers** are fresh interpreters (``sys.executable -c ...``, started lazily on demand,
  reused across calls), so nothing is forked from the driver, which has threads. They are
  not ``multiprocessing`` children: spawn/forkserver re-import the driver's ``__main__``
  in every worker, which re-runs a user's script that calls ``taskrun.run()`` without an
  ``if __name__ == "__main__"`` guard. Each worker gets the driver's ``sys.path`` (in a
  file) and one end of a socket pair (a ``multiprocessing.connection.Connection``), and
  runs in its own session, so Ctrl-C in the terminal reaches only the driver (which then
  cancels) and killing the worker's process group also kills whatever the task started;
  ``sh(...)`` commands run in process groups of their own, which the worker kills when it
  gets SIGTERM or exits.
  A worker exits when the driver closes the connection, and kills its group if the driver
  dies without doing so (it polls its parent id).
- **One dispatcher thread** in the driver, started with the first call, owns the workers:
  it hands queued calls to idle workers, waits on all connections at once
  (``multiprocessing.connection.wait``), resolves futures, and enforces deadlines.
  ``submit``/``cancel``/``shutdown`` only touch the queue and flags under a lock and wake
  it through a pipe.

A worker's file descriptors 1 and 2 point at its own capture file for the duration of a
call (see ``trampoline.run_pickled``), so when a worker dies mid-call or is killed at a
deadline, the driver still reports what the task printed up to then, including the
traceback ``faulthandler`` writes there on a fatal signal (a segfault is a crash, and shows
as one). On the SIGTERM that stops a worker, ``faulthandler`` writes the stack to a file
of its own instead: at a timeout the driver turns the task's own frames in it into the
outcome's traceback (where the task was stuck, under a heading that says so); at a cancel
it drops it. A stack of taskrun's worker frames in a task's output reads as a crash inside
taskrun, and neither a timeout nor a cancel is one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import faulthandler
import itertools
import json
import linecache
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait

from taskrun.errors import UsageError
from taskrun.executors.base import (
    Call,
    Executor,
    Outcome,
    cancelled_outcome,
    describe_exception,
    resolved,
    settle,
    timed_out_outcome,
)
from taskrun.executors.trampoline import decode_result, encode_call, run_pickled
from taskrun.shell import GROUPS, kill_journaled
from taskrun.streaming import (
    TAIL_INTERVAL,
    CallbackChannel,
    FileTail,
    decode_progress,
    encode_progress,
    logging_setup,
    set_channel,
    use_logging_setup,
)

__all__ = ["ProcessExecutor", "worker_main"]

_HELLO = b"H"  # a worker's first message: booted, ready for calls
_PROGRESS = b"P"  # a worker's message during a call: taskrun.progress() was called
_BOOT = (
    "import sys, json; sys.path[:] = json.load(open(sys.argv[3])); "
    "from taskrun.executors.process import worker_main; "
    "worker_main(int(sys.argv[1]), sys.argv[2])"
)
_DUMP_WAIT = 0.5  # seconds a terminated worker gets to write where it was stuck
_POLL = 0.01  # perf: how often dying workers are checked; only while some are dying
# A frame line of faulthandler's dump (the same in Python 3.10 to 3.13).
_DUMP_FRAME = re.compile(r'^  File "(?P<file>.*)", line (?P<line>\d+) in (?P<name>.*)$')
# The worker's own frames (worker_main, the trampoline, call_function) live here.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@dataclass(eq=False, slots=True)
class _Job:
    call: Call
    payload: bytes
    future: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)


@dataclass(eq=False, slots=True)
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    capture_path: str
    ready: bool = False  # said hello; the deadline of a call starts only then
    job: _Job | None = None
    started: float | None = None  # time.perf_counter() when its job reached a ready worker
    deadline: float | None = None  # time.monotonic()
    tail: FileTail | None = None  # follows the capture file while a call runs (live output)


class ProcessExecutor(Executor):
    """Runs calls in up to ``jobs`` reusable worker processes.

    ``grace`` is how long a worker gets between SIGTERM and SIGKILL when it is stopped.
    Arguments and products cross the process boundary, so they must be picklable (by
    cloudpickle); a call whose arguments cannot be pickled fails at submit, a product that
    cannot be pickled fails the call.
    """

    name = "process"
    announces_start = True

    def __init__(self, jobs: int, *, grace: float = 1.0) -> None:
        super().__init__(jobs)
        self.grace = grace
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._closing = False
        self._kill_requested = False
        self._cancel_done = threading.Event()
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        # Owned by the dispatcher thread alone:
        self._workers: list[_Worker] = []
        self._dying: list[tuple[_Worker, float]] = []  # (worker, when to SIGKILL)
        self._tmpdir: str | None = None
        self._serial = itertools.count(1)

    # -- the caller's side ----------------------------------------------------------------

    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        try:
            payload = encode_call(call)
        except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
            return resolved(
                Outcome(
                    task=call.task,
                    ok=False,
                    error=(
                        "cannot send the task to a worker process, its function or arguments"
                        f" cannot be pickled: {describe_exception(exc)}"
                    ),
                )
            )
        job = _Job(call, payload)
        with self._lock:
            if self._closing:
                raise UsageError("the process executor was shut down; make a new one")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._dispatch, name="taskrun-process-dispatcher", daemon=True
                )
                self._thread.start()
            self._wake_locked()
        return job.future

    def cancel(self) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            active = self._thread is not None and not self._closing
            if active:
                self._cancel_done.clear()
                self._kill_requested = True
                self._wake_locked()
        for job in queued:
            settle(job.future, cancelled_outcome(job.call))
        if active and threading.current_thread() is not self._thread:
            # Return only once running calls are resolved too, so a caller that then
            # waits on its futures does not wait on killed workers.
            self._cancel_done.wait(timeout=self.grace + 10)

    def shutdown(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            thread = self._thread
            if thread is not None:
                self._wake_locked()
        for job in queued:
            settle(job.future, cancelled_outcome(job.call))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.grace + 10)
        if thread is None or not thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _wake_locked(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._wake_w.send_bytes(b"")

    # -- the dispatcher thread ------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:
            # A bug here must not leave futures unresolved (the scheduler would wait
            # forever): fail everything, stop the workers, then let the error show.
            with self._lock:
                self._closing = True
                jobs = list(self._queue)
                self._queue.clear()
            jobs += [w.job for w in self._workers if w.job is not None]
            for worker in self._workers:
                _signal_group(worker.proc.pid, signal.SIGKILL)
            error = f"internal error in the process executor: {describe_exception(exc)}"
            for job in jobs:
                settle(job.future, Outcome(task=job.call.task, ok=False, error=error))
            raise

    def _step(self) -> bool:
        """One round: obey cancel/shutdown, start calls, wait, handle what happened."""
        with self._lock:
            closing = self._closing
            kill, self._kill_requested = self._kill_requested, False
        if kill or closing:
            self._stop_running()
            if kill:
                self._cancel_done.set()
        if closing:
            self._close_workers()
            return False
        with self._lock:
            idle = sum(1 for w in self._workers if w.job is None)
            free = idle + self.jobs - len(self._workers)
            jobs = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        for job in jobs:
            self._start(job)
        by_conn = {w.conn: w for w in self._workers}
        for ready in wait([self._wake_r, *by_conn], self._next_timeout()):
            if ready is self._wake_r:
                with self._lock:
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                    self._wake_pending = False
            else:
                self._receive(by_conn[ready])  # type: ignore[index]
        for worker in self._workers:
            if worker.tail is not None:
                worker.tail.poll()
        self._expire()
        self._reap_dying()
        return True

    def _start(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # the caller cancelled it while queued
        # Prefer a booted worker; else one still booting; else start one.
        idle = [w for w in self._workers if w.job is None]
        worker = max(idle, key=lambda w: w.ready, default=None)
        if worker is None:
            try:
                worker = self._spawn()
            except OSError as exc:
                settle(
                    job.future,
                    Outcome(
                        task=job.call.task,
                        ok=False,
                        error=f"cannot start a worker process: {describe_exception(exc)}",
                    ),
                )
                return
        worker.job = job
        if self.feed is not None:
            # Empty the capture file before the call starts, so that what the tail reads
            # is this call's (the worker truncates it again when it starts the call).
            with contextlib.suppress(OSError):
                os.truncate(worker.capture_path, 0)
            worker.tail = FileTail(worker.capture_path, job.call.task, self.feed)
            self.feed.started(job.call.task)
        # It died while idle: its connection reads EOF next and the call fails.
        with contextlib.suppress(OSError):
            worker.conn.send((job.payload, job.call.cwd, logging_setup()))
        if worker.ready:
            self._arm(worker)

    def _spawn(self) -> _Worker:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="taskrun-workers-")
        serial = next(self._serial)
        capture_path = os.path.join(self._tmpdir, f"worker-{serial}.out")
        # The driver's sys.path goes in a file: as one argument it could pass Linux's
        # 128 KiB limit for a single argument (MAX_ARG_STRLEN).
        path_file = os.path.join(self._tmpdir, f"worker-{serial}.path")
        with open(path_file, "w", encoding="utf-8") as fh:
            json.dump(sys.path, fh)
        ours, theirs = socket.socketpair()
        try:
            with open(capture_path, "wb") as log:
                fd = theirs.fileno()
                proc = subprocess.Popen(
                    [sys.executable, "-c", _BOOT, str(fd), capture_path, path_file],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(fd,),
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(proc, Connection(ours.detach()), capture_path)
        self._workers.append(worker)
        return worker

    def _arm(self, worker: _Worker) -> None:
        assert worker.job is not None
        worker.started = time.perf_counter()
        timeout = worker.job.call.timeout
        worker.deadline = None if timeout is None else time.monotonic() + timeout

    def _next_timeout(self) -> float | None:
        deadlines = [w.deadline for w in self._workers if w.deadline is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        if self._dying:
            timeout = _POLL if timeout is None else min(timeout, _POLL)
        if any(w.tail is not None for w in self._workers):
            timeout = TAIL_INTERVAL if timeout is None else min(timeout, TAIL_INTERVAL)
        return timeout

    def _receive(self, worker: _Worker) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(worker)
            return
        if data == _HELLO:
            worker.ready = True
            if worker.job is not None:
                self._arm(worker)
            return
        if data[:1] == _PROGRESS:
            if worker.tail is not None:
                worker.tail.poll()  # what the task printed before reporting comes first
            if worker.job is not None and self.feed is not None:
                try:
                    report = decode_progress(data[1:])
                except ValueError:
                    return
                self.feed.progress(worker.job.call.task, *report)
            return
        _drain(worker)
        job, worker.job, worker.deadline = worker.job, None, None
        if job is None:
            return
        try:
            outcome = decode_result(job.call.task, data)
        except Exception as exc:  # noqa: BLE001 - a garbled message is a failure, not a hang
            outcome = Outcome(
                task=job.call.task,
                ok=False,
                error=f"unreadable result from the worker process: {describe_exception(exc)}",
            )
        settle(job.future, outcome)

    def _lost(self, worker: _Worker) -> None:
        """The worker's connection closed: it died (or closed it). Fail its call as crashed."""
        self._workers.remove(worker)
        _drain(worker)
        # The dump is complete: faulthandler wrote it before the worker closed the connection.
        stack = _read(_stack_path(worker.capture_path))
        output = _bury(worker, patience=self.grace)
        job = worker.job
        if job is None:
            return
        code = worker.proc.returncode
        if code is None or code >= 0:
            how = f"exited with code {code}"
        else:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        if worker.ready:
            error = f"the worker process {how} while running the task"
        else:
            error = (
                f"the worker process {how} while starting; is taskrun importable by"
                f" {sys.executable}? (its output says more)"
            )
        duration = 0.0 if worker.started is None else time.perf_counter() - worker.started
        settle(
            job.future,
            Outcome(
                task=job.call.task,
                ok=False,
                error=error,
                traceback=_where(stack, "Where it was when its worker was stopped"),
                output=output,
                duration=duration,
                crashed=True,
            ),
        )

    def _expire(self) -> None:
        now = time.monotonic()
        late = [w for w in self._workers if w.deadline is not None and w.deadline <= now]
        for worker, output in zip(late, self._terminate(late), strict=True):
            assert worker.job is not None and worker.started is not None
            duration = time.perf_counter() - worker.started
            outcome = timed_out_outcome(worker.job.call, output=output, duration=duration)
            stack = _read(_stack_path(worker.capture_path))
            where = _where(stack, "Where it was when it timed out")
            settle(worker.job.future, replace(outcome, traceback=where))

    def _stop_running(self) -> None:
        # A cancelled task gets no stack: it was stopped for another task's failure or a
        # Ctrl-C, and where it was then says nothing about either.
        busy = [w for w in self._workers if w.job is not None]
        for worker, output in zip(busy, self._terminate(busy), strict=True):
            assert worker.job is not None
            started = worker.started
            duration = 0.0 if started is None else time.perf_counter() - started
            settle(
                worker.job.future,
                cancelled_outcome(
                    worker.job.call,
                    running=True,
                    output=output,
                    duration=duration,
                ),
            )

    def _terminate(self, workers: list[_Worker]) -> list[str]:
        """SIGTERM ``workers`` (whole process groups); return what each had printed.

        Waits up to _DUMP_WAIT for them to exit, so that their output is complete (and the
        stack faulthandler writes on SIGTERM, see _stack_path). SIGKILL follows after
        ``grace`` if needed.
        """
        if not workers:
            return []
        for worker in workers:
            self._workers.remove(worker)
            _signal_group(worker.proc.pid, signal.SIGTERM)
        end = time.monotonic() + min(self.grace, _DUMP_WAIT)
        while time.monotonic() < end and not all(_exited(w.proc) for w in workers):
            time.sleep(_POLL)
        for worker in workers:
            _drain(worker)
        outputs = [_read(w.capture_path) for w in workers]
        kill_at = time.monotonic() + self.grace
        self._dying.extend((w, kill_at) for w in workers)
        return outputs

    def _reap_dying(self) -> None:
        now = time.monotonic()
        still: list[tuple[_Worker, float]] = []
        for worker, kill_at in self._dying:
            if _exited(worker.proc):
                _bury(worker, patience=0)
            else:
                if now >= kill_at:
                    _signal_group(worker.proc.pid, signal.SIGKILL)
                still.append((worker, kill_at))
        self._dying = still

    def _close_workers(self) -> None:
        """At shutdown: let idle workers exit (EOF on their connection), then reap everyone."""
        for worker in self._workers:
            worker.conn.close()
        end = time.monotonic() + self.grace
        for worker in self._workers:
            # Its group too: a task's stray child (`cmd &`, a Popen never waited for) must
            # not outlive the run, holding a pipe open (`taskrun run | cat`).
            _bury(worker, patience=max(0.0, end - time.monotonic()))
        self._workers.clear()
        for worker, _ in self._dying:
            _bury(worker, patience=max(0.0, end - time.monotonic()))
        self._dying.clear()
        self._wake_r.close()
        self._wake_w.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


# -- process plumbing -----------------------------------------------------------------------


def _drain(worker: _Worker) -> None:
    """Send on the rest of what the worker's call printed, and stop following it."""
    if worker.tail is not None:
        tail, worker.tail = worker.tail, None
        tail.finish()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each worker leads its own session, so its group id is its pid


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it (its pid stays ours until reaped)."""
    if proc.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None
    return proc.poll() is not None  # pragma: no cover - platforms without waitid


def _bury(worker: _Worker, *, patience: float, kill_group: bool = True) -> str:
    """Wait up to ``patience`` for ``worker`` to exit, else SIGKILL it; reap it; clean up.

    With ``kill_group``, whatever the task left running in the worker's process group is
    killed too (while the worker is an unreaped zombie, so its group id cannot have been
    reused). Returns what the worker had printed since its last call started.
    """
    proc = worker.proc
    end = time.monotonic() + patience
    while not _exited(proc) and time.monotonic() < end:
        time.sleep(_POLL)
    if not _exited(proc):
        _signal_group(proc.pid, signal.SIGKILL)
    if kill_group:
        _signal_group(proc.pid, signal.SIGKILL)
    # The groups of its sh() commands are sessions of their own: a worker that died
    # without killing them (SIGKILLed past its grace period, crashed) left them running.
    kill_journaled(_journal(worker.capture_path))
    with contextlib.suppress(subprocess.TimeoutExpired):  # pragma: no cover - unkillable (D state)
        proc.wait(timeout=10)
    worker.conn.close()
    output = _read(worker.capture_path)
    for path in (worker.capture_path, _stack_path(worker.capture_path)):
        with contextlib.suppress(OSError):
            os.unlink(path)
    return output


def _journal(capture_path: str) -> str:
    """Where the worker with ``capture_path`` notes its sh() groups (ProcessGroups.keep_journal)."""
    return capture_path + ".groups"


def _stack_path(capture_path: str) -> str:
    """Where the worker with ``capture_path`` has faulthandler write its stack on SIGTERM."""
    return capture_path + ".stack"


def _where(dump: str, heading: str) -> str:
    """The task's own frames in faulthandler's ``dump``, as a traceback under ``heading``.

    The outer frames (the worker's loop, the trampoline, call_function) are taskrun's and
    are dropped; what the task called, the standard library included, is kept. Source
    lines are read here, in the driver (the worker is gone). Empty when the dump has no
    frame of the task (it was stuck in C code that never let the signal in, or never
    reached the task's function).
    """
    frames = [m for m in map(_DUMP_FRAME.match, dump.splitlines()) if m is not None]
    frames.reverse()  # faulthandler lists the innermost first; a traceback the outermost
    while frames and (frames[0]["file"] == "<string>" or frames[0]["file"].startswith(_PACKAGE)):
        del frames[0]
    if not frames:
        return ""
    lines = [f"{heading} (most recent call last):"]
    for frame in frames:
        lines.append(f'  File "{frame["file"]}", line {frame["line"]}, in {frame["name"]}')
        source = linecache.getline(frame["file"], int(frame["line"])).strip()
        if source:
            lines.append(f"    {source}")
    return "\n".join(lines) + "\n"


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# -- the worker process ---------------------------------------------------------------------


def worker_main(fd: int, capture_path: str) -> None:
    """Serve calls from the driver on the connection at ``fd`` until it is closed.

    Runs in the worker process (started by :class:`ProcessExecutor` through ``_BOOT``).
    """
    conn = Connection(fd)
    os.set_inheritable(fd, False)  # a task's child processes must not hold it open
    # A fatal signal (a segfault) is a crash: its traceback goes with the task's output.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # On SIGTERM (a timeout, a cancel): kill the groups of the task's sh() commands (they
    # are sessions of their own, out of reach of the killpg that reached us), ...
    signal.signal(signal.SIGTERM, _on_sigterm)
    # ... after faulthandler wrote where the task was stuck (it chains to the handler), to
    # a file of its own, not the output: the driver shows the task's frames at a timeout
    # (faulthandler, not a Python handler, because it writes even while C code holds the
    # interpreter, a regex that never ends, say).
    stack = open(_stack_path(capture_path), "wb")  # noqa: SIM115 - open while the worker lives
    faulthandler.register(signal.SIGTERM, file=stack, all_threads=False, chain=True)
    GROUPS.keep_journal(_journal(capture_path))
    _watch_parent(os.getppid(), capture_path)
    conn.send_bytes(_HELLO)
    sending = threading.Lock()  # the task's threads may report progress while we answer

    def send_progress(done: float, total: float | None, message: str, when: float) -> None:
        data = _PROGRESS + encode_progress(done, total, message, when)
        with sending:
            conn.send_bytes(data)

    try:
        while True:
            try:
                payload, cwd, logs = conn.recv()
            except EOFError:
                return
            set_channel(CallbackChannel(send_progress), process_wide=True)
            with use_logging_setup(logs):  # the task file's logging.basicConfig() ran in the driver
                result = run_pickled(payload, cwd, capture_path=capture_path)
            set_channel(None, process_wide=True)
            with sending:
                conn.send_bytes(result)
    finally:
        GROUPS.kill()  # what tasks left running (`cmd &`) does not outlive the worker


def _on_sigterm(signum: int, frame: object) -> None:
    """Kill the task's sh() process groups, then die of SIGTERM as if unhandled."""
    GROUPS.kill()
    faulthandler.unregister(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _watch_parent(parent: int, capture_path: str) -> None:
    """Kill this worker's process group if the driver dies without closing the connection."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        # The driver cannot clean up after us any more: remove our file (and the folder,
        # once the last worker has removed its own).
        for remove, path in (
            (os.unlink, capture_path),
            (os.unlink, _stack_path(capture_path)),
            (os.rmdir, os.path.dirname(capture_path)),
        ):
            with contextlib.suppress(OSError):
                remove(path)
        GROUPS.kill()
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="taskrun-parent-watch", daemon=True).start()
