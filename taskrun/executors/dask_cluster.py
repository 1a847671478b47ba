"""The Dask executor's clusters, seen from the driver: start, join, check, stop workers.

:mod:`taskrun.executors.dask` uses these to get a cluster (a ``LocalCluster`` it owns, or a
client of a scheduler someone else runs), to refuse one that cannot run taskrun's calls
with a message naming the fix, and, on a cluster it owns, to kill the worker of a call it
stops. Nothing here runs on the workers (that is :mod:`taskrun.executors.dask_remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any

import dask
import distributed

from taskrun.errors import UsageError
from taskrun.executors import dask_remote as remote
from taskrun.executors.base import describe_exception

__all__ = [
    "INSTALL",
    "OWNED_CONFIG",
    "await_removal",
    "check",
    "describe",
    "join",
    "kill_worker",
    "quiet_dask_logs",
    "start_local_cluster",
]

INSTALL = "`pip install taskrun` (the driver's version) in the environment it runs in"
_WHERE_ADDRESS = "--dask-address, DASK_SCHEDULER_ADDRESS or [tool.taskrun] dask-address"
_REMOVAL_WAIT = 10.0  # seconds our scheduler gets to notice a killed worker
OWNED_CONFIG: dict[str, object] = {
    # A task that kills its worker fails at once (KilledWorker); Dask does not re-run it.
    "distributed.scheduler.allowed-failures": 0,
    # One task per one-thread worker: when a worker dies (a crash, or taskrun killing a
    # timed-out task), no innocent task queued behind it on that worker dies with it.
    "distributed.scheduler.worker-saturation": 1.0,
}


def start_local_cluster(jobs: int) -> tuple[Any, Any]:
    """Start a LocalCluster of ``jobs`` one-thread worker processes on 127.0.0.1; and a client."""
    try:
        with dask.config.set(OWNED_CONFIG):
            cluster = distributed.LocalCluster(
                n_workers=jobs,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # No dashboard, and the scheduler's HTTP endpoint (health, metrics) on a
                # free loopback port: the default 8787 may be taken (by another run).
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.CRITICAL,  # the workers too: we report for them
            )
    except Exception as exc:  # whatever stops it, the run cannot go on
        raise UsageError(f"cannot start a local Dask cluster: {describe_exception(exc)}") from exc
    try:
        client = distributed.Client(cluster, set_as_default=False)
    except Exception as exc:  # whatever Dask raises, the cluster is closed and we stop
        cluster.close()
        raise UsageError(
            f"cannot connect to the local Dask cluster: {describe_exception(exc)}"
        ) from exc
    return cluster, client


def join(address: str, timeout: float) -> Any:
    """A client of the scheduler at ``address``; UsageError naming the fix when there is none."""
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, a malformed address...
        raise UsageError(
            f"cannot connect to the Dask scheduler at {address}: {describe_exception(exc)};"
            f" start one with `dask scheduler` (and workers with `dask worker {address}`),"
            f" or correct the address ({_WHERE_ADDRESS})"
        ) from None


def check(client: Any, where: str, address: str | None, timeout: float) -> None:
    """Refuse a cluster that cannot run taskrun's calls, naming the fix.

    ``where`` names it in messages; with an ``address`` (an external scheduler), wait up
    to ``timeout`` seconds for a first worker.
    """
    if address is not None:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise UsageError(
                f"{where} has no workers (waited {timeout:g}s);"
                f" start some with `dask worker {address}`"
            ) from None
    here = remote.python_version()
    facts = client.run(remote.worker_facts, on_error="return")
    for worker, fact in sorted(facts.items()):
        if isinstance(fact, BaseException) or not isinstance(fact, dict):
            raise UsageError(
                f"the Dask worker {worker} cannot run taskrun's calls"
                f" ({describe(fact)}); install taskrun there: {INSTALL}"
            )
        if fact.get("python") != here:
            raise UsageError(
                f"the Dask worker {worker} runs Python {fact.get('python')} and this"
                f" driver Python {here}; tasks travel as pickled code, which needs the"
                " same Python version on both sides"
            )
    try:
        client.run_on_scheduler(remote.scheduler_facts)
    except Exception as exc:  # noqa: BLE001 - an import error, unpickled on the scheduler
        raise UsageError(
            f"{where} cannot run taskrun's calls ({describe_exception(exc)});"
            f" install taskrun on the scheduler: {INSTALL}"
        ) from None


def describe(thing: object) -> str:
    """One line for what Dask returned or raised in place of an answer."""
    if isinstance(thing, BaseException):
        return describe_exception(thing)
    return repr(thing)


def await_removal(cluster: Any, addresses: set[str]) -> None:
    """Wait (briefly) until the scheduler of our ``cluster`` notices killed workers are gone.

    Until then it may hand them a queued task (the cancel frees their slot), which would
    then die with them.
    """
    workers = cluster.scheduler.workers  # in this process: we own the cluster
    end = time.monotonic() + _REMOVAL_WAIT
    while any(a in workers for a in addresses) and time.monotonic() < end:
        time.sleep(remote.POLL)


def kill_worker(pid: int) -> None:
    """SIGKILL a worker process of our own LocalCluster, and what its task started."""
    import psutil  # a dependency of distributed

    try:
        worker = psutil.Process(pid)
        if worker.ppid() != os.getpid():
            return  # not one of ours (the pid was reused): leave it alone
        family = [worker, *worker.children(recursive=True)]
    except psutil.Error:
        return
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.kill()


_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_saved: list[tuple[logging.Handler, int]] = []


def quiet_dask_logs(on: bool) -> None:
    """Raise distributed's console log handlers to CRITICAL while any executor is alive."""
    global _quiet_users
    with _quiet_lock:
        _quiet_users += 1 if on else -1
        if on and _quiet_users == 1:
            for handler in logging.getLogger("distributed").handlers:
                if isinstance(handler, logging.StreamHandler):
                    _quiet_saved.append((handler, handler.level))
                    handler.setLevel(logging.CRITICAL)
        elif not on and _quiet_users == 0:
            for handler, level in _quiet_saved:
                handler.setLevel(level)
            _quiet_saved.clear()
