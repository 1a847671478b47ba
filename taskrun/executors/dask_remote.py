"""What the Dask executor runs on the workers and the scheduler (importable by reference).

The driver side is :mod:`taskrun.executors.dask`; everything here runs in Dask's processes,
so it imports only what a worker or the scheduler has: taskrun and distributed.

- :func:`run_on_worker` is the Dask task of every call: it checks that the worker sees the
  project (or runs the call in a scratch copy of the files the driver shipped, see
  :mod:`taskrun.executors.shipping`), claims the call, announces its start on
  :data:`TOPIC`, and runs it with the trampoline.
- Claims (see the driver's module docstring): a file made with ``O_EXCL`` in the temporary
  directory on an owned (local) cluster, an entry on the scheduler otherwise
  (:func:`claim_on_scheduler`, :func:`revoke_on_scheduler`, :func:`claim_of`).
- :func:`worker_facts`, :func:`scheduler_facts` and :func:`sees_project` answer the
  driver's questions when it connects and before the first call of a project.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Literal, TextIO

import distributed

from taskrun.executors.shipping import ShipError, Wire, run_shipped, unpack
from taskrun.executors.trampoline import run_pickled
from taskrun.streaming import CallbackChannel, clear_channel, set_channel, use_logging_setup

__all__ = [
    "PROGRESS_TOPIC",
    "REVOKED",
    "TOPIC",
    "ClaimMode",
    "FilesMode",
    "Stamp",
    "capture_path",
    "claim_of",
    "claim_on_scheduler",
    "claim_path",
    "python_version",
    "read_claim",
    "read_text",
    "revoke_on_scheduler",
    "run_on_worker",
    "running_outputs",
    "scheduler_facts",
    "sees_project",
    "source_stamp",
    "unlink",
    "worker_facts",
]

TOPIC = "taskrun-started"  # workers announce the start of each call on it
PROGRESS_TOPIC = "taskrun-progress"  # taskrun.progress() in a call, as {"key", "report"}
REVOKED = "revoked"  # a claim made by the driver: the call was cancelled before it started
POLL = 0.005  # perf: how often a claim file is read again while its worker fills it in
_CLAIM_READ_WAIT = 2.0  # seconds for a worker that just claimed a call to write who it is
_MAX_CLAIMS = 20_000  # claims a scheduler remembers (re-runs and cancels come within seconds)
ClaimMode = Literal["file", "scheduler"]
# How a call finds its files: "shared" (the project at the same path, or fail), "auto"
# (the same, but a worker that does not see it sends the call back to be shipped), "ship"
# (the parcel holds them; run in a scratch directory).
FilesMode = Literal["shared", "auto", "ship"]
Stamp = tuple[str, int, int]  # (path, size, mtime_ns) of the task file the driver loaded

_RUNNING: dict[str, str] = {}  # on a worker: token -> capture file of the call running
# On a worker: shipped calls change the process's working directory and sys.path, so a
# worker with several threads runs them one at a time.
_SHIPPED = threading.Lock()


def python_version() -> str:
    """This interpreter's major.minor version."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def capture_path(token: str) -> str:
    """The file a one-thread worker captures the output of call ``token`` into."""
    return os.path.join(tempfile.gettempdir(), f"taskrun-dask-{token}.out")


def claim_path(token: str) -> str:
    """The claim file of call ``token`` (owned clusters, on this machine)."""
    return os.path.join(tempfile.gettempdir(), f"taskrun-dask-{token}.claim")


def source_stamp(path: str) -> Stamp | None:
    """(path, size, mtime_ns) of the file at ``path`` here; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns)


def read_text(path: str) -> str | None:
    """The text of the file at ``path``; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def unlink(path: str) -> None:
    """Remove the file at ``path`` if it is there."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def read_claim(path: str) -> str:
    """A claim file's text, waiting briefly for the worker that just made it to fill it in."""
    end = time.monotonic() + _CLAIM_READ_WAIT
    while True:
        text = read_text(path) or ""
        if text or time.monotonic() > end:
            return text
        time.sleep(POLL)


