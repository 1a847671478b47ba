"""A project (task file, settings, registry) and the ``run`` entry points.

:func:`taskrun.api.run` is the Python API (re-exported here as ``run``);
:func:`run_from_cli` is what ``taskrun run`` calls. Both build the same pieces through
:func:`execute`: an invocation, a cache, an executor and a scheduler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrun.api import Target, run
from taskrun.config import (
    RuntimeSettings,
    Settings,
    available_cpus,
    find_task_file,
    load_settings,
)
from taskrun.errors import Interrupted, Terminated, UsageError
from taskrun.invocation import Invocation, invoke
from taskrun.registry import Registry

__all__ = ["Project", "mark_state_dir", "open_cache", "run", "run_from_cli", "runtime_of"]

STATE_DIR = Path(".taskrun")
CACHE_DIR = Path(".taskrun") / "cache"
STAT_CACHE = Path(".taskrun") / "stat-cache"
SOURCE_MEMO = Path(".taskrun") / "source-memo.json"


@dataclass(frozen=True, slots=True)
class Project:
    """A loaded task file with its settings."""

    root: Path
    task_file: Path
    settings: Settings
    registry: Registry

    @classmethod
    def load(cls, directory: Path, task_file: Path | None = None) -> Project:
        from taskrun.loader import load_task_file

        path = find_task_file(directory, task_file)
        settings = load_settings(path)
        registry = load_task_file(path)
        return cls(root=path.parent, task_file=path, settings=settings, registry=registry)

    def invoke(
        self, targets: Sequence[str], assignments: Sequence[str] = ()
    ) -> Invocation:
        from taskrun.files import external_roots

        with external_roots(self.settings.external):
            return invoke(
                self.registry, targets, root=self.root, assignments=assignments,
                config=self.settings.options, default_targets=self.settings.default,
            )

    def context(self) -> contextlib.AbstractContextManager[None]:
        """Working directory, ``sys.path`` and modules of this project, restored after."""
        from taskrun.loader import project_context

        return project_context(self.root, self.registry.project_modules, self.settings.external)


_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by taskrun.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


def mark_state_dir(root: Path) -> None:
    """Create ``ROOT/.taskrun`` with a ``.gitignore`` (``*``) and a ``CACHEDIR.TAG``.

    So ``git status`` does not list taskrun's local state and backup tools that honour
    cache directory tags skip it. Existing files are left as they are.
    """
    state = root / STATE_DIR
    if (state / "CACHEDIR.TAG").is_file():  # perf: one stat on every run after the first
        return
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only checkout (or a full disk) must still run: it only marks
    for name, text in (
        (".gitignore", "# taskrun's local state and cache; never commit it\n*\n"),
        ("CACHEDIR.TAG", _CACHEDIR_TAG),
    ):
        with contextlib.suppress(OSError):  # exists already, or cannot be written
            with open(state / name, "x", encoding="utf-8") as fh:
                fh.write(text)


def runtime_of(settings: RuntimeSettings | None, root: Path | None = None) -> dict[str, str]:
    """The runtime facts that enter every fingerprint (probes run in the project root)."""
    from taskrun.fingerprint import runtime_facts

    s = settings or RuntimeSettings()
    return runtime_facts(
        python=s.python, platform=s.platform, env=s.env, probes=s.probes, cwd=root
    )


def open_cache(
    root: Path,
    cache_dir: Path | str | None = None,
    *,
    size_limit: int | None = None,
    mode: str = "rw",
    on_warning: Callable[[str], None] | None = None,
) -> Any:
    """The project's cache (``.taskrun/cache`` under the root unless told otherwise)."""
    from taskrun.cache import DEFAULT_SIZE_LIMIT, Cache

    if mode not in ("rw", "read", "off"):
        raise UsageError(f"cache mode {mode!r} is not one of rw, read, off")
    directory = Path(cache_dir) if cache_dir is not None else root / CACHE_DIR
    if not directory.is_absolute():
        directory = root / directory
    if mode == "rw" and directory.is_relative_to(root / STATE_DIR):
        mark_state_dir(root)
    return Cache(
        directory,
        size_limit=size_limit or DEFAULT_SIZE_LIMIT,
        key=Cache.key_from_env(),
        mode=mode,  # type: ignore[arg-type]
        on_warning=on_warning,
    )


