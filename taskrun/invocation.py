"""The invocation phase: targets and option values -> a frozen, fully typed Invocation.

Values come from three places, the first that has one wins: the command line
(``TASK.OPTION=VALUE`` or unqualified ``OPTION=VALUE``), ``[tool.taskrun.options]``, the
option's default. Every value is parsed and checked (parent type, then own predicate).
Every problem is collected; if there is any, :class:`InvocationError` lists them all and
nothing runs.

Within one place, a qualified value beats an unqualified one, and on the command line a
later value beats an earlier one of the same kind (``-o top=1 -o top=2`` sets 2).
Command-line values are text and are parsed; values from ``options=`` are Python values
and are only checked; a TOML *string* from the config file is parsed like text (TOML has
no bytes, enum or null), any other TOML value is checked.
"""

from __future__ import annotations

import types as pytypes
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrun.errors import InvocationError, Problem, TypeCheckError, did_you_mean
from taskrun.registry import Registry, TaskSpec

__all__ = ["Invocation", "invoke", "parse_assignment"]

SOURCE_CLI = "command line"
SOURCE_API = "options="
SOURCE_CONFIG = "pyproject.toml"
SOURCE_DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Invocation:
    """What a run will do: the tasks in order, each with every option value typed."""

    registry: Registry
    root: Path
    targets: tuple[str, ...]
    order: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, Mapping[str, str]]
    # Tasks whose when= is false, with the reason: skipped before anything runs.
    skipped: Mapping[str, str] = field(default_factory=dict)

    def spec(self, name: str) -> TaskSpec:
        return self.registry.tasks[name]


def parse_assignment(text: str) -> tuple[str | None, str, str]:
    """``"task.opt=v"`` -> ``("task", "opt", "v")``; ``"opt=v"`` -> ``(None, "opt", "v")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r} is not OPTION=VALUE or TASK.OPTION=VALUE")
    key = key.strip()
    task, dot, option = key.partition(".")
    return (task, option, value) if dot else (None, key, value)


def invoke(
    registry: Registry,
    targets: Sequence[str | Callable[..., Any]] = (),
    *,
    root: Path,
    assignments: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    default_targets: Sequence[str] = (),
) -> Invocation:
    """Validate targets and option values; raise InvocationError listing every problem.

    ``assignments`` are command-line strings (parsed from text); ``options`` are Python
    values from the API, ``{task: {option: value}}``; ``config`` is the raw
    ``[tool.taskrun.options]`` table. Precedence: assignments, options, config, default.
    """
    problems: list[Problem] = []
    names = _targets(registry, targets, default_targets, problems)
    targets_ok = not problems
    order = registry.graph.subgraph(names) if names else []
    planned = {n: registry.tasks[n] for n in order}

    layers: list[tuple[str, dict[tuple[str, str], tuple[Any, bool]]]] = [
        (SOURCE_CLI, _from_cli(assignments, registry, planned, problems, targets_ok)),
        (SOURCE_API, _from_api(options or {}, registry, planned, problems)),
        (SOURCE_CONFIG, _from_config(config or {}, registry, planned, problems)),
    ]
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for name, spec in planned.items():
        values[name], sources[name] = {}, {}
        for opt in spec.options:
            where = f"option '{opt.name}' of task '{name}' ({spec.where})"
            key = (name, opt.name)
            found = next(((src, layer[key]) for src, layer in layers if key in layer), None)
            if found is not None:
                source, (raw, is_text) = found
            else:
                if opt.required:
                    problems.append(Problem(where, (
                        f"is required and has no value; pass -o {name}.{opt.name}=VALUE"
                        f" ({opt.type.name})"
                    )))
                    continue
                # The default passed its type at definition, but without a root: checking
                # it again normalizes File/Dir paths as a value from the command line would
                # be, and hands each run its own copy of a mutable default.
                raw, is_text, source = opt.default, False, SOURCE_DEFAULT
            try:
                value = (
                    opt.type.parse(raw, root=root) if is_text else opt.type.check(raw, root=root)
                )
            except TypeCheckError as exc:
                # Most messages name the type already ("is not an int"); say it otherwise.
                kind = "" if opt.type.name in exc.message else f", type {opt.type.name}"
                problems.append(Problem(where, f"{exc.message} (from {source}{kind})"))
                continue
            except Exception as exc:  # a custom type raising something of its own
                problems.append(Problem(where, f"{exc} (from {source})"))
                continue
            values[name][opt.name], sources[name][opt.name] = value, source
    skipped = _conditions(planned, values, problems)
    if problems:
        raise InvocationError(problems)
    return Invocation(
        registry=registry,
        root=root,
        targets=tuple(names),
        order=tuple(order),
        options=pytypes.MappingProxyType(
            {n: pytypes.MappingProxyType(v) for n, v in values.items()}
        ),
        sources=pytypes.MappingProxyType(
            {n: pytypes.MappingProxyType(v) for n, v in sources.items()}
        ),
        skipped=pytypes.MappingProxyType(skipped),
    )


def _conditions(
    planned: Mapping[str, TaskSpec],
    values: Mapping[str, Mapping[str, Any]],
    problems: list[Problem],
) -> dict[str, str]:
    """Evaluate each planned task's ``when=`` over its own typed options."""
    from taskrun.rules import evaluate_when

    skipped: dict[str, str] = {}
    for name, spec in planned.items():
        if spec.when is None or len(values.get(name, {})) < len(spec.options):
            continue  # no condition, or an option already has a problem
        try:
            go, reason = evaluate_when(spec.when, values[name])
        except Exception as exc:
            problems.append(Problem(
                f"when= of task '{name}' ({spec.where})",
                f"raised {type(exc).__name__}: {exc}; fix the condition",
            ))
            continue
        if not go:
            skipped[name] = reason
    return skipped