def sees_project(cwd: str, stamp: Stamp | None) -> bool:
    """On a worker: whether it sees the project directory, and the task file as the driver."""
    return os.path.isdir(cwd) and (stamp is None or source_stamp(stamp[0]) == stamp)


def run_on_worker(
    payload: bytes,
    cwd: str,
    key: str,
    token: str,
    claims: ClaimMode,
    forget: bool,
    stamp: Stamp | None = None,
    files: FilesMode = "shared",
    parcel: dict[str, Any] | None = None,
    logs: Any = None,
) -> tuple[str, Any, list[Wire]]:
    """The Dask task: run an encoded call; ``("done", result bytes, output files)`` or why not.

    ``("failed", message, [])`` when the call cannot run here, ``("unshared", message,
    [])`` when (in ``"auto"`` mode) this worker does not see the project and the driver
    should ship its files instead, ``("crashed", message, [])`` when its claim shows that
    it started once already (its worker died under it), and ``("cancelled", "", [])`` when
    the driver claimed it first. Output files come back only from a shipped call (in
    ``"ship"`` mode, with ``parcel`` holding the files, see :class:`shipping.Parcels`).
    """
    worker = distributed.get_worker()
    if files != "ship":
        refused = _not_shared(worker.address, cwd, stamp)
        if refused:
            return ("unshared" if files == "auto" else "failed", refused, [])
    with _SHIPPED if files == "ship" else contextlib.nullcontext():
        me = f"{os.getpid()} {worker.address} {time.time()!r}"
        if claims == "file":
            refused = _claim_file(token, me)
        else:
            refused = distributed.get_client().run_on_scheduler(claim_on_scheduler, key, me)
        if refused == REVOKED:
            return ("cancelled", "", [])
        if refused:
            first = [*refused.split(" "), "", ""][1] or "unknown"
            return (
                "crashed",
                f"the Dask worker that ran the task died ({first}), and Dask"
                f" started it again on {worker.address}; taskrun stopped that second run (a"
                " task that crashes its worker fails, it is not run again)",
                [],
            )
        worker.log_event(TOPIC, {"key": key, "worker": worker.address, "pid": os.getpid()})
        # With one thread, the worker runs one call at a time: capture at the descriptor
        # level (child processes, C code), into a file the driver can read if the call
        # never returns.
        path = capture_path(token) if worker.state.nthreads == 1 else None
        if path is not None:
            if not faulthandler.is_enabled():
                # Writes to fd 2, which points at the capture file while a call runs: a
                # segfault leaves the traceback of where it happened in the task's output.
                faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=False)
            _RUNNING[token] = path
        outputs: list[Wire] = []

        def send_progress(done: float, total: float | None, message: str, when: float) -> None:
            report = [done, total, message, when]
            worker.log_event(PROGRESS_TOPIC, {"key": key, "report": report})

        set_channel(CallbackChannel(send_progress))  # this thread runs the call
        try:
            with (
                _worker_logs_aside() if path is not None else contextlib.nullcontext(),
                use_logging_setup(logs if path is not None else None),
            ):
                if parcel is None:
                    data = run_pickled(
                        payload,
                        cwd,
                        capture="fd" if path is not None else "sys",
                        capture_path=path,
                        forget_project_modules=forget,
                    )
                else:
                    data, outputs = run_shipped(
                        payload,
                        cwd,
                        unpack(parcel),
                        parcel["outputs"],
                        scratch_in=worker.local_directory,
                        capture="fd" if path is not None else "sys",
                        capture_path=path,
                        limit=parcel["limit"],
                    )
        except ShipError as exc:
            return ("failed", f"on the Dask worker {worker.address}: {exc}", [])
        finally:
            clear_channel()
            if path is not None:
                _RUNNING.pop(token, None)
                unlink(path)
            if claims == "file":
                unlink(claim_path(token))  # it ran to the end: it cannot start again
    return ("done", data, outputs)