def execute(
    invocation: Invocation,
    *,
    jobs: int | None = None,
    executor: str = "thread",
    cache: Any,
    runtime: Mapping[str, str],
    force: Sequence[str] = (),
    force_all: bool = False,
    keep_going: bool = False,
    on_event: Callable[[Any], None] | None = None,
    executor_options: Mapping[str, Any] | None = None,
    remote_cache: str | None = None,
    remote_mode: str | None = None,
    on_scheduler: Callable[[Any], None] | None = None,
    dask_options: Mapping[str, Any] | None = None,
) -> Any:
    """Run a validated invocation; returns a :class:`~taskrun.scheduler.RunResult`.

    ``remote_cache``/``remote_mode`` (else ``TASKRUN_REMOTE_CACHE``/``_MODE``) add a
    shared store behind ``cache`` (see :mod:`taskrun.remote`). ``on_scheduler`` receives
    the scheduler before it starts (``taskrun.start`` keeps it to read states and cancel).
    """
    from taskrun.codewalk import SourceMemo
    from taskrun.executors import make_executor
    from taskrun.files import StatCache
    from taskrun.scheduler import Scheduler

    unknown = [t for t in force if t not in invocation.registry.tasks]
    if unknown:
        from taskrun.errors import did_you_mean

        hint = did_you_mean(unknown[0], invocation.registry.tasks)
        raise UsageError(f"--force {unknown[0]}: there is no such task{hint}")
    from taskrun.loader import project_context

    jobs = jobs or available_cpus()
    root = invocation.root
    from taskrun.streaming import Feed

    # Executors report from their own threads (starts, output lines, progress): the feed
    # hands the sink one event at a time.
    feed = sink = Feed(on_event or (lambda e: None))
    remote = None
    if remote_cache or remote_mode or os.environ.get("TASKRUN_REMOTE_CACHE"):
        from taskrun.events import Warned
        from taskrun.remote import open_remote

        remote = open_remote(
            remote_cache, remote_mode, cache=cache, on_warning=lambda m: sink(Warned(m))
        )
    stat_path = root / STAT_CACHE if cache.mode != "off" else None
    if stat_path is not None and cache.mode == "read":
        stat_path = None  # read mode writes nothing, not even local state
    if stat_path is not None:
        mark_state_dir(root)
    with contextlib.ExitStack() as stack:
        # Tasks run with the project root as their working directory, wherever taskrun
        # was started; File("build/x") then means the same file in every task and
        # executor. The project's modules are importable; all is restored after.
        stack.enter_context(
            project_context(root, invocation.registry.project_modules, invocation.external)
        )
        ex = stack.enter_context(make_executor(executor, jobs, **(executor_options or {})))
        ex.feed = feed

        def executor_for(name: str) -> Any:
            # A task's executor= names another backend: one more executor for this run,
            # made on first use (only the Dask one takes the run's Dask options).
            extra = dask_options if name == "dask" else None
            more = stack.enter_context(make_executor(name, jobs, **(extra or {})))
            more.feed = feed
            return more

        scheduler = Scheduler(
            invocation,
            cache=cache,
            executor=ex,
            runtime=runtime,
            stat_cache=StatCache(stat_path),
            remote=remote,
            source_memo=SourceMemo(root / SOURCE_MEMO if stat_path is not None else None),
            force=frozenset(force),
            force_all=force_all,
            keep_going=keep_going,
            on_event=feed,
            executor_for=executor_for,
        )
        if on_scheduler is not None:
            on_scheduler(scheduler)
        return scheduler.run()


