"""The Python API: :func:`run` and its results.

``taskrun.run`` builds the same pieces as ``taskrun run`` (an invocation, a cache, an
executor, a scheduler) and returns a :class:`~taskrun.scheduler.RunResult` instead of
printing. It leaves the process as it found it: the working directory, ``sys.path`` and
``sys.modules`` are restored when it returns (see :func:`taskrun.loader.project_context`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # perf: `import taskrun` must not import the scheduler
    from taskrun.config import RuntimeSettings
    from taskrun.events import Event
    from taskrun.registry import Registry
    from taskrun.scheduler import RunResult

__all__ = ["ExecutorName", "OptionValues", "Target", "run"]

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
    executor: ExecutorName = "thread",
    cache_dir: Path | str | None = None,
    cache_size: int | str | None = None,
    cache_mode: Literal["rw", "read", "off"] = "rw",
    force: Sequence[Target] = (),
    force_all: bool = False,
    keep_going: bool = False,
    runtime: RuntimeSettings | None = None,
    on_event: Callable[[Event], None] | None = None,
    remote_cache: str | None = None,
    remote_mode: Literal["rw", "read", "off"] | None = None,
    external: Mapping[str, Path | str] | None = None,
) -> RunResult:
    """Run ``targets`` (task names or task functions) and what they need.

    ``options`` takes the command line's forms: ``{"fit.alpha": 0.3}``, ``{"alpha": 0.3}``
    (every planned task that has the option) or ``{"fit": {"alpha": 0.3}}``; a string is
    parsed as on the command line (``"0.3"`` for a float) when it is not already a valid
    value. ``registry`` defaults to :data:`taskrun.default_registry`; ``root`` (the project
    directory, where tasks run and outputs go) to the task file's directory, else the
    current directory. ``jobs`` defaults to the CPUs this process may use; ``cache_dir``
    to ``ROOT/.taskrun/cache``; ``cache_size`` takes bytes or ``"2GiB"``; ``remote_cache``
    (an fsspec URL) and ``remote_mode`` add a shared store behind the local cache;
    ``external`` declares folders outside the project by name, as ``[tool.taskrun]
    external`` does (``{"data": "/data/shared"}``).

    Returns a :class:`~taskrun.scheduler.RunResult`: ``result.tasks[name].state`` is
    ran/cached/failed/skipped, ``result.products[name]`` a target's product and
    ``result.product(name_or_task)`` any task's. Definition and invocation errors raise
    before anything runs; task failures do not raise, they are in the result
    (``result.ok``).
    """
    from taskrun.config import parse_size, require_posix
    from taskrun.files import external_roots
    from taskrun.invocation import invoke
    from taskrun.project import execute, open_cache, runtime_of
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
    cache = open_cache(root, cache_dir, size_limit=size, mode=cache_mode)
    names = [t if isinstance(t, str) else registry.name_of(t) for t in force]
    try:
        result: RunResult = execute(
            invocation, jobs=jobs, executor=executor, cache=cache,
            runtime=runtime_of(runtime, root), force=names, force_all=force_all,
            keep_going=keep_going, on_event=on_event, remote_cache=remote_cache,
            remote_mode=remote_mode,
        )
        return result
    finally:
        cache.close()
