"""The Dask executor: calls run on a Dask distributed cluster (the optional ``dask`` extra).

Two ways to get a cluster:

- **No address**: a :class:`distributed.LocalCluster` of ``jobs`` worker processes with one
  thread each, listening on 127.0.0.1 only, with no dashboard, started with the first call
  and closed by :meth:`DaskExecutor.shutdown`. taskrun owns it, so it sets its scheduler up
  for taskrun (``dask_cluster.OWNED_CONFIG``) and kills the worker of a call that times out
  or is cancelled (the worker's nanny starts a fresh one).
- **An address** (``tcp://host:8786``): a client of a scheduler someone else runs. taskrun
  never shuts it down nor changes its settings; :meth:`DaskExecutor.shutdown` closes only the
  client. The cluster's size sets the parallelism (``jobs`` is not used).

How a call travels: the driver cloudpickles ``(fn, kwargs)`` *by value*
(``trampoline.encode_call``: a task file's functions cannot be pickled by reference, and
registering the task module with ``cloudpickle.register_pickle_by_value`` hangs a
LocalCluster), and the Dask task is the importable :func:`dask_remote.run_on_worker`
applied to those bytes; it returns bytes the driver decodes. So taskrun must be importable
on every worker, and on the scheduler (which keeps the claims below); both are checked when
the executor connects. Each attempt gets a Dask key of its own,
``taskrun-<task>-<attempt>-<uuid>``: never the fingerprint, so a retry or a second driver on
the same cluster never gets a result that is not its own.

**Files.** Workers that share the project directory (same path, same task file) run calls
in it. Workers that do not get the call's files *shipped* (``taskrun.executors.shipping``):
declared inputs, File/Dir arguments and the project's Python modules go with the call
(each big file scattered once per run), the call runs in a scratch directory, and its
output files come back as bytes, written into the project by the driver before the future
resolves. ``ship_files`` forces either way. By default a local cluster shares this
machine's files, and the workers of an external one are asked whether they see the project
before its first call; a worker that does not (one that joined later, say) sends the call
back, before claiming it, to be shipped.

**Claims.** Before it runs user code, a worker *claims* the call, atomically, and the
driver does the same for a call it cancels before it started; whoever claims first wins.
That makes cancellation exact (Dask's own cancel is a message that can arrive after a
worker has picked the task up: a cancelled call could still start) and refuses a second
start of the same key (Dask re-runs a task whose worker died up to
``distributed.scheduler.allowed-failures`` times: a crash must fail, not run again). On
an owned cluster, whose workers share this machine, a claim is a file created with
``O_EXCL`` in the temporary directory, and ``allowed-failures`` is also set to 0 so the
task fails at once with ``KilledWorker`` (a ``crashed`` outcome). On an external cluster a
claim is an entry on the scheduler, made with one round trip per call.

Threading: Dask resolves its futures in its own threads. The client's event loop delivers
start announcements (workers publish one on the ``taskrun-started`` topic when a call
starts: timeouts count from there, not from submission, because calls can wait in Dask's
queue); Dask's callback thread hands finished futures to a collector thread of ours,
which fetches their results (writes shipped outputs) and resolves our futures; a watchdog
thread (started with the first deadline) enforces timeouts. Shared state is guarded by one
lock, and no call into the client is made while holding it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import distributed

from taskrun.errors import UsageError
from taskrun.executors import dask_cluster as cl
from taskrun.executors import dask_remote as remote
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
from taskrun.executors.shipping import Parcels, ShipError, write_back
from taskrun.executors.trampoline import decode_result, encode_call
from taskrun.executors.watchdog import Watchdog
from taskrun.streaming import TAIL_INTERVAL, FileTail, logging_setup

__all__ = ["DaskExecutor"]

# perf: a payload this big goes to the workers with scatter() ahead of the task rather than
# inside the task's own message (Dask warns about large graphs, and copies them around).
_SCATTER_OVER = 1 << 20
_MAX_RESENDS = 3  # a call whose worker keeps dying before it begins fails after this
_CANCELLED = (asyncio.CancelledError, concurrent.futures.CancelledError)
_Stop = Literal["timeout", "cancel", "dropped"]


@dataclass(eq=False, slots=True)
class _Job:
    call: Call
    key: str  # the Dask key
    token: str  # the key's unique part; names the worker's capture file
    future: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)
    payload: bytes = b""  # the encoded call; dropped when resolved
    argument: Any = None  # the payload, or its scattered future; dropped when resolved
    parcel: dict[str, Any] | None = None  # the shipped files, when the call ships them
    dask_future: Any = None  # distributed.Future, dropped once ours is resolved
    scattered: Any = None  # the payload's own future, when it went ahead with scatter()
    resent: int = 0  # how many times it was sent again without having begun
    generation: int = 0  # the executor's cancel() count when it was sent
    settled: bool = False  # our future is (being) resolved; guarded by the lock
    started: float | None = None  # time.perf_counter() when the worker started it (as known)
    worker: str = ""  # the address of the worker running it, once started
    pid: int = 0  # that worker's process id
    tail: Any = None  # streaming.FileTail of its capture file, once started (live output)


class DaskExecutor(Executor):
    """Runs calls on a Dask cluster: a local one of ``jobs`` processes, or the one at ``address``.

    ``connect_timeout`` (seconds) bounds connecting to an external scheduler and waiting for
    its first worker. Nothing is started or connected until the first call (or
    :meth:`connect`), so a run whose tasks are all cached never touches the cluster.
    Arguments and products cross process boundaries, so they must be picklable (by
    cloudpickle), as with the process executor.

    ``ship_files``: whether calls carry their files to the workers and bring their output
    files back (see the module docstring). None (the default) decides per project: a local
    cluster shares this machine's files; on an external one, files are shipped when a
    worker does not see the project directory or sees another version of the task file.
    True always ships; False never does (a worker without the project fails the call).
    """

    name = "dask"
    announces_start = True

    def __init__(
        self,
        jobs: int,
        *,
        address: str | None = None,
        connect_timeout: float = 10.0,
        ship_files: bool | None = None,
    ) -> None:
        super().__init__(jobs)
        self.address = address or None
        self.connect_timeout = connect_timeout
        self.ship_files = ship_files
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()  # held while connecting and while closing
        self._client: Any = None  # distributed.Client
        self._cluster: Any = None  # distributed.LocalCluster, when we own one
        self._connect_error: str | None = None  # a failed connection is not retried
        # Where calls are claimed (see the module docstring): files for our own cluster.
        self._claims: remote.ClaimMode = "file" if self.address is None else "scheduler"
        self._revoked_files: list[str] = []  # claim files the driver made, removed at shutdown
        self._jobs: dict[str, _Job] = {}  # by Dask key: submitted, not yet settled
        self._watchdog = Watchdog[_Job](
            self._lock,
            "taskrun-dask-watchdog",
            expire_locked=self._expire_locked,
            on_expired=self._expired,
        )
        self._tailer: threading.Thread | None = None
        self._done: list[tuple[_Job, Any]] = []  # finished Dask futures, for the collector
        self._has_done = threading.Condition(self._lock)
        self._collector: threading.Thread | None = None
        self._closed = False
        self._stamps: dict[str, remote.Stamp | None] = {}  # see _stamp()
        self._shipping: dict[str, bool] = {}  # project root -> whether its calls ship files
        self._parcels = Parcels(self._scatter, _alive)
        self._generation = 0  # cancel() calls so far: a call finished before one is not resent
        self._lost: str | None = None  # the message, once the scheduler connection is lost
        self._quiet = False

    @property
    def slots(self) -> int | None:
        # An external cluster's size sets the parallelism, which `jobs` does not know.
        return self.jobs if self.address is None else None

    @property
    def scheduler_address(self) -> str | None:
        """The address of the scheduler in use (the local cluster's too); None before connecting."""
        if self._client is None:
            return None
        address: str = self._client.scheduler.address
        return address

    def __repr__(self) -> str:
        where = self.address or "local cluster"
        return f"<{type(self).__name__} jobs={self.jobs} {where}>"

    # -- the caller's side ----------------------------------------------------------------

    def connect(self) -> None:
        """Start the local cluster or connect to the scheduler now, instead of at the first call.

        Raises :class:`UsageError` naming the fix when the scheduler cannot be reached, has
        no worker, or a worker or the scheduler cannot import taskrun.
        """
        with self._lock:
            if self._closed:
                raise UsageError("the dask executor was shut down; make a new one")
        self._connected()

    def submit(self, call: Call) -> concurrent.futures.Future[Outcome]:
        with self._lock:
            if self._closed:
                raise UsageError("the dask executor was shut down; make a new one")
        try:
            payload = encode_call(call)
        except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
            return resolved(
                _failed(
                    call,
                    "cannot send the task to a Dask worker, its function or arguments cannot"
                    f" be pickled: {describe_exception(exc)}",
                )
            )
        self._connected()
        job = _new_job(call, concurrent.futures.Future())
        job.payload = payload
        failure = self._prepare(job)
        if failure:
            return resolved(_failed(call, failure))
        self._send(job)
        return job.future

    def _prepare(self, job: _Job) -> str:
        """Make ``job``'s Dask arguments (scattering what is big); "" or why it cannot go."""
        try:
            job.argument = job.payload
            if len(job.payload) > _SCATTER_OVER:
                job.argument = job.scattered = self._scatter(job.payload)
            job.parcel = self._parcels.build(job.call) if self._ships(job.call) else None
        except ShipError as exc:
            return f"cannot send the task to {self._where()}: {exc}"
        except UsageError as exc:
            return exc.message
        except Exception as exc:  # noqa: BLE001 - a dead connection raises many kinds
            return f"cannot send the task to {self._where()}: {describe_exception(exc)}"
        return ""

    def _send(self, job: _Job) -> None:
        """Submit ``job`` to Dask under its own key; its future resolves when it is done."""
        client = self._client
        with self._lock:
            lost = self._lost
            job.generation = self._generation
            if lost is None:
                self._jobs[job.key] = job
        if lost is not None or client is None:
            settle(job.future, _failed(job.call, lost or "the dask executor was shut down"))
            return
        # A worker of an external cluster that does not see the project sends the call
        # back to be shipped, unless told otherwise; our own cluster's workers see it.
        files: remote.FilesMode = "shared"
        if job.parcel is not None:
            files = "ship"
        elif self.ship_files is None and self._cluster is None:
            files = "auto"
        try:
            job.dask_future = client.submit(
                remote.run_on_worker,
                job.argument,
                job.call.cwd,
                job.key,
                job.token,
                self._claims,
                self.address is not None,  # forget project modules: workers outlive the run
                None if job.parcel is not None else self._stamp(job.call),
                files,
                job.parcel,
                logs=logging_setup(),  # the task file's logging.basicConfig() ran here
                key=job.key,
                pure=False,
                retries=0,  # the scheduler retries (retries=), with a fresh key per attempt
            )
        except Exception as exc:  # noqa: BLE001 - a dead connection raises many kinds
            with self._lock:
                self._jobs.pop(job.key, None)
                job.settled = True
            where = self._where()
            settle(
                job.future,
                _failed(job.call, f"cannot send the task to {where}: {describe_exception(exc)}"),
            )
            return
        job.dask_future.add_done_callback(functools.partial(self._finished, job))
        job.future.add_done_callback(functools.partial(self._dropped, job))

    def _scatter(self, data: bytes) -> Any:
        """Put ``data`` on the cluster ahead of the calls that use it; its Dask future."""
        client = self._client
        if client is None:
            raise UsageError("the dask executor was shut down")
        return client.scatter(data, hash=False)

    def _ships(self, call: Call) -> bool:
        """Whether ``call`` ships its files: decided once per project root (see ship_files)."""
        if self.ship_files is not None:
            return self.ship_files
        with self._lock:
            known = self._shipping.get(call.cwd)
        if known is not None:
            return known
        # Our own cluster runs on this machine; an external one is asked, in one round trip.
        ships = self._cluster is None and not self._workers_see(call)
        with self._lock:
            return self._shipping.setdefault(call.cwd, ships)

    def _workers_see(self, call: Call) -> bool:
        """Whether every worker sees the project of ``call`` as this driver does."""
        client = self._client
        if client is None:
            return True
        try:
            seen = client.run(remote.sees_project, call.cwd, self._stamp(call), on_error="return")
        except Exception:  # noqa: BLE001 - no answer: try in place; a worker sends it back
            return True
        return all(answer is True for answer in seen.values())

    def cancel(self) -> None:
        with self._lock:
            self._generation += 1
            jobs = self._take_unsettled_locked()
        self._stop(jobs, "cancel")

    def shutdown(self) -> None:
        with self._connect_lock:  # not while a connection is being made: close what it made
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                jobs = self._take_unsettled_locked()
                self._watchdog.close_locked()
                self._has_done.notify_all()
                collector = self._collector
            # Kill hung tasks first: a worker stuck in a task would hold up closing the cluster.
            self._stop(jobs, "cancel")
            if collector is not None:
                collector.join(timeout=self.connect_timeout)  # results that arrived: resolved
            client, cluster = self._client, self._cluster
            try:
                if client is not None:
                    client.close(timeout=self.connect_timeout)
                if cluster is not None:
                    cluster.close(timeout=self.connect_timeout)
            except Exception:  # noqa: BLE001, S110 - a lost scheduler cannot be closed cleanly
                pass
            finally:
                self._client = self._cluster = None
                for path in self._revoked_files:
                    remote.unlink(path)
                self._revoked_files.clear()
                if self._quiet:
                    cl.quiet_dask_logs(False)
                    self._quiet = False

    # -- connecting -----------------------------------------------------------------------

    def _where(self) -> str:
        if self.address is None:
            return "the local Dask cluster"
        return f"the Dask scheduler at {self.address}"

    def _connected(self) -> Any:
        """The client, connecting (or starting the local cluster) on first use."""
        with self._connect_lock:
            if self._client is not None:
                return self._client
            if self._connect_error is not None:
                raise UsageError(self._connect_error)
            with self._lock:
                if self._closed:
                    raise UsageError("the dask executor was shut down; make a new one")
            if not self._quiet:
                # The executor reports crashes and lost connections itself, as task failures;
                # distributed's own log lines about them would only repeat it, less clearly.
                cl.quiet_dask_logs(True)
                self._quiet = True
            client = cluster = None
            try:
                if self.address is None:
                    cluster, client = cl.start_local_cluster(self.jobs)
                else:
                    client = cl.join(self.address, self.connect_timeout)
                cl.check(client, self._where(), self.address, self.connect_timeout)
                client.subscribe_topic(remote.TOPIC, self._on_started)
                client.subscribe_topic(remote.PROGRESS_TOPIC, self._on_progress)
            except UsageError as exc:
                self._connect_error = exc.message
                for thing in (client, cluster):
                    try:
                        if thing is not None:
                            thing.close()
                    except Exception:  # noqa: BLE001, S110 - already failing; keep that error
                        pass
                raise
            self._client, self._cluster = client, cluster
            return client

    # -- resolving futures ----------------------------------------------------------------

    def _follow(self) -> None:
        """The tail thread: send on what running calls print, as they print it."""
        while True:
            with self._lock:
                if self._closed:
                    return
                jobs = self._jobs.values()
                tails = [j.tail for j in jobs if j.tail is not None and not j.settled]
            for tail in tails:
                tail.poll()
            time.sleep(TAIL_INTERVAL)

    def _on_progress(self, event: tuple[float, Any]) -> None:
        """A call reported progress (in the client's event loop: no blocking here)."""
        message = event[1]
        if not isinstance(message, dict) or self.feed is None:
            return
        with self._lock:
            job = self._jobs.get(str(message.get("key")))
            task = None if job is None or job.settled else job.call.task
            tail = None if job is None else job.tail
        if tail is not None:
            tail.poll()  # what the task printed before reporting comes first (a small read)
        try:
            done, total, text, when = message["report"]
            report = (float(done), None if total is None else float(total), str(text), float(when))
        except (KeyError, TypeError, ValueError):
            return
        if task is not None:
            self.feed.progress(task, *report)

    def _on_started(self, event: tuple[float, Any]) -> None:
        """A worker started a call (in the client's event loop: no blocking here)."""
        message = event[1]
        if not isinstance(message, dict):
            return
        with self._lock:
            job = self._jobs.get(str(message.get("key")))
            if job is None or job.settled or job.started is not None:
                return
            job.started = time.perf_counter()
            job.worker = str(message.get("worker", ""))
            job.pid = int(message.get("pid", 0))
            if self.feed is not None:
                self.feed.started(job.call.task)
                # A worker of a local cluster captures into a file on this machine: follow it.
                # Elsewhere the file is not here, and the lines come with the result.
                job.tail = FileTail(remote.capture_path(job.token), job.call.task, self.feed)
                if self._tailer is None:
                    self._tailer = threading.Thread(
                        target=self._follow, name="taskrun-dask-tail", daemon=True
                    )
                    self._tailer.start()
            if job.call.timeout is not None:
                self._watchdog.add_locked(job.call.timeout, job)

    def _finished(self, job: _Job, dask_future: Any) -> None:
        """The Dask future is done (in Dask's callback thread): hand it to the collector."""
        with self._lock:
            if job.settled:  # timed out or cancelled meanwhile: resolved already
                _forget(job)
                return
            job.settled = True
            self._jobs.pop(job.key, None)
            self._done.append((job, dask_future))
            if self._collector is None:
                self._collector = threading.Thread(
                    target=self._collect, name="taskrun-dask-collector", daemon=True
                )
                self._collector.start()
            self._has_done.notify()

    def _collect(self) -> None:
        """The collector thread: fetch the results of finished calls, resolve their futures.

        Not in Dask's callback thread: it is one thread shared by every future in this
        process, and fetching a result blocks (results live on the workers).
        perf: one gather() per batch of calls that finished meanwhile, one round trip for
        all of them, rather than one per call (on a LocalCluster the difference is lost in
        the noise; it matters where a round trip to the workers is long).
        """
        while True:
            with self._lock:
                while not self._done and not self._closed:
                    self._has_done.wait()
                if not self._done:
                    return
                batch, self._done = self._done, []
            values: dict[str, Any] = {}
            finished = [(job, f) for job, f in batch if f.status == "finished"]
            client = self._client
            if len(finished) > 1 and client is not None:
                try:
                    results = client.gather([f for _, f in finished])
                    values = {job.key: r for (job, _), r in zip(finished, results, strict=True)}
                except Exception:  # noqa: BLE001, S110 - each is fetched on its own below
                    pass
            for job, dask_future in batch:
                outcome = self._outcome(job, dask_future, values.get(job.key))
                with self._lock:
                    stale = job.generation != self._generation or self._closed
                if outcome is None and stale:
                    outcome = cancelled_outcome(job.call)  # cancelled while it was in here
                if outcome is None:
                    # Prepared afresh: what was scattered for it may have died with a worker.
                    again = _new_job(job.call, job.future, resent=job.resent + 1)
                    again.payload = job.payload
                    failure = self._prepare(again)
                    if failure:
                        settle(job.future, _failed(job.call, failure))
                    else:
                        self._send(again)
                else:
                    if job.tail is not None:
                        job.tail.finish(outcome.output)  # every line out before the outcome
                    settle(job.future, outcome)
                _forget(job)  # let Dask forget what it held for it

    def _outcome(self, job: _Job, dask_future: Any, value: Any = None) -> Outcome | None:
        """How the call of ``job`` ended; None when it must be sent again (it never began)."""
        call = job.call
        try:
            kind, data, files = value if value is not None else dask_future.result()
        except distributed.KilledWorker as exc:
            worker = getattr(exc.last_worker, "address", "") or job.worker
            if job.resent < _MAX_RESENDS and not self._claimed(job):
                # Dask had sent it to a worker that died before it began (queued there behind
                # the call that crashed or timed out): not a crash of this call, not a re-run.
                return None
            return Outcome(
                task=call.task,
                ok=False,
                error=(
                    f"the Dask worker {worker} died while running the task (it is not run again)"
                ),
                output=self._read_capture(job),
                duration=_since(job.started),
                crashed=True,
            )
        except _CANCELLED as exc:
            if getattr(exc, "reason", "") == "lost dependencies" and self._running():
                if job.resent < _MAX_RESENDS:
                    return None  # data scattered for it died with a worker: scatter it again
                return _failed(
                    call,
                    f"what was sent ahead for the task (files, large arguments) was lost with"
                    f" a worker of {self._where()} {job.resent + 1} times; run again",
                )
            return _failed(call, self._lose())  # we never cancel a future we have not settled
        except Exception as exc:  # noqa: BLE001 - whatever Dask raises, the call failed
            if not self._running():
                return _failed(call, self._lose())
            hint = ""
            if isinstance(exc, ImportError) and "taskrun" in str(exc):
                hint = f"; install taskrun on every worker: {cl.INSTALL}"
            return _failed(
                call, f"{self._where()} could not run the task: {cl.describe(exc)}{hint}"
            )
        if kind == "done":
            try:
                outcome = decode_result(call.task, data)
            except Exception as exc:  # noqa: BLE001 - a garbled result is a failure
                return _failed(call, f"unreadable result from the Dask worker: {cl.describe(exc)}")
            if outcome.ok and files:
                try:
                    write_back(files, call.cwd)
                except ShipError as exc:
                    return replace(outcome, ok=False, value=None, error=str(exc))
            return outcome
        if kind == "unshared":
            # This worker does not see the project (it joined after the driver asked, or
            # sees another version of it): from now on the project's calls ship their files.
            with self._lock:
                self._shipping[call.cwd] = True
            return None if job.resent < _MAX_RESENDS else _failed(call, str(data))
        if kind == "crashed":
            output = self._read_capture(job)
            return Outcome(task=call.task, ok=False, error=data, output=output, crashed=True)
        if kind == "cancelled":  # we claimed it first; resolved already, but to be safe
            return cancelled_outcome(call)
        return _failed(call, str(data))

    def _running(self) -> bool:
        """Whether the client is still connected to the scheduler."""
        client = self._client
        return client is not None and client.status in ("running", "newly-created")

    def _stamp(self, call: Call) -> tuple[str, int, int] | None:
        """(path, size, mtime) of the project file the task function comes from, if any.

        The worker compares it with what it sees at that path: a project on a file system
        the worker does not share, or a stale copy of it, would otherwise run the project's
        helper modules and read its input files as they were, and cache the result as
        current. The first stamp of a file stands for the run (the executor is made after
        the task file is loaded), so a task file edited during the run is refused too.
        """
        code = getattr(call.fn, "__code__", None)
        path = getattr(code, "co_filename", "")
        # Only a file of the project: an installed package may live elsewhere on a worker.
        if not path or not path.startswith(os.path.join(call.cwd, "")):
            return None
        with self._lock:
            if path not in self._stamps:
                self._stamps[path] = remote.source_stamp(path)
            return self._stamps[path]

    def _claimed(self, job: _Job) -> bool:
        """Whether a worker claimed (began) ``job``'s call; True when that cannot be known."""
        if self._claims == "file":
            return os.path.exists(remote.claim_path(job.token))
        client = self._client
        try:
            return bool(client.run_on_scheduler(remote.claim_of, job.key)) if client else True
        except Exception:  # noqa: BLE001 - unknown: say it began (never run twice)
            return True

    def _lose(self) -> str:
        """The scheduler connection is gone: fail everything in flight, and every later call."""
        message = (
            f"lost the connection to {self._where()}; check that it is still running and"
            " reachable, then run again (the tasks that finished before are cached)"
        )
        with self._lock:
            if self._lost is None:
                self._lost = message
            jobs = self._take_unsettled_locked()
        for job in jobs:
            settle(job.future, _failed(job.call, message))
        return message

    def _dropped(self, job: _Job, future: concurrent.futures.Future[Outcome]) -> None:
        """Our future is done; if the caller cancelled it, stop the Dask task too."""
        if not future.cancelled():
            return
        with self._lock:
            if job.settled:
                return
            job.settled = True
            self._jobs.pop(job.key, None)
        self._stop([job], "dropped")

    def _take_unsettled_locked(self) -> list[_Job]:
        jobs = [job for job in self._jobs.values() if not job.settled]
        for job in jobs:
            job.settled = True
        self._jobs.clear()
        return jobs

    # -- stopping calls -------------------------------------------------------------------

    def _expire_locked(self, job: _Job) -> bool:
        """At its deadline (watchdog, lock held): take a call that is still unsettled."""
        if job.settled:
            return False
        job.settled = True
        self._jobs.pop(job.key, None)
        return True

    def _expired(self, jobs: list[_Job]) -> None:
        """Stop the calls the watchdog expired, as timed out (without the lock)."""
        self._stop(jobs, "timeout")

    def _stop(self, jobs: list[_Job], why: _Stop) -> None:
        """Stop ``jobs`` (already marked settled) and resolve their futures.

        Order matters on an owned cluster: read what a running call printed, kill its worker,
        then cancel the Dask future. Cancelling first would tell the scheduler the worker is
        free, and a queued task sent there meanwhile would die with it. On an external
        cluster nothing is killed: the call's thread runs on until it returns (Dask cannot
        stop a thread) and its result is dropped.
        """
        if not jobs:
            return
        if why != "timeout":  # a call that times out has started
            self._revoke([job for job in jobs if job.started is None])
        running = [job for job in jobs if job.started is not None]
        outputs = self._outputs(running)
        if self._cluster is not None:
            for job in running:
                if job.pid:
                    cl.kill_worker(job.pid)
            cl.await_removal(self._cluster, {job.worker for job in running})
            for job in running:  # what the killed workers could not remove themselves
                remote.unlink(remote.capture_path(job.token))
                remote.unlink(remote.claim_path(job.token))
        client = self._client
        futures = [f for job in jobs for f in (job.dask_future, job.scattered) if f is not None]
        if client is not None and futures:
            with contextlib.suppress(Exception):  # lost connection: nothing left to cancel
                client.cancel(futures, force=True)
        for job in jobs:
            output, duration = outputs.get(job.token, ""), _since(job.started)
            if why == "timeout":
                settle(job.future, timed_out_outcome(job.call, output=output, duration=duration))
            elif why == "cancel":
                settle(
                    job.future,
                    cancelled_outcome(
                        job.call,
                        running=job.started is not None,
                        output=output,
                        duration=duration,
                    ),
                )
            _forget(job)

    def _revoke(self, jobs: list[_Job]) -> None:
        """Claim calls not known to have started, so that they never do.

        A call a worker claimed first has started: it gets its worker and process id.
        """
        if not jobs:
            return
        if self._claims == "file":
            for job in jobs:
                path = remote.claim_path(job.token)
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                except FileExistsError:
                    _started_from(job, remote.read_claim(path))
                    continue
                except OSError:
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(remote.REVOKED)
                self._revoked_files.append(path)
            return
        client = self._client
        if client is None:
            return
        try:
            started = client.run_on_scheduler(remote.revoke_on_scheduler, [job.key for job in jobs])
        except Exception:  # noqa: BLE001 - lost connection: nothing will start any more
            return
        for job in jobs:
            _started_from(job, started.get(job.key))

    def _outputs(self, jobs: list[_Job]) -> dict[str, str]:
        """What each running call has printed so far, by token (read before it is stopped)."""
        outputs: dict[str, str] = {}
        elsewhere: dict[str, list[str]] = {}
        for job in jobs:
            text = remote.read_text(remote.capture_path(job.token))
            if text is not None:  # a worker on this machine: read its file directly
                outputs[job.token] = text
            elif job.worker:
                elsewhere.setdefault(job.worker, []).append(job.token)
        client = self._client
        if elsewhere and client is not None:
            tokens = [t for group in elsewhere.values() for t in group]
            try:
                found = client.run(
                    remote.running_outputs, tokens, workers=list(elsewhere), on_error="return"
                )
            except Exception:  # noqa: BLE001 - a lost worker has nothing more to say
                found = {}
            for texts in found.values():
                if isinstance(texts, dict):
                    outputs.update(texts)
        return outputs

    def _read_capture(self, job: _Job) -> str:
        """The output of a call whose worker died, when that worker ran on this machine."""
        path = remote.capture_path(job.token)
        text = remote.read_text(path)
        remote.unlink(path)  # the dead worker could not remove it
        remote.unlink(remote.claim_path(job.token))
        return text or ""


# -- the driver's helpers -------------------------------------------------------------------


def _new_job(call: Call, future: concurrent.futures.Future[Outcome], *, resent: int = 0) -> _Job:
    token = uuid.uuid4().hex
    key = f"taskrun-{call.task}-{call.attempt}-{token}"
    return _Job(call, key=key, token=token, future=future, resent=resent)


def _forget(job: _Job) -> None:
    """Drop what ``job`` holds for Dask (futures, payload, parcel): its call is resolved."""
    job.dask_future = job.scattered = job.argument = job.parcel = None
    job.payload = b""


def _alive(future: Any) -> bool:
    """Whether a scattered future can still be used (its data did not die with a worker)."""
    return bool(future.status == "finished")


def _failed(call: Call, error: str) -> Outcome:
    return Outcome(task=call.task, ok=False, error=error)


def _since(started: float | None) -> float:
    return 0.0 if started is None else time.perf_counter() - started


def _started_from(job: _Job, claim: Any) -> None:
    """Record on ``job`` that a worker claimed it (``claim``: "pid address time"), if it did."""
    if not isinstance(claim, str) or not claim or claim == remote.REVOKED:
        return
    parts = claim.split(" ")
    if len(parts) != 3:
        return
    try:
        pid, address, when = int(parts[0]), parts[1], float(parts[2])
    except ValueError:
        return
    if job.started is None:
        job.started = time.perf_counter() - max(0.0, time.time() - when)
        job.worker, job.pid = address, pid
