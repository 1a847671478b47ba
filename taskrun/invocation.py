"""The invocation phase: targets and option values -> a frozen, fully typed Invocation.

Values come from three places, the first that has one wins: the command line
(``TASK.OPTION=VALUE`` or unqualified ``OPTION=VALUE``), ``[tool.taskrun.options]``, the
option's default. Every value is parsed and checked (parent type, then own predicate).
Every problem is collected; if there is any, :class:`InvocationError` lists them all and
nothing runs.

Within one place, a qualified value beats an unqualified one, and on the command line a
later value beats an earlier one of the same kind (``-o top=1 -o top=2`` sets 2).
Command-line values are text and are parsed; values from ``options=`` are Python values
and are checked (a string that fails the check is parsed as text, so ``"0.3"`` serves a
float option); a TOML *string* from the config file is parsed like text (TOML has
no bytes, enum or null), any other TOML value is checked.
"""

from __future__ import annotations

import os
import types as pytypes
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrun.errors import (
    DefinitionError,
    InvocationError,
    Problem,
    TypeCheckError,
    did_you_mean,
)
from taskrun.files import current_external_roots
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
    #: ``[tool.taskrun] external`` roots the values were checked with (name -> folder).
    external: Mapping[str, str] = field(default_factory=dict)
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
    options: Mapping[Any, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    default_targets: Sequence[str] = (),
) -> Invocation:
    """Validate targets and option values; raise InvocationError listing every problem.

    ``assignments`` are command-line strings (parsed from text); ``options`` are Python
    values from the API in the command line's forms (``{task: {option: value}}``,
    ``{"task.option": value}``, ``{"option": value}``); ``config`` is the raw
    ``[tool.taskrun.options]`` table. Precedence: assignments, options, config, default.
    """
    problems: list[Problem] = []
    derived: list[str] = []  # option values read from file targets (results/p_{p}.json)
    names = _targets(registry, targets, default_targets, problems, root=root, derived=derived)
    targets_ok = not problems
    assignments = [*derived, *assignments]  # a value written on the command line wins
    order = registry.graph.subgraph(names) if names else []
    planned = {n: registry.tasks[n] for n in order}

    layers: list[tuple[str, dict[tuple[str, str], tuple[Any, bool | None]]]] = [
        (SOURCE_CLI, _from_cli(assignments, registry, planned, problems, targets_ok)),
        (SOURCE_API, _from_api(options or {}, registry, planned, problems)),
        (SOURCE_CONFIG, _from_config(config or {}, registry, planned, problems)),
    ]
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for name, spec in planned.items():
        values[name], sources[name] = {}, {}
        for opt in spec.options:
            key = (name, opt.name)
            for layer_source, layer in layers:  # the first layer that sets it
                if key in layer:
                    source, (raw, is_text) = layer_source, layer[key]
                    break
            else:
                if opt.required:
                    problems.append(
                        Problem(
                            _option_where(opt.name, name, spec),
                            (
                                f"is required and has no value; pass -o {name}.{opt.name}=VALUE"
                                f" ({opt.type.name})" + _task_hint(registry, name, opt.name)
                            ),
                        )
                    )
                    continue
                # The default passed its type at definition, but without a root: checking
                # it again normalizes File/Dir paths as a value from the command line would
                # be, and hands each run its own copy of a mutable default.
                raw, is_text, source = opt.default, False, SOURCE_DEFAULT
            try:
                value = _convert(opt.type, raw, is_text, root)
            except TypeCheckError as exc:
                # Most messages name the type already ("is not an int"); say it otherwise.
                kind = "" if opt.type.name in exc.message else f", type {opt.type.name}"
                where = _option_where(opt.name, name, spec)
                problems.append(Problem(where, f"{exc.message} (from {source}{kind})"))
                continue
            except Exception as exc:  # noqa: BLE001 - a custom type raising something of its own
                where = _option_where(opt.name, name, spec)
                problems.append(Problem(where, f"{exc} (from {source})"))
                continue
            values[name][opt.name], sources[name][opt.name] = value, source
        templated = spec.map is None and any("{" in p for p in spec.outputs)
        if templated and len(values[name]) == len(spec.options):
            _check_outputs(spec, values[name], problems)
        _check_external_inputs(spec, problems)
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
        external=current_external_roots(),
        skipped=pytypes.MappingProxyType(skipped),
    )


