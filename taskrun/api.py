"""The Python API: :func:`run`, :func:`start` and their results.

``taskrun.run`` builds the same pieces as ``taskrun run`` (an invocation, a cache, an
executor, a scheduler) and returns a :class:`~taskrun.scheduler.RunResult` instead of
printing. It leaves the process as it found it: the working directory, ``sys.path`` and
``sys.modules`` are restored when it returns (see :func:`taskrun.loader.project_context`).

``taskrun.start`` validates the same way, right away (a definition or invocation error
raises from ``start`` itself), then runs on a background thread, which becomes the run's
driver. The handle reads the driver's state without locks: each task's state is one
string, replaced whole. The run changes the process's working directory to the project
root while it goes (as ``run`` does); code in other threads that uses relative paths sees
that.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # perf: `import taskrun` must not import the scheduler
    from taskrun.config import RuntimeSettings
    from taskrun.events import Event
    from taskrun.registry import Registry
    from taskrun.scheduler import RunResult

__all__ = [
    "ExecutorName",
    "OptionValues",
    "RunHandle",
    "RunStatus",
    "Target",
    "run",
    "start",
]

#: A target: a task's name or the task function itself.
Target = str | Callable[..., Any]
#: Where tasks run.
ExecutorName = Literal["inline", "thread", "process", "dask"]
#: ``options=`` in any of the command line's forms: ``{"task.opt": v}``, ``{"opt": v}``
#: (every planned task that has it), ``{task: {"opt": v}}`` (task by name or function).
OptionValues = Mapping[Any, Any]


def run(
    targets: Target | Sequence[Target] = (),
    *,
    options: OptionValues | None = None,
    registry: Registry | None = None,
    root: Path | str | None = None,
    jobs: int | None = None,
    executor: ExecutorName | None = None,
    cache_dir: Path | str | None = None,
    cache_size: int | str | None = None,
    cache_mode: Literal["rw", "read", "off"] | None = None,
    force: Sequence[Target] = (),
    force_all: bool = False,
    keep_going: bool = False,
    runtime: RuntimeSettings | None = None,
    on_event: Callable[[Event], None] | None = None,
    remote_cache: str | None = None,
    remote_mode: Literal["rw", "read", "off"] | None = None,
    external: Mapping[str, Path | str] | None = None,
    project_settings: bool = True,
) -> RunResult:
    """Run ``targets`` (task names or task functions) and what they need.

    ``options`` takes the command line's forms: ``{"fit.alpha": 0.3}``, ``{"alpha": 0.3}``
    (every planned task that has the option) or ``{"fit": {"alpha": 0.3}}``; a string is
    parsed as on the command line (``"0.3"`` for a float) when it is not already a valid
    value. ``registry`` defaults to :data:`taskrun.default_registry`; ``root`` (the project
    directory, where tasks run and outputs go) to the task file's folder, wherever the
    process started: the file the loader read, else a ``tasks.py`` imported by name at or
    above the folder of the task definitions (the nearest), else the folder of the file
    that defines the tasks (their common folder if several do), else the current
    directory (tasks typed at a REPL). ``jobs`` defaults to the CPUs this process may
    use; ``cache_dir`` to ``ROOT/.taskrun/cache``; ``cache_size`` takes bytes or
    ``"2GiB"``; ``remote_cache`` (an fsspec URL) and ``remote_mode`` add a shared store
    behind the local cache; ``external`` declares folders outside the project by name,
    as ``[tool.taskrun] external`` does (``{"data": "/data/shared"}``).

    Like ``taskrun run``, it reads ``[tool.taskrun]`` from the ``pyproject.toml`` beside
    the task file (else in ``root``): option values, default targets, jobs, executor,
    cache directory, size and mode, runtime facts, external folders and the remote cache.
    An argument given here wins over the file, as the command line does; option values
    merge (``options`` over ``[tool.taskrun.options]``). ``project_settings=False`` reads
    no file.

    Returns a :class:`~taskrun.scheduler.RunResult`: ``result.tasks[name].state`` is
    ran/cached/failed/skipped/cancelled, ``result.products[name]`` a target's product and
    ``result.product(name_or_task)`` any task's. Definition and invocation errors raise
    before anything runs; task failures do not raise, they are in the result
    (``result.ok``).
    """
    result: RunResult = prepare_run(
        targets,
        options=options,
        registry=registry,
        root=root,
        jobs=jobs,
        executor=executor,
        cache_dir=cache_dir,
        cache_size=cache_size,
        cache_mode=cache_mode,
        force=force,
        force_all=force_all,
        keep_going=keep_going,
        runtime=runtime,
        on_event=on_event,
        remote_cache=remote_cache,
        remote_mode=remote_mode,
        external=external,
        project_settings=project_settings,
    )()
    return result


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
    handle = RunHandle()
    go = prepare_run(targets, on_scheduler=handle._attach, **kwargs)
    handle._launch(go)
    return handle


def task_file_of(registry: Registry) -> Path | None:
    """The task file whose folder is ``registry``'s project root, if one can be told.

    The file the loader read (``taskrun run``); else, for tasks defined by a plain
    ``import tasks``, the nearest ``tasks.py`` module already imported from the folder
    of the task definitions or a folder above it (``taskrun run`` would find that one
    from there); else the file that defines the tasks (a ``tasks.py`` in their common
    folder when several files do). None when no task comes from a file (``python -c``).
    """
    from taskrun.config import TASK_FILE

    module = registry.module
    if module is not None and module.__file__:
        return Path(module.__file__)
    files = {
        os.path.abspath(spec.file)
        for spec in registry.tasks.values()
        if os.path.isfile(spec.file)  # not "<stdin>" or "<string>"
    }
    if not files:
        return None
    if len(files) == 1:
        defining = Path(files.pop())
    else:
        defining = Path(os.path.commonpath([os.path.dirname(f) for f in files]), TASK_FILE)
    above = (defining.parent, *defining.parent.parents)
    imported = [
        Path(os.path.abspath(file))
        for mod in list(sys.modules.values())
        if (file := getattr(mod, "__file__", None)) and os.path.basename(file) == TASK_FILE
    ]
    # The nearest imported task file at or above the definitions (`import tasks`, whose
    # tasks may come from a module beside it).
    nearest = [f for f in imported if f.parent in above]
    return max(nearest, key=lambda f: len(f.parts)) if nearest else defining


def prepare_run(
    targets: Target | Sequence[Target] = (),
    *,
    options: Mapping[Any, Any] | None = None,
    registry: Registry | None = None,
    root: Path | str | None = None,
    jobs: int | None = None,
    executor: str | None = None,
    cache_dir: Path | str | None = None,
    cache_size: int | str | None = None,
    cache_mode: str | None = None,
    force: Sequence[Target] = (),
    force_all: bool = False,
    keep_going: bool = False,
    runtime: RuntimeSettings | None = None,
    on_event: Callable[[Any], None] | None = None,
    remote_cache: str | None = None,
    remote_mode: str | None = None,
    external: Mapping[str, Path | str] | None = None,
    on_scheduler: Callable[[Any], None] | None = None,
    project_settings: bool = True,
) -> Callable[[], Any]:
    """Validate a run now (errors raise here); return the function that runs it.

    What :func:`taskrun.run` and :func:`taskrun.start` share; see ``taskrun.run``.
    """
    from taskrun.config import Settings, load_settings, parse_size, require_posix
    from taskrun.errors import InvocationError, Problem
    from taskrun.files import external_roots
    from taskrun.invocation import invoke
    from taskrun.project import execute, open_cache, runtime_of
    from taskrun.registry import default_registry

    require_posix()
    if not len(registry if registry is not None else default_registry):
        # The usual slip: a script that calls taskrun.run without importing its tasks
        # (`taskrun list` loads tasks.py itself, so it shows them).
        fix = (
            "no tasks are registered; import your task file (e.g. `import tasks`) before"
            " taskrun.run, or pass registry="
            if registry is None
            else "the registry passed as registry= has no tasks; pass the one your tasks"
            " were defined in (taskrun.default_registry after `import tasks`)"
        )
        raise InvocationError([Problem("taskrun.run", fix)])
    registry = registry if registry is not None else default_registry
    if isinstance(targets, str) or callable(targets):
        targets = [targets]
    task_file = task_file_of(registry)
    root = Path(root if root is not None else task_file.parent if task_file else Path.cwd())
    root = root.resolve()
    settings = Settings(root=root, task_file=task_file or root / "tasks.py")
    if project_settings:  # the pyproject.toml beside the task file, as the CLI reads it
        settings = load_settings(task_file.resolve() if task_file else root / "tasks.py")
    executor = executor or settings.executor or "thread"
    address = settings.dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    dask_options = {"address": address} if executor == "dask" and address else None
    with external_roots({**settings.external, **(external or {})}):
        invocation = invoke(
            registry,
            list(targets),
            root=root,
            options=options,
            config=settings.options,
            default_targets=settings.default,
        )
    size = parse_size(cache_size, where="cache_size=") if cache_size is not None else None
    names = [t if isinstance(t, str) else registry.name_of(t) for t in force]
    cache = open_cache(
        root,
        cache_dir or settings.cache_dir,
        size_limit=size if size is not None else settings.cache_size,
        mode=cache_mode or settings.cache_mode or "rw",
    )
    facts = runtime_of(runtime if runtime is not None else settings.runtime, root)
    jobs = jobs or settings.jobs
    remote_cache = remote_cache or settings.remote_cache
    remote_mode = remote_mode or settings.remote_mode

    def go() -> Any:
        try:
            return execute(
                invocation,
                jobs=jobs,
                executor=executor,
                cache=cache,
                runtime=facts,
                force=names,
                force_all=force_all,
                keep_going=keep_going,
                on_event=on_event,
                remote_cache=remote_cache,
                remote_mode=remote_mode,
                on_scheduler=on_scheduler,
                executor_options=dask_options,
                dask_options=dask_options,
            )
        finally:
            cache.close()

    return go
