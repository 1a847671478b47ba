"""``taskrun run`` behind the click layer: overrides, SIGTERM, the run record, the reporter.

The glue between :mod:`taskrun.cli` (arguments) and :func:`taskrun.project.execute`
(the run): it owns what only the command has -- its process (every child left at the
end is a task's), SIGTERM handling, ``-v`` command echo, the run record and the
reporter. Nothing but the CLI imports it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from taskrun.errors import Interrupted, Terminated, UsageError
from taskrun.project import Project, execute, open_cache, runtime_of

__all__ = ["load_overrides", "run_from_cli"]


class _echo_commands:  # noqa: N801 - used like a function
    """With ``-v``, sh() prints each command it runs (workers inherit the variable)."""

    def __init__(self, on: bool) -> None:
        from taskrun.shell import ECHO_ENV

        self._name = ECHO_ENV
        self._before = os.environ.get(ECHO_ENV)
        if on:
            os.environ[ECHO_ENV] = "1"

    def close(self) -> None:
        if self._before is None:
            os.environ.pop(self._name, None)
        else:
            os.environ[self._name] = self._before


def _tee(*sinks: Callable[[Any], None]) -> Callable[[Any], None]:
    def tee(event: Any) -> None:
        for sink in sinks:
            sink(event)

    return tee


class _SigTerm(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run cleans up as after Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C (cancel, kill the tasks' processes, record nothing in
    flight), then raise :class:`Terminated` (exit code 143) instead of :class:`Interrupted`.

    Only in the main thread (where signal handlers live); a second SIGTERM during the
    cleanup is ignored, so the cleanup finishes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:
            return
        received.append(signum)
        raise _SigTerm()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except (_SigTerm, Interrupted) as exc:
        if not received:
            raise
        raise Terminated("terminated (SIGTERM); nothing in flight was recorded") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_child_left() -> Iterator[None]:
    """No process a task started outlives ``taskrun run``, even one nobody registered.

    Executors kill the process groups of the tasks' ``sh()`` commands and of their worker
    processes; this catches the rest (a thread task's ``subprocess.Popen`` never waited
    for, or the orphan of its ``os.system("cmd &")``, adopted as our child), once the
    executor is shut down. Only for the ``taskrun`` command, which owns its process.
    """
    from taskrun.shell import adopt_orphans, kill_children

    adopt_orphans()
    try:
        yield
    finally:
        keep = []
        tracker = sys.modules.get("multiprocessing.resource_tracker")
        if tracker is not None:  # Dask's; it exits by itself when we do
            keep.append(getattr(getattr(tracker, "_resource_tracker", None), "_pid", None))
        kill_children(keep=[pid for pid in keep if pid])


def run_from_cli(
    project: Project,
    targets: Sequence[str],
    assignments: Sequence[str],
    *,
    jobs: int | None,
    executor: str | None,
    dask_address: str | None,
    dask_ship_files: str = "auto",
    force: Sequence[str],
    force_all: bool,
    keep_going: bool,
    dry_run: bool,
    as_json: bool,
    cache_dir: Path | None,
    cache_mode: str | None,
    remote_cache: str | None = None,
    remote_mode: str | None = None,
    quiet: int,
    verbose: int,
    overrides: Sequence[str] = (),
    own_process: bool = False,
) -> int:
    """``taskrun run``: validate, then run or plan; returns the exit code.

    SIGTERM is handled like Ctrl-C, with exit code 143. ``own_process``: this process is
    the ``taskrun`` command, so every child it has left at the end is a task's and is
    killed (never in a program that calls the CLI in-process, such as a test).
    """
    sweep = _no_child_left() if own_process else contextlib.nullcontext()
    replacements = load_overrides(project, overrides)
    with _sigterm_as_interrupt(), sweep, project.registry.override_many(replacements):
        return _run_from_cli(
            project,
            targets,
            assignments,
            jobs=jobs,
            executor=executor,
            dask_address=dask_address,
            dask_ship_files=dask_ship_files,
            force=force,
            force_all=force_all,
            keep_going=keep_going,
            dry_run=dry_run,
            as_json=as_json,
            cache_dir=cache_dir,
            cache_mode=cache_mode,
            remote_cache=remote_cache,
            remote_mode=remote_mode,
            quiet=quiet,
            verbose=verbose,
            own_process=own_process,
        )


def load_overrides(project: Project, texts: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """``--override TASK=module:function``: each replacement, imported from the project root."""
    import importlib
    import sys

    from taskrun.errors import did_you_mean

    out: dict[str, Callable[..., Any]] = {}
    for text in texts:
        task_name, _, target = text.partition("=")
        module_name, _, attr = target.partition(":")
        if not task_name or not module_name or not attr:
            raise UsageError(
                f"--override {text!r} is not TASK=module:function; write e.g."
                " --override download=fakes:fake_download"
            )
        project.registry.get(task_name.strip())  # unknown task: an error with a hint
        added = str(project.root) not in sys.path
        if added:
            sys.path.insert(0, str(project.root))
        try:
            module = importlib.import_module(module_name.strip())
        except ImportError as exc:
            raise UsageError(
                f"--override {text!r}: cannot import module {module_name!r} ({exc}); it must"
                f" be importable from the project root {project.root}"
            ) from None
        finally:
            if added:
                sys.path.remove(str(project.root))
        fn = getattr(module, attr.strip(), None)
        if not callable(fn):
            names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
            raise UsageError(
                f"--override {text!r}: module {module_name!r} ({module.__file__}) has no"
                f" function {attr!r}{did_you_mean(attr, names)}"
            )
        out[task_name.strip()] = fn
    return out


def _run_from_cli(
    project: Project,
    targets: Sequence[str],
    assignments: Sequence[str],
    *,
    jobs: int | None,
    executor: str | None,
    dask_address: str | None,
    dask_ship_files: str,
    force: Sequence[str],
    force_all: bool,
    keep_going: bool,
    dry_run: bool,
    as_json: bool,
    cache_dir: Path | None,
    cache_mode: str | None,
    remote_cache: str | None,
    remote_mode: str | None,
    quiet: int,
    verbose: int,
    own_process: bool = False,
) -> int:
    from taskrun.report import make_reporter

    settings = project.settings
    invocation = project.invoke(targets, assignments)
    executor = executor or settings.executor or "thread"
    capture: Any = None
    if own_process and not dry_run and executor in ("inline", "thread"):
        from taskrun.executors import fdcapture

        # Tasks run in this process: what they write to descriptors 1 and 2 is caught
        # (see fdcapture); the reporter writes to the original stdout, duplicated now.
        capture = fdcapture.prepare()
    stream = capture.stdout if capture is not None else None
    reporter = make_reporter(as_json=as_json, quiet=quiet, verbose=verbose, stream=stream)
    mode = cache_mode or settings.cache_mode or "rw"
    if dry_run and mode == "rw":
        mode = "read"  # a dry run writes nothing, not even a new cache directory
    runtime = runtime_of(settings.runtime, project.root)
    address = dask_address or settings.dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    dask_options: dict[str, Any] = {
        "ship_files": {"auto": None, "always": True, "never": False}[dask_ship_files]
    }
    if address:
        dask_options["address"] = address
    options = dask_options if executor == "dask" else {}
    echo = _echo_commands(verbose > 0)
    recorder: Any = None
    sink: Callable[[Any], None] = reporter
    if not dry_run and mode != "read":  # read mode writes nothing, not even a record
        from taskrun.runs import record_run

        # Every run leaves a record under .taskrun/runs, written as it goes.
        try:
            recorder = record_run(
                project.root,
                invocation,
                settings.keep_runs,
                executor=executor,
                jobs=jobs or settings.jobs or os.cpu_count() or 1,
                runtime=runtime,
                cache_mode=mode,
                warn=reporter.warning,
            )
            sink = _tee(reporter, recorder)
        except OSError as exc:  # a read-only checkout, a full disk: run without a record
            reporter.warning(f"this run is not recorded under .taskrun/runs: {exc}")
    error = ""
    cache: Any = None
    try:
        # Opened inside the try that closes it: anything that raised between the two (a
        # failing probe, the run record) once leaked it (a ResourceWarning on 3.13).
        cache = open_cache(
            project.root,
            cache_dir or settings.cache_dir,
            size_limit=settings.cache_size,
            mode=mode,
            on_warning=reporter.warning,
        )
        if dry_run:
            from taskrun.scheduler import Scheduler

            scheduler = Scheduler(
                invocation,
                cache=cache,
                runtime=runtime,
                force=frozenset(force),
                force_all=force_all,
            )
            with project.context():
                for item in scheduler.plan():
                    reporter(item)
            return 0
        feed: Any = sink
        capturing: Any = contextlib.nullcontext()
        if capture is not None:
            from taskrun.streaming import Feed

            # The capture's own lines ("?") go through the feed execute() emits into,
            # so the reporter and the record still get one event at a time.
            feed = Feed(sink)
            capturing = capture.running(feed)
        with capturing:
            result = execute(
                invocation,
                jobs=jobs or settings.jobs,
                executor=executor,
                cache=cache,
                runtime=runtime,
                force=force,
                force_all=force_all,
                keep_going=keep_going,
                on_event=feed,
                executor_options=options,
                dask_options=dask_options,
                remote_cache=remote_cache or settings.remote_cache,
                remote_mode=remote_mode or settings.remote_mode,
            )
    except BaseException as exc:
        error = str(exc) or type(exc).__name__
        raise
    finally:
        # Also on errors and Ctrl-C: the live view must be erased before the message.
        reporter.close()
        if cache is not None:
            cache.close()
        echo.close()
        if recorder is not None:
            recorder.close(error)
        if capture is not None:
            capture.close()  # last: the record's warnings still go to the reporter
    return 0 if result.ok else 1
