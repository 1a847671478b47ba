"""The ``taskrun`` command line: a thin click layer.

This is the one place where errors become exit codes: 0 success, 1 a task failed,
2 a definition/usage/invocation error, 130 interrupted, 143 terminated (SIGTERM). Heavy
modules (the scheduler, the cache, cloudpickle) are imported inside the commands that need
them, so that ``taskrun list`` and ``--help`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from taskrun.errors import TaskrunError, UsageError

__all__ = ["main"]


@dataclass(frozen=True, slots=True)
class _Where:
    """Where the user pointed us: -C and -f, resolved lazily by each command."""

    directory: Path
    task_file: Path | None


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"taskrun: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns taskrun's errors and Ctrl-C into messages and exit codes, never tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskrunError as exc:
            _fail(exc.message, exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; nothing in flight was recorded", 130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-f",
    "--file",
    "task_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The task file (default: tasks.py here or in the nearest parent).",
)
@click.option(
    "-C",
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run as if taskrun was started in DIR.",
)
@click.version_option(package_name="taskrun", prog_name="taskrun")
@click.pass_context
def main(ctx: click.Context, task_file: Path | None, directory: Path | None) -> None:
    """A build-system-style task runner with a result cache you can trust.

    \b
    Exit codes: 0 success, 1 a task failed, 2 a definition, usage or
    invocation error, 130 interrupted, 143 terminated (SIGTERM).
    Shell completion (bash; zsh and fish alike):
      eval "$(_TASKRUN_COMPLETE=bash_source taskrun)"
    """
    from taskrun.config import require_posix

    require_posix()
    base = Path.cwd()
    if directory is not None:
        if not directory.is_dir():
            raise UsageError(f"-C {directory}: no such directory")
        base = (base / directory).resolve()
    ctx.obj = _Where(base, task_file)


def _owns_process() -> bool:
    """Whether this process is the ``taskrun`` command (``python -m taskrun`` or the
    console script), not a program that calls :func:`main` in-process (CliRunner)."""
    return getattr(sys.modules.get("__main__"), "main", None) is main


def _project(ctx: click.Context) -> Any:
    from taskrun.project import Project

    where = ctx.find_object(_Where)
    if where is None:  # a command invoked without the group: start where we are
        where = _Where(Path.cwd(), None)
    return Project.load(where.directory, where.task_file)


def _settings_of(spec: Any) -> dict[str, Any]:
    """What `taskrun list` says of a task's settings besides options: only non-defaults."""
    shown: dict[str, Any] = {}
    if not spec.cache:
        shown["cache"] = False
    if spec.version is not None:
        shown["version"] = spec.version
    if spec.env:
        shown["env"] = list(spec.env)
    if spec.retries:
        shown["retries"] = spec.retries
    if spec.timeout is not None:
        shown["timeout"] = spec.timeout
    return shown


