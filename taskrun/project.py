"""A project (task file, settings, registry) and the engine its runs share.

:class:`Project` loads a task file with its settings; :func:`open_cache`,
:func:`runtime_of` and :func:`execute` build the pieces of a run (a cache, the runtime
facts, an executor and a scheduler). Two entry points use them: the Python API,
:func:`taskrun.api.run` / :func:`taskrun.api.start` (through
:func:`taskrun.api.prepare_run`), and ``taskrun run`` (:mod:`taskrun.cli_run`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrun.config import (
    RuntimeSettings,
    Settings,
    available_cpus,
    find_task_file,
    load_settings,
)
from taskrun.errors import UsageError
from taskrun.invocation import Invocation, invoke
from taskrun.registry import Registry

__all__ = ["Project", "execute", "mark_state_dir", "open_cache", "runtime_of"]

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

    def invoke(self, targets: Sequence[str], assignments: Sequence[str] = ()) -> Invocation:
        from taskrun.files import external_roots

        with external_roots(self.settings.external):
            return invoke(
                self.registry,
                targets,
                root=self.root,
                assignments=assignments,
                config=self.settings.options,
                default_targets=self.settings.default,
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
        # exists already, or cannot be written
        with contextlib.suppress(OSError), open(state / name, "x", encoding="utf-8") as fh:
            fh.write(text)


def runtime_of(settings: RuntimeSettings | None, root: Path | None = None) -> dict[str, str]:
    """The runtime facts that enter every fingerprint (probes run in the project root)."""
    from taskrun.fingerprint import runtime_facts

    s = settings or RuntimeSettings()
    return runtime_facts(python=s.python, platform=s.platform, env=s.env, probes=s.probes, cwd=root)


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
    # hands the sink one event at a time (a feed given, as the CLI's capture makes, is used
    # as it is: perf, one lock per event, not two).
    feed = sink = on_event if isinstance(on_event, Feed) else Feed(on_event or (lambda e: None))
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


# Moved in 0.x (one release of old import paths): the Python API to taskrun.api, the
# `taskrun run` glue to taskrun.cli_run. Lazy, so that imports keep flowing one way.
_MOVED = {
    "run": "taskrun.api",
    "prepare_run": "taskrun.api",
    "run_from_cli": "taskrun.cli_run",
    "load_overrides": "taskrun.cli_run",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'taskrun.project' has no attribute {name!r}")