def _task_hint(registry: Registry, task: str, option: str) -> str:
    """A required option named like a task was most likely meant as a dependency; one
    beside an order-only dependency (no parameter of its name), as its misnamed receiver."""
    if option in registry.tasks and option != task:
        return (
            f"; or, if it should receive the product of task '{option}', add"
            f" deps=[{option}] to @task(...) of '{task}'"
        )
    unpassed = [d for d in registry.tasks[task].deps if not d.passed]
    if not unpassed:
        return ""
    import difflib

    params = [d.param for d in unpassed]
    closest = difflib.get_close_matches(option, params, n=1, cutoff=0.0) or params
    dep = unpassed[params.index(closest[0])]
    upstream = registry.tasks.get(dep.task)
    shown = getattr(upstream.fn, "__name__", dep.task) if upstream is not None else dep.task
    return (
        f"; or, if it should receive the product of task '{dep.task}', rename the"
        f" parameter to '{dep.param}' or write deps={{\"{option}\": {shown}}}"
    )


def _convert(kind: Any, raw: Any, is_text: bool | None, root: Path) -> Any:
    """Text is parsed, a value checked; ``is_text=None``: checked, else parsed if a string."""
    if is_text:
        return kind.parse(raw, root=root)
    if is_text is None and isinstance(raw, str):
        try:
            return kind.check(raw, root=root)
        except TypeCheckError:
            return kind.parse(raw, root=root)
    return kind.check(raw, root=root)


def _check_external_inputs(spec: TaskSpec, problems: list[Problem]) -> None:
    """``inputs=`` outside the project must be under a root ``[tool.taskrun] external`` names."""
    for pattern in spec.inputs:
        if not pattern.startswith(("/", "@")):
            continue
        from taskrun.files import external_base, external_key

        key = external_key(pattern) if pattern.startswith("/") else pattern
        if key is None or external_base(key) is None:
            name = key.partition("/")[0][1:] if key else "data"
            problems.append(
                Problem(
                    f"inputs pattern '{pattern}' of task '{spec.name}' ({spec.where})",
                    "is outside the project and under no folder declared in pyproject.toml;"
                    f' declare it: [tool.taskrun] external = {{ {name} = "/path/to/folder" }}'
                    + ("" if pattern.startswith("@") else f" and write '@{name}/...'"),
                )
            )