@main.command("list")
@click.argument("tasks", nargs=-1, shell_complete=lambda c, p, i: _complete_tasks(c, p, i))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, tasks: tuple[str, ...], as_json: bool) -> None:
    """List TASKS (default: every task): options (type, default, doc), dependencies, settings."""
    from taskrun.registry import MISSING

    project = _project(ctx)
    registry = project.registry
    specs = [registry.get(t) for t in tasks] if tasks else list(registry.tasks.values())
    if as_json:
        doc = [
            {
                "name": spec.name,
                "doc": spec.doc,
                "deps": [d.task for d in spec.deps],
                **({"map": {"param": spec.map, "over": _mapped_over(spec)}} if spec.map else {}),
                "options": [
                    {
                        "name": o.name,
                        "type": o.type.name,
                        "required": o.required,
                        "default": None if o.default is MISSING else o.type.format(o.default),
                        "doc": o.type.doc,
                    }
                    for o in spec.options
                ],
                "product": spec.product.name,
                "inputs": list(spec.inputs),
                "outputs": list(spec.outputs),
                "cache": spec.cache,
                "version": spec.version,
                "env": list(spec.env),
                "retries": spec.retries,
                "timeout": spec.timeout,
                "run_if": spec.run_if,  # not "succeeded": deps arrive as Outcome objects
                "when": spec.when is not None,
                "executor": spec.executor,
                "defined_at": spec.where,
            }
            for spec in specs
        ]
        click.echo(json.dumps(doc, indent=2))
        return
    if not registry.tasks:
        click.echo(f"no tasks in {project.task_file}")
        return
    for spec in specs:
        head = click.style(spec.name, bold=True)
        summary = f"  {spec.summary}" if spec.summary else ""
        click.echo(f"{head}{summary}")
        if spec.deps:
            as_outcome = " (as Outcome)" if spec.run_if != "succeeded" else ""
            click.echo(f"    needs: {', '.join(d.task for d in spec.deps)}{as_outcome}")
        if spec.map:
            click.echo(f"    mapped: one call per item of {_mapped_over(spec)} (as {spec.map})")
        if spec.run_if != "succeeded":
            click.echo(f"    runs if: {spec.run_if}")
        if spec.when is not None:
            click.echo("    when: a condition on its options (when=)")
        if spec.executor is not None:
            click.echo(f"    executor: {spec.executor}")
        for o in spec.options:
            default = "required" if o.required else f"default {o.type.format(o.default)}"
            about = f"  {o.type.doc}" if o.type.doc else ""
            click.echo(f"    -o {spec.name}.{o.name}=<{o.type.name}>  ({default}){about}")
        if spec.inputs:
            click.echo(f"    inputs: {', '.join(spec.inputs)}")
        if spec.outputs:
            click.echo(f"    outputs: {', '.join(spec.outputs)}")
        if spec.product.name != "any":
            click.echo(f"    returns: {spec.product.name}")
        settings = _settings_of(spec)
        if settings:
            shown = ", ".join(
                f"{k}={'false' if v is False else ','.join(v) if isinstance(v, list) else v}"
                for k, v in settings.items()
            )
            click.echo(f"    settings: {shown}")


def _mapped_over(spec: Any) -> str:
    return str(next(d.task for d in spec.deps if d.param == spec.map))