def _not_shared(address: str, cwd: str, stamp: Stamp | None) -> str:
    """Why this worker cannot run a call in the project directory ``cwd``; "" when it can."""
    if not os.path.isdir(cwd):
        return (
            f"the project directory {cwd} does not exist on the Dask worker {address};"
            " the dask executor needs the project at the same path on every worker (a shared"
            " file system) unless it ships the files (ship_files, see docs/dask.md)"
        )
    if stamp is not None and source_stamp(stamp[0]) != stamp:
        return (
            f"the task file {stamp[0]} on the Dask worker {address} is not the one the"
            " driver loaded (missing, or another size or modification time): the workers must"
            " see the project the driver sees, through a shared file system, not a copy (see"
            " docs/dask.md); if you just edited it, the worker's view may lag: run again"
        )
    return ""


_LOG_STREAMS: dict[int, TextIO] = {}  # on a worker: fd -> a stream on a duplicate of it


@contextlib.contextmanager
def _worker_logs_aside() -> Iterator[None]:
    """Keep the worker's own log lines out of a call's descriptor-level capture.

    Log handlers write to the streams on fds 1 and 2, which point at the capture file while
    a call runs; for that time they write to duplicates of the real descriptors instead.
    """
    moved: list[tuple[logging.StreamHandler[Any], Any]] = []
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if not isinstance(handler, logging.StreamHandler):
                continue
            try:
                fd = handler.stream.fileno()
            except (AttributeError, OSError, ValueError):
                continue
            if fd not in (1, 2):
                continue
            stream = _LOG_STREAMS.get(fd)
            if stream is None:
                stream = os.fdopen(os.dup(fd), "w", buffering=1, errors="backslashreplace")
                _LOG_STREAMS[fd] = stream
            moved.append((handler, handler.setStream(stream)))
    try:
        yield
    finally:
        for handler, old in moved:
            if old is not None:
                handler.setStream(old)


def _claim_file(token: str, me: str) -> str:
    """Claim a call on this machine: "" when claimed, else the claim that was there first."""
    path = claim_path(token)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return read_claim(path) or REVOKED
    with os.fdopen(fd, "w") as f:
        f.write(me)
    return ""


def running_outputs(tokens: list[str]) -> dict[str, str]:
    """On a worker: what the calls among ``tokens`` running here have printed so far."""
    found: dict[str, str] = {}
    for token in tokens:
        path = _RUNNING.get(token)
        text = read_text(path) if path else None
        if text is not None:
            found[token] = text
    return found


def worker_facts() -> dict[str, str]:
    """On a worker, at connect: proves taskrun imports there, and says which Python runs it."""
    from taskrun import __version__

    return {"python": python_version(), "taskrun": __version__}


def scheduler_facts(dask_scheduler: Any = None) -> dict[str, object]:
    """On the scheduler, at connect: proves taskrun imports there."""
    return {"allowed_failures": getattr(dask_scheduler, "allowed_failures", None)}


def _scheduler_claims(dask_scheduler: Any) -> OrderedDict[str, str]:
    claims: OrderedDict[str, str] | None = getattr(dask_scheduler, "_taskrun_claims", None)
    if claims is None:
        claims = OrderedDict()
        dask_scheduler._taskrun_claims = claims
    return claims


def claim_on_scheduler(key: str, me: str, dask_scheduler: Any = None) -> str:
    """On the scheduler (in its event loop, so atomic): claim ``key`` for the worker ``me``.

    Returns "" when claimed, else the claim that was there first.
    """
    claims = _scheduler_claims(dask_scheduler)
    first = claims.get(key)
    if first is not None:
        return first
    claims[key] = me
    while len(claims) > _MAX_CLAIMS:
        claims.popitem(last=False)
    return ""


def claim_of(key: str, dask_scheduler: Any = None) -> str:
    """On the scheduler: the claim made for ``key`` ("" when none)."""
    return _scheduler_claims(dask_scheduler).get(key, "")


def revoke_on_scheduler(keys: list[str], dask_scheduler: Any = None) -> dict[str, str]:
    """On the scheduler: claim ``keys`` for the driver; returns the claims workers made first."""
    claims = _scheduler_claims(dask_scheduler)
    started: dict[str, str] = {}
    for key in keys:
        first = claims.get(key)
        if first is None:
            claims[key] = REVOKED
        elif first != REVOKED:
            started[key] = first
    while len(claims) > _MAX_CLAIMS:
        claims.popitem(last=False)
    return started