def _check_outputs(spec: TaskSpec, values: Mapping[str, Any], problems: list[Problem]) -> None:
    """Templated outputs filled with these values must still be paths inside the project."""
    from taskrun.globs import compile_pattern, template_fields

    for pattern, filled in zip(spec.outputs, spec.outputs_for(values), strict=True):
        texts = {
            o.name: o.type.format(values[o.name])
            for o in spec.options
            if o.name in template_fields(pattern)
        }
        bad = {f: t for f, t in texts.items() if "/" in t or t in ("", ".", "..")}
        try:
            if bad:
                raise DefinitionError("a value with '/' or an empty value cannot name a file")
            compile_pattern(filled)
        except DefinitionError:
            shown = ", ".join(f"{f}={t!r}" for f, t in (bad or texts).items())
            problems.append(
                Problem(
                    f"output pattern '{pattern}' of task '{spec.name}' ({spec.where})",
                    f"with {shown} it is '{filled}', not a path inside the project; use values"
                    " without '/' (or another output pattern)",
                )
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
        except Exception as exc:  # noqa: BLE001 - when= is user code; what it raises is reported
            problems.append(
                Problem(
                    f"when= of task '{name}' ({spec.where})",
                    f"raised {type(exc).__name__}: {exc}; fix the condition",
                )
            )
            continue
        if not go:
            skipped[name] = reason
    return skipped


def _option_where(option: str, task: str, spec: TaskSpec) -> str:
    return f"option '{option}' of task '{task}' ({spec.where})"


def _targets(
    registry: Registry,
    targets: Sequence[str | Callable[..., Any]],
    default_targets: Sequence[str],
    problems: list[Problem],
    *,
    root: Path | None = None,
    derived: list[str] | None = None,
) -> list[str]:
    wanted: list[Any] = list(targets) or list(default_targets)
    if not wanted:
        return registry.graph.sinks()
    names = []
    for t in wanted:
        name = t if isinstance(t, str) else registry._by_fn.get(t)
        if isinstance(t, str) and name not in registry.tasks and root is not None:
            name = _file_target(registry, t, root, problems, derived)
            if name == "":
                continue  # a file target with a problem of its own
        if name is None or name not in registry.tasks:
            shown = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
            source = "" if targets else " (from [tool.taskrun] default)"
            looks_like_a_file = "/" in str(shown) or "." in str(shown)
            problems.append(
                Problem(
                    f"target '{shown}'{source}",
                    "is neither a task nor a file a task declares in outputs=;"
                    " `taskrun list` shows the tasks and their outputs"
                    if looks_like_a_file
                    else f"is not a task{did_you_mean(str(shown), registry.tasks)};"
                    " `taskrun list` shows the tasks",
                )
            )
        elif name not in names:
            names.append(name)
    return names


def _file_target(
    registry: Registry, text: str, root: Path, problems: list[Problem], derived: list[str] | None
) -> str | None:
    """The task whose ``outputs=`` declare the file TEXT (as make does); None if none does.

    A templated pattern (``results/p_{p}.json``) also gives the option values the file
    name spells (``results/p_0.3.json``: ``p=0.3``). Returns "" after reporting a problem.
    """
    from taskrun.globs import as_wildcard, compile_pattern, template_regex

    if not any(s.outputs for s in registry.tasks.values()):
        return None
    path = Path(os.path.normpath(text))
    if path.is_absolute() or path.parts[:1] == ("..",):
        # Outside the root as written: relative to where taskrun was started, then.
        full = path if path.is_absolute() else Path.cwd() / path
        try:
            path = Path(os.path.normpath(full)).relative_to(root)
        except ValueError:
            return None
    rel = path.as_posix()
    found: list[tuple[str, str]] = []
    for spec in registry.tasks.values():
        for pattern in spec.outputs:
            try:
                if compile_pattern(as_wildcard(pattern)).matches(rel):
                    found.append((spec.name, pattern))
                    break
            except DefinitionError:
                continue
    if not found:
        return None
    if len(found) > 1:  # templated patterns may overlap in what they can name
        problems.append(
            Problem(
                f"target '{text}'",
                "is declared by the outputs of several tasks ("
                + ", ".join(f"'{n}': '{p}'" for n, p in found)
                + "); name the task instead",
            )
        )
        return ""
    name, pattern = found[0]
    # A mapped task's fields name its item, not options: nothing to read back.
    regex = template_regex(pattern) if registry.tasks[name].map is None else None
    match = regex.fullmatch(rel) if regex is not None else None
    if match is not None and derived is not None:
        derived += [f"{name}.{k}={v}" for k, v in match.groupdict().items()]
    return name


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
    is_text: bool | None,
    source: str,
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
    out: dict[tuple[str, str], tuple[Any, bool | None]],
    *,
    strict_task: bool,
    targets_ok: bool = True,
) -> None:
    where = f"{task}.{option}" if task else option
    if task is not None:
        if task not in registry.tasks:
            hint = did_you_mean(task, registry.tasks)
            problems.append(
                Problem(
                    f"{source} '{where}'",
                    f"there is no task '{task}'{hint}; `taskrun list` shows the tasks",
                )
            )
            return
        if registry.tasks[task].option(option) is None:
            problems.append(
                Problem(f"{source} '{where}'", _unknown_option(task, option, registry, planned))
            )
            return
        if task not in planned:
            if strict_task:
                problems.append(
                    Problem(
                        f"{source} '{where}'",
                        f"task '{task}' is not part of this run;"
                        " add it as a target or drop the value",
                    )
                )
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
) -> dict[tuple[str, str], tuple[Any, bool | None]]:
    # Qualified values beat unqualified ones whatever their order on the command line.
    parsed: list[tuple[str | None, str, str]] = []
    for text in assignments:
        try:
            parsed.append(parse_assignment(text))
        except ValueError as exc:
            problems.append(Problem("-o", f"{exc}; write -o TASK.OPTION=VALUE"))
    out: dict[tuple[str, str], tuple[Any, bool | None]] = {}
    # _spread keeps the first value it sees for an option: walk qualified values first,
    # and each kind from the last to the first, so the last one written wins.
    # C414 on purpose: the sort is stable, so reversing before it is what puts the last first.
    for task, option, value in sorted(reversed(parsed), key=lambda p: p[0] is None):  # noqa: C414
        _spread(
            task,
            option,
            value,
            True,
            "-o",
            registry,
            planned,
            problems,
            out,
            strict_task=True,
            targets_ok=targets_ok,
        )
    return out