def prepare_run(
    targets: Target | Sequence[Target] = (),
    *,
    options: Mapping[Any, Any] | None = None,
    registry: Registry | None = None,
    root: Path | str | None = None,
    jobs: int | None = None,
    executor: str = "thread",
    cache_dir: Path | str | None = None,
    cache_size: int | str | None = None,
    cache_mode: str = "rw",
    force: Sequence[Target] = (),
    force_all: bool = False,
    keep_going: bool = False,
    runtime: RuntimeSettings | None = None,
    on_event: Callable[[Any], None] | None = None,
    remote_cache: str | None = None,
    remote_mode: str | None = None,
    external: Mapping[str, Path | str] | None = None,
    on_scheduler: Callable[[Any], None] | None = None,
) -> Callable[[], Any]:
    """Validate a run now (errors raise here); return the function that runs it.

    What :func:`taskrun.run` and :func:`taskrun.start` share; see ``taskrun.run``.
    """
    from taskrun.config import parse_size, require_posix
    from taskrun.files import external_roots
    from taskrun.registry import default_registry

    require_posix()
    registry = registry if registry is not None else default_registry
    if isinstance(targets, str) or callable(targets):
        targets = [targets]
    if root is None:
        module = registry.module
        root = Path(module.__file__).parent if module and module.__file__ else Path.cwd()
    root = Path(root).resolve()
    with external_roots(external or {}):
        invocation = invoke(registry, list(targets), root=root, options=options)
    size = parse_size(cache_size, where="cache_size=") if cache_size is not None else None
    names = [t if isinstance(t, str) else registry.name_of(t) for t in force]
    cache = open_cache(root, cache_dir, size_limit=size, mode=cache_mode)
    facts = runtime_of(runtime, root)

    def go() -> Any:
        try:
            return execute(
                invocation, jobs=jobs, executor=executor, cache=cache, runtime=facts,
                force=names, force_all=force_all, keep_going=keep_going, on_event=on_event,
                remote_cache=remote_cache, remote_mode=remote_mode, on_scheduler=on_scheduler,
            )
        finally:
            cache.close()

    return go


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
            project, targets, assignments, jobs=jobs, executor=executor,
            dask_address=dask_address, dask_ship_files=dask_ship_files, force=force,
            force_all=force_all, keep_going=keep_going, dry_run=dry_run, as_json=as_json,
            cache_dir=cache_dir, cache_mode=cache_mode, remote_cache=remote_cache,
            remote_mode=remote_mode, quiet=quiet, verbose=verbose,
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
) -> int:
    from taskrun.report import make_reporter

    settings = project.settings
    invocation = project.invoke(targets, assignments)
    reporter = make_reporter(as_json=as_json, quiet=quiet, verbose=verbose)
    mode = cache_mode or settings.cache_mode or "rw"
    if dry_run and mode == "rw":
        mode = "read"  # a dry run writes nothing, not even a new cache directory
    runtime = runtime_of(settings.runtime, project.root)
    executor = executor or settings.executor or "thread"
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
                project.root, invocation, settings.keep_runs, executor=executor,
                jobs=jobs or settings.jobs or os.cpu_count() or 1, runtime=runtime,
                cache_mode=mode, warn=reporter.warning,
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
            project.root, cache_dir or settings.cache_dir, size_limit=settings.cache_size,
            mode=mode, on_warning=reporter.warning,
        )
        if dry_run:
            from taskrun.scheduler import Scheduler

            scheduler = Scheduler(
                invocation, cache=cache, runtime=runtime, force=frozenset(force),
                force_all=force_all,
            )
            with project.context():
                for item in scheduler.plan():
                    reporter(item)
            return 0
        result = execute(
            invocation, jobs=jobs or settings.jobs, executor=executor, cache=cache,
            runtime=runtime, force=force, force_all=force_all, keep_going=keep_going,
            on_event=sink, executor_options=options, dask_options=dask_options,
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
    return 0 if result.ok else 1