def _split_targets(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Allow `taskrun run report top=5` as well as -o top=5."""
    targets: list[str] = []
    assignments: list[str] = []
    for a in args:
        (assignments if "=" in a else targets).append(a)
    return targets, assignments


# -- shell completion ----------------------------------------------------------------------
def _completion_project(ctx: click.Context) -> Any:
    """The project for completion: -C and -f from the command line, errors swallowed."""
    from taskrun.project import Project

    params = ctx.find_root().params
    base = Path.cwd()
    if params.get("directory") is not None:
        base = (base / params["directory"]).resolve()
    return Project.load(base, params.get("task_file"))


def _complete_tasks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    try:
        tasks = _completion_project(ctx).registry.tasks
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []
    return [
        CompletionItem(name, help=spec.summary)
        for name, spec in tasks.items()
        if name.startswith(incomplete)
    ]


def _complete_assignments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    if "=" in incomplete:
        return []
    try:
        tasks = _completion_project(ctx).registry.tasks
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []
    items = []
    for spec in tasks.values():
        for option in spec.options:
            for key in (option.name, f"{spec.name}.{option.name}"):
                if key.startswith(incomplete):
                    items.append(CompletionItem(f"{key}=", help=option.type.name))
    unique = {item.value: item for item in items}
    return list(unique.values())


# -- run -----------------------------------------------------------------------------------
@main.command("run", short_help="Run targets and what they need, reusing cached results.")
@click.argument("targets", nargs=-1, shell_complete=_complete_tasks)
@click.option(
    "-o",
    "--option",
    "assignments",
    multiple=True,
    metavar="[TASK.]OPTION=VALUE",
    shell_complete=_complete_assignments,
    help="Set an option (unqualified: every planned task that has it).",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel jobs (default: the CPUs this process may use).",
)
@click.option(
    "--executor",
    type=click.Choice(["inline", "thread", "process", "dask"]),
    default=None,
    help="Where tasks run (default: thread).",
)
@click.option(
    "--dask-address",
    default=None,
    metavar="ADDR",
    help="An existing Dask scheduler (tcp://HOST:PORT).",
)
@click.option(
    "--dask-ship-files",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Send tasks' files to Dask workers that do not share the project directory.",
)
@click.option(
    "--force",
    "force",
    multiple=True,
    metavar="TASK",
    shell_complete=_complete_tasks,
    help="Rerun TASK regardless of the cache (repeatable).",
)
@click.option("--force-all", is_flag=True, help="Rerun every task regardless of the cache.")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first failure.")
@click.option(
    "--override",
    "overrides",
    multiple=True,
    metavar="TASK=MODULE:FUNCTION",
    shell_complete=_complete_tasks,
    help="Run FUNCTION (importable from the project root) in place of TASK; it may"
    " need fewer dependencies (repeatable).",
)
@click.option(
    "--dry-run", is_flag=True, help="Say for every task: hit, or run and why; run nothing."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, then a summary.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="TASKRUN_CACHE_DIR",
    help="Cache directory (default: [tool.taskrun] cache-dir, else .taskrun/cache).",
)
@click.option(
    "--cache-mode",
    type=click.Choice(["rw", "read", "off"]),
    default=None,
    envvar="TASKRUN_CACHE_MODE",
    help="rw (default), read (never write), off.",
)
@click.option(
    "--remote-cache",
    default=None,
    metavar="URL",
    envvar="TASKRUN_REMOTE_CACHE",
    help="A shared cache behind the local one: any fsspec URL (s3://bucket/prefix,"
    " gs://..., file:///...). Needs TASKRUN_CACHE_KEY.",
)
@click.option(
    "--remote-mode",
    type=click.Choice(["rw", "read", "off"]),
    default=None,
    envvar="TASKRUN_REMOTE_MODE",
    help="rw (default: fetch and upload), read (fetch only, e.g. pull requests), off.",
)
@click.option("-q", "--quiet", count=True, help="Less output (-qq: failures and errors only).")
@click.option(
    "-v", "--verbose", count=True, help="More output: every cached task, starts, sh() commands."
)
@click.pass_context
def run_cmd(
    ctx: click.Context, /, targets: tuple[str, ...], assignments: tuple[str, ...], **kwargs: Any
) -> None:
    """Run TARGETS and what they need, reusing every valid cached result.

    With no TARGETS: the `default` of [tool.taskrun], else every task nothing depends on.
    """
    from taskrun.cli_run import run_from_cli

    plain, inline_assignments = _split_targets(targets)
    project = _project(ctx)
    code = run_from_cli(
        project,
        plain,
        [*assignments, *inline_assignments],
        own_process=_owns_process(),
        **kwargs,
    )
    ctx.exit(code)


# -- explain -------------------------------------------------------------------------------
@main.command("explain", short_help="Say for each task whether it would hit, and what changed.")
@click.argument("targets", nargs=-1, shell_complete=_complete_tasks)
@click.option(
    "-o",
    "--option",
    "assignments",
    multiple=True,
    metavar="[TASK.]OPTION=VALUE",
    shell_complete=_complete_assignments,
    help="Set an option, as for `run`.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="TASKRUN_CACHE_DIR",
    help="Cache directory (default: [tool.taskrun] cache-dir, else .taskrun/cache).",
)
@click.pass_context
def explain_cmd(
    ctx: click.Context,
    targets: tuple[str, ...],
    assignments: tuple[str, ...],
    as_json: bool,
    cache_dir: Path | None,
) -> None:
    """For each task TARGETS need: would it hit, and if not, what changed.

    Each part of a task's fingerprint (code, helpers, options, upstream products, input
    files, environment, runtime) is compared with the entry the task last used (the one its
    last run hit or stored), old value -> new value. Runs nothing and writes nothing.
    """
    from taskrun.project import open_cache, runtime_of
    from taskrun.report_explain import explain_json, explain_lines
    from taskrun.scheduler import Scheduler

    plain, inline_assignments = _split_targets(targets)
    project = _project(ctx)
    settings = project.settings
    invocation = project.invoke(plain, [*assignments, *inline_assignments])
    warnings: list[str] = []
    mode = "off" if settings.cache_mode == "off" else "read"  # read mode never writes
    cache = open_cache(
        project.root,
        cache_dir or settings.cache_dir,
        size_limit=settings.cache_size,
        mode=mode,
        on_warning=warnings.append,
    )
    try:
        runtime = runtime_of(settings.runtime, project.root)
        scheduler = Scheduler(invocation, cache=cache, runtime=runtime)
        with project.context():
            items = scheduler.explain()
    finally:
        cache.close()
    if as_json:
        click.echo(json.dumps(explain_json(items, warnings), indent=2, default=str))
        return
    for line in explain_lines(items, warnings):
        click.echo(line)


# -- graph ---------------------------------------------------------------------------------
@main.command("graph", short_help="Print the task graph as dot, mermaid or json.")
@click.argument("targets", nargs=-1, shell_complete=_complete_tasks)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dot", "mermaid", "json"]),
    default="dot",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def graph_cmd(ctx: click.Context, targets: tuple[str, ...], fmt: str) -> None:
    """Print the task graph (of TARGETS and what they need, or of every task).

    Edges point from a task to the tasks that use its product:
    `taskrun graph --format dot | dot -Tsvg > graph.svg`.
    """
    registry = _project(ctx).registry
    nodes = registry.subgraph(*targets) if targets else None
    graph = registry.graph
    render = {"dot": graph.to_dot, "mermaid": graph.to_mermaid, "json": graph.to_json}[fmt]
    click.echo(render(nodes), nl=False)


# -- clean ---------------------------------------------------------------------------------
@main.command("clean")
@click.argument("tasks", nargs=-1, shell_complete=_complete_tasks)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_context
def clean_cmd(ctx: click.Context, tasks: tuple[str, ...], dry_run: bool) -> None:
    """Remove the declared outputs of TASKS (default: of every task).

    Only files matching a task's `outputs=` globs are removed; the cache keeps its copies,
    so the next `taskrun run` restores them without running anything.
    """
    import os

    from taskrun.files import clean_outputs, own_places
    from taskrun.project import CACHE_DIR

    project = _project(ctx)
    registry = project.registry
    names = [registry.name_of(t) for t in tasks] if tasks else list(registry.tasks)
    from taskrun.mapping import output_globs

    patterns = {n: output_globs(registry.tasks[n]) for n in names if registry.tasks[n].outputs}
    # Never the cache (wherever it is) nor .taskrun, even if an output glob covers them.
    cache_dir = os.environ.get("TASKRUN_CACHE_DIR") or project.settings.cache_dir or CACHE_DIR
    own = own_places(project.root, project.root / cache_dir)
    removed = clean_outputs(patterns, project.root, dry_run=dry_run, exclude=own)
    verb = "would remove" if dry_run else "removed"
    for path in removed:
        click.echo(f"{verb} {path}")
    if not removed:
        click.echo("nothing to clean")
        return
    s = "s" if len(removed) != 1 else ""
    click.echo(f"{verb} {len(removed)} file{s} declared as outputs of {len(patterns)} task(s)")


def _add_commands() -> None:
    # The cache commands live in their own module to keep this one about running.
    from taskrun.cli_cache import cache_group
    from taskrun.cli_runs import register

    main.add_command(cache_group)
    register(main)  # runs, show, status, report, serve: reading run records


def _environment_variables(*commands: click.Command) -> None:
    """Give every option of COMMANDS a ``TASKRUN_<LONG_NAME>`` variable, shown in --help.

    Named after the long option (``--keep-going`` -> ``TASKRUN_KEEP_GOING``), not click's
    ``auto_envvar_prefix`` form (``TASKRUN_RUN_KEEP_GOING``), so one variable serves every
    command that has the option; an option that names its own variable keeps it.
    """
    for command in commands:
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            if not param.envvar:
                long = max(param.opts, key=len).lstrip("-")
                param.envvar = "TASKRUN_" + long.upper().replace("-", "_")
            param.show_envvar = True


_add_commands()
_environment_variables(run_cmd, explain_cmd)