def _from_api(
    options: Mapping[Any, Any],
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
) -> dict[tuple[str, str], tuple[Any, bool | None]]:
    # The command line's forms: {task: {opt: v}} (task by name or function),
    # {"task.opt": v} and {"opt": v}; qualified values beat unqualified ones. A key that
    # names a task and holds a dict is that task's table. Values are checked as Python
    # values; a string that is not a valid value is parsed as on the command line.
    qualified: list[tuple[str, str, Any]] = []
    plain: list[tuple[str, Any]] = []
    for key, value in options.items():
        name = key if isinstance(key, str) else registry._by_fn.get(key)
        if name is None:
            problems.append(
                Problem(
                    f"options[{key!r}]",
                    "is neither a task nor an option name; write {'task.option': value},"
                    " {'option': value} or {task: {'option': value}}",
                )
            )
        elif name in registry.tasks and isinstance(value, Mapping):
            qualified += [(name, str(o), v) for o, v in value.items()]
        elif name in registry.tasks and not any(
            s.option(name) is not None for s in registry.tasks.values()
        ):
            problems.append(Problem(f"options['{name}']", "must be a dict of option -> value"))
        elif "." in name:
            task, _, option = name.partition(".")
            qualified.append((task, option, value))
        else:
            plain.append((name, value))
    out: dict[tuple[str, str], tuple[Any, bool | None]] = {}
    # Qualified values first: each (task, option) keeps the first value spread to it.
    spread: list[tuple[str | None, str, Any]] = [*qualified, *((None, o, v) for o, v in plain)]
    for owner, option, value in spread:
        _spread(
            owner,
            option,
            value,
            None,
            SOURCE_API,
            registry,
            planned,
            problems,
            out,
            strict_task=True,
        )
    return out


def _from_config(
    config: Mapping[str, Any],
    registry: Registry,
    planned: Mapping[str, TaskSpec],
    problems: list[Problem],
) -> dict[tuple[str, str], tuple[Any, bool | None]]:
    # The file serves every run, so a value for a task outside this run is not an error;
    # a value no task could ever take is.
    out: dict[tuple[str, str], tuple[Any, bool | None]] = {}
    source = "[tool.taskrun.options]"
    qualified = [(k, v) for k, v in config.items() if k in registry.tasks and isinstance(v, dict)]
    plain = [(k, v) for k, v in config.items() if not (k in registry.tasks and isinstance(v, dict))]
    for task, table in qualified:
        for option, value in table.items():
            _spread(
                task,
                option,
                value,
                isinstance(value, str),
                source,
                registry,
                planned,
                problems,
                out,
                strict_task=False,
            )
    for option, value in plain:
        if not any(s.option(option) for s in registry.tasks.values()):
            choices = sorted({o.name for s in registry.tasks.values() for o in s.options})
            problems.append(
                Problem(
                    f"{source} '{option}'",
                    f"no task has an option '{option}'"
                    f"{did_you_mean(option, [*choices, *registry.tasks])}",
                )
            )
            continue
        _spread(
            None,
            option,
            value,
            isinstance(value, str),
            source,
            registry,
            planned,
            problems,
            out,
            strict_task=False,
        )
    return out