def _targets(
    registry: Registry,
    targets: Sequence[str | Callable[..., Any]],
    default_targets: Sequence[str],
    problems: list[Problem],
) -> list[str]:
    wanted: list[Any] = list(targets) or list(default_targets)
    if not wanted:
        return registry.graph.sinks()
    names = []
    for t in wanted:
        name = t if isinstance(t, str) else registry._by_fn.get(t)
        if name is None or name not in registry.tasks:
            shown = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
            source = "" if targets else " (from [tool.taskrun] default)"
            problems.append(Problem(
                f"target '{shown}'{source}",
                f"is not a task{did_you_mean(str(shown), registry.tasks)};"
                " `taskrun list` shows the tasks",
            ))
        elif name not in names:
            names.append(name)
    return names


def _unknown_option(
    task: str | None, option: str, registry: Registry, planned: Mapping[str, TaskSpec]
) -> str:
    if task is not None:
        spec = registry.tasks[task]
        choices = [o.name for o in spec.options]
        listed = ", ".join(choices) if choices else "none"
        return (
            f"task '{task}' has no option '{option}'{did_you_mean(option, choices)};"
            f" its options are: {listed}"
        )
    choices = sorted({o.name for s in planned.values() for o in s.options})
    return (
        f"no task in this run has an option '{option}'{did_you_mean(option, choices)};"
        " qualify it as TASK.OPTION=VALUE or check `taskrun list`"
    )


def _spread(
    task: str | None,
    option: str,
    value: Any,
    is_text: bool,
    source: str,
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
    out: dict[tuple[str, str], tuple[Any, bool]],
    *,
    strict_task: bool,
    targets_ok: bool = True,
) -> None:
    where = f"{task}.{option}" if task else option
    if task is not None:
        if task not in registry.tasks:
            hint = did_you_mean(task, registry.tasks)
            problems.append(Problem(
                f"{source} '{where}'",
                f"there is no task '{task}'{hint}; `taskrun list` shows the tasks",
            ))
            return
        if registry.tasks[task].option(option) is None:
            problems.append(
                Problem(f"{source} '{where}'", _unknown_option(task, option, registry, planned))
            )
            return
        if task not in planned:
            if strict_task:
                problems.append(Problem(
                    f"{source} '{where}'",
                    f"task '{task}' is not part of this run; add it as a target or drop the value",
                ))
            return
        out.setdefault((task, option), (value, is_text))
        return
    hits = [n for n, s in planned.items() if s.option(option) is not None]
    if not hits:
        # With a misspelled target the plan is incomplete: an option of some task may
        # well be meant for the task that target names, so only the target is reported.
        known = any(s.option(option) is not None for s in registry.tasks.values())
        if strict_task and (targets_ok or not known):
            problems.append(
                Problem(f"{source} '{where}'", _unknown_option(None, option, registry, planned))
            )
        return
    for n in hits:
        out.setdefault((n, option), (value, is_text))


def _from_cli(
    assignments: Iterable[str],
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
    targets_ok: bool = True,
) -> dict[tuple[str, str], tuple[Any, bool]]:
    # Qualified values beat unqualified ones whatever their order on the command line.
    parsed: list[tuple[str | None, str, str]] = []
    for text in assignments:
        try:
            parsed.append(parse_assignment(text))
        except ValueError as exc:
            problems.append(Problem("-o", f"{exc}; write -o TASK.OPTION=VALUE"))
    out: dict[tuple[str, str], tuple[Any, bool]] = {}
    # _spread keeps the first value it sees for an option: walk qualified values first,
    # and each kind from the last to the first, so the last one written wins.
    for task, option, value in sorted(reversed(parsed), key=lambda p: p[0] is None):
        _spread(task, option, value, True, "-o", registry, planned, problems, out,
                strict_task=True, targets_ok=targets_ok)
    return out


def _from_api(
    options: Mapping[str, Mapping[str, Any]],
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
) -> dict[tuple[str, str], tuple[Any, bool]]:
    out: dict[tuple[str, str], tuple[Any, bool]] = {}
    for task, table in options.items():
        task_name = task if isinstance(task, str) else registry._by_fn.get(task, str(task))
        if not isinstance(table, Mapping):
            problems.append(Problem(f"options['{task_name}']", "must be a dict of option -> value"))
            continue
        for option, value in table.items():
            _spread(
                task_name, option, value, False, "options=", registry, planned, problems, out,
                strict_task=True,
            )
    return out


def _from_config(
    config: Mapping[str, Any],
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
) -> dict[tuple[str, str], tuple[Any, bool]]:
    # The file serves every run, so a value for a task outside this run is not an error;
    # a value no task could ever take is.
    out: dict[tuple[str, str], tuple[Any, bool]] = {}
    source = "[tool.taskrun.options]"
    qualified = [(k, v) for k, v in config.items() if k in registry.tasks and isinstance(v, dict)]
    plain = [(k, v) for k, v in config.items() if not (k in registry.tasks and isinstance(v, dict))]
    for task, table in qualified:
        for option, value in table.items():
            _spread(task, option, value, isinstance(value, str), source, registry, planned,
                    problems, out, strict_task=False)
    for option, value in plain:
        if not any(s.option(option) for s in registry.tasks.values()):
            choices = sorted({o.name for s in registry.tasks.values() for o in s.options})
            problems.append(Problem(
                f"{source} '{option}'",
                f"no task has an option '{option}'"
                f"{did_you_mean(option, [*choices, *registry.tasks])}",
            ))
            continue
        _spread(None, option, value, isinstance(value, str), source, registry, planned,
                problems, out, strict_task=False)
    return out
