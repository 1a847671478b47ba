"""The ``taskrun`` command line: a thin click layer.

This is the one place where errors become exit codes: 0 success, 1 a task failed,
2 a definition/usage/invocation error, 130 interrupted. Heavy modules (the scheduler,
the cache, cloudpickle) are imported inside the commands that need them, so that
``taskrun list`` and ``--help`` start fast.
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
    "-f", "--file", "task_file", type=click.Path(dir_okay=False, path_type=Path),
    help="The task file (default: tasks.py here or in the nearest parent).",
)
@click.option(
    "-C", "--directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Run as if taskrun was started in DIR.",
)
@click.version_option(package_name="taskrun", prog_name="taskrun")
@click.pass_context
def main(ctx: click.Context, task_file: Path | None, directory: Path | None) -> None:
    """A build-system-style task runner with a result cache you can trust."""
    base = Path.cwd()
    if directory is not None:
        if not directory.is_dir():
            raise UsageError(f"-C {directory}: no such directory")
        base = (base / directory).resolve()
    ctx.obj = _Where(base, task_file)


def _project(ctx: click.Context) -> Any:
    from taskrun.project import Project

    where: _Where = ctx.find_object(_Where)
    return Project.load(where.directory, where.task_file)


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List tasks: their options (type, default, doc) and dependencies."""
    from taskrun.registry import MISSING

    project = _project(ctx)
    registry = project.registry
    if as_json:
        doc = [
            {
                "name": spec.name,
                "doc": spec.doc,
                "deps": [d.task for d in spec.deps],
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
                "defined_at": spec.where,
            }
            for spec in registry.tasks.values()
        ]
        click.echo(json.dumps(doc, indent=2))
        return
    if not registry.tasks:
        click.echo(f"no tasks in {project.task_file}")
        return
    for spec in registry.tasks.values():
        head = click.style(spec.name, bold=True)
        summary = f"  {spec.summary}" if spec.summary else ""
        click.echo(f"{head}{summary}")
        if spec.deps:
            click.echo(f"    needs: {', '.join(d.task for d in spec.deps)}")
        for o in spec.options:
            default = "required" if o.required else f"default {o.type.format(o.default)}"
            doc = f"  {o.type.doc}" if o.type.doc else ""
            click.echo(f"    -o {spec.name}.{o.name}=<{o.type.name}>  ({default}){doc}")
        if spec.product.name != "any":
            click.echo(f"    returns: {spec.product.name}")


def _split_targets(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Allow `taskrun run report top=5` as well as -o top=5."""
    targets, assignments = [], []
    for a in args:
        (assignments if "=" in a else targets).append(a)
    return targets, assignments


@main.command("run")
@click.argument("targets", nargs=-1)
@click.option("-o", "--option", "assignments", multiple=True, metavar="[TASK.]OPTION=VALUE",
              help="Set an option (unqualified: every planned task that has it).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel jobs (default: CPU count).")
@click.option("--executor", type=click.Choice(["inline", "thread", "process", "dask"]),
              default=None, help="Where tasks run.")
@click.option("--dask-address", default=None, metavar="ADDR",
              help="An existing Dask scheduler (tcp://HOST:PORT).")
@click.option("--force", "force", multiple=True, metavar="TASK", help="Rerun TASK regardless of the cache.")
@click.option("--force-all", is_flag=True, help="Rerun every task regardless of the cache.")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first failure.")
@click.option("--dry-run", is_flag=True, help="Say for every task: hit, or run and why; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, then a summary.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="TASKRUN_CACHE_DIR", help="Cache directory (default: .taskrun/cache).")
@click.option("--cache-mode", type=click.Choice(["rw", "read", "off"]), default=None,
              envvar="TASKRUN_CACHE_MODE", help="rw (default), read (never write), off.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.option("-v", "--verbose", count=True, help="More output.")
@click.pass_context
def run_cmd(ctx: click.Context, targets: tuple[str, ...], assignments: tuple[str, ...],
            **kwargs: Any) -> None:
    """Run TARGETS and what they need, reusing every valid cached result."""
    from taskrun.project import run_from_cli

    plain, inline_assignments = _split_targets(targets)
    project = _project(ctx)
    code = run_from_cli(project, plain, [*assignments, *inline_assignments], **kwargs)
    ctx.exit(code)




def _add_commands() -> None:
    # The cache commands live in their own module to keep this one about running.
    from taskrun.cli_cache import cache_group

    main.add_command(cache_group)


_add_commands()
