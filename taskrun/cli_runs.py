"""``taskrun runs``, ``show``, ``status``, ``report`` and ``serve``: reading run records.

Every command here reads the records ``taskrun run`` writes under ``.taskrun/runs``
(:mod:`taskrun.runs`); none imports the task file, so they work while it is broken, and
none writes anything but the file ``report -o`` is asked for.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from taskrun.atomic import atomic_write
from taskrun.errors import UsageError

__all__ = ["register"]


def _runs_dir(ctx: click.Context) -> Path:
    """The project's ``.taskrun/runs``: found from the task file, which is not imported."""
    from taskrun.config import find_task_file
    from taskrun.runs import RUNS_DIR

    where = ctx.find_object(object)  # the group's _Where (directory, task_file)
    directory = getattr(where, "directory", Path.cwd())
    task_file = getattr(where, "task_file", None)
    return find_task_file(directory, task_file).parent / RUNS_DIR


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "?"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


@click.command("runs", short_help="List recorded runs, newest first.")
@click.option(
    "-n",
    "--last",
    "limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the newest N runs.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_context
def runs_cmd(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """List the runs recorded under .taskrun/runs, newest first.

    Each line: the run's id (for `taskrun show ID`), how it ended (finished, failed,
    interrupted, unfinished: its process died without a summary, or running), when it
    started, how long it took, its totals and its command.
    """
    from taskrun.runs import list_runs

    records = list_runs(_runs_dir(ctx))[:limit]
    if as_json:
        doc = [r.brief() for r in records]
        click.echo(json.dumps(doc, indent=2))
        return
    if not records:
        click.echo("no runs recorded yet; `taskrun run` records each run in .taskrun/runs")
        return
    for r in records:
        click.echo(
            f"{r.id}  {r.state:<11} {_when(r.started)}  {_took(r.elapsed):>7}  {r.line()}"
            f"  ({r.command})"
        )


def _task_lines(record: Any, *, output: int | None) -> list[str]:
    tasks = sorted(
        record.tasks.values(),
        key=lambda t: (t.start is None, t.start if t.start is not None else 0.0, t.name),
    )
    out: list[str] = []
    for task in tasks:
        took = _took(task.duration) if task.state in ("ran", "failed", "cached") else ""
        if task.state == "running" and task.start is not None:
            took = _took(record.elapsed - task.start)
        at = f" at +{task.start:.2f}s" if task.start is not None else ""
        head = f"{task.state:<8} {task.name}"
        if took:
            head += f" ({took}{at})"
        if task.state == "cached" and task.saved:
            head += f": saved {_took(task.saved)}"
        elif task.state in ("ran", "running", "queued") and task.reasons:
            head += f": {'; '.join(task.reasons)}"
        elif task.state in ("failed", "skipped", "cancelled") and task.error:
            head += f": {task.error}"
        out.append(head)
        if task.progress and task.state == "running":
            done, total = task.progress.get("done"), task.progress.get("total")
            shown = f"{done:g}/{total:g}" if total else f"{done:g}"
            message = task.progress.get("message") or ""
            out.append(f"    progress {shown} {message}".rstrip())
        lines = task.output if output is None else task.output[-output:]
        out += [f"    {task.name} | {line}" for line in lines]
        if task.state == "failed" and task.traceback:
            out += [f"    {line}" for line in task.traceback.rstrip().splitlines()]
    return out


def _show_text(record: Any, *, output: int | None = None) -> list[str]:
    from taskrun.report import printable

    h = record.header
    lines = [
        f"run {record.id}: {record.state}, {record.line()}",
        f"command:  {record.command}",
        f"started:  {_when(record.started)} (executor {h.get('executor', '?')},"
        f" {h.get('jobs', '?')} jobs, cache {h.get('cache_mode', '?')})",
        f"targets:  {', '.join(h.get('targets', [])) or '(none)'}",
    ]
    runtime = h.get("runtime") or {}
    if runtime:
        lines.append("runtime:  " + ", ".join(f"{k}={v}" for k, v in runtime.items()))
    options = {t: o for t, o in (h.get("options") or {}).items() if o}
    if options:
        shown = "; ".join(
            f"{t}: " + ", ".join(f"{k}={v}" for k, v in o.items()) for t, o in options.items()
        )
        lines.append(f"options:  {shown}")
    if record.error:
        lines.append(f"error:    {record.error}")
    if record.state == "unfinished":
        lines.append(
            "note:     its process is gone and the record has no summary: it was killed or"
            " crashed; below is how far it got"
        )
    for warning in record.warnings:
        lines.append(f"warning:  {warning}")
    lines.append("")
    lines += _task_lines(record, output=output)
    if record.unattributed:
        shown = record.unattributed if output is None else record.unattributed[-output:]
        lines.append("output of no single task (written to descriptors 1/2 as several ran):")
        lines += [f"    ? | {line}" for line in shown]
    return [printable(line) for line in lines]


@click.command("show", short_help="Show one recorded run: tasks, states, reasons, output.")
@click.argument("run", required=False)
@click.option("--json", "as_json", is_flag=True, help="The whole record as one JSON document.")
@click.pass_context
def show_cmd(ctx: click.Context, run: str | None, as_json: bool) -> None:
    """Show RUN (default: the last): each task's state, reasons, timing, output and error.

    RUN is an id from `taskrun runs`, a unique start of one, or `last`.
    """
    from taskrun.runs import find_run

    record = find_run(_runs_dir(ctx), run)
    if as_json:
        click.echo(json.dumps(record.to_json(), indent=2, default=str))
        return
    for line in _show_text(record):
        click.echo(line)


@click.command("status", short_help="The run in progress in this project, from another shell.")
@click.option("--watch", is_flag=True, help="Keep showing it until the run ends.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON document (with --watch: one line per change)."
)
@click.pass_context
def status_cmd(ctx: click.Context, watch: bool, as_json: bool) -> None:
    """Show the run in progress in this project: running tasks with their progress and
    last output lines, queued ones, and what is done.

    With no run in progress, says so and names the last run. --watch redraws (on a
    terminal) or prints each change (piped) until the run ends.
    """
    from taskrun.report import is_live_terminal
    from taskrun.runs import find_run, list_runs

    directory = _runs_dir(ctx)

    def current() -> Any:
        return next((r for r in list_runs(directory) if r.state == "running"), None)

    record = current()
    if record is None:
        try:
            last = find_run(directory, None)
        except UsageError:
            click.echo("no run in progress (and none recorded)")
            return
        if as_json:
            click.echo(json.dumps({"running": False, "last": last.to_json()}, default=str))
        else:
            click.echo(f"no run in progress; the last one: {last.id} ({last.state}), {last.line()}")
        return
    live = watch and not as_json and is_live_terminal(sys.stdout)
    shown: Any = None
    drawn = 0
    while True:
        if as_json:
            text = json.dumps(
                {"running": record.state == "running", "run": record.to_json()}, default=str
            )
        else:
            text = "\n".join(_show_text(record, output=3))
        # A redrawn screen follows the clock; a printed line or document stands for a
        # change of the record (the times in it run to now, so they change every poll).
        seen = text if live else (record.events, record.state)
        if seen != shown:
            if live and drawn:
                click.echo(f"\x1b[{drawn}A\r\x1b[J", nl=False)
            click.echo(text)
            drawn = text.count("\n") + 1
            shown = seen
        if not watch or record.state != "running":
            return
        time.sleep(0.5)  # perf: a poll of a file another process appends to
        record = _reload(record)


def _reload(record: Any) -> Any:
    from taskrun.runs import load_run

    return load_run(record.path)


@click.command("report", short_help="Write a standalone HTML page of a run.")
@click.argument("run", required=False)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The HTML file to write.",
)
@click.pass_context
def report_cmd(ctx: click.Context, run: str | None, output: Path) -> None:
    """Write RUN (default: the last) as one standalone HTML file: a timeline with a lane
    per worker slot, the task graph, a table of tasks with filters, and each task's
    output and error. No network needed to view it.
    """
    from taskrun.report_html import render_report
    from taskrun.runs import find_run

    record = find_run(_runs_dir(ctx), run)
    html = render_report(record)
    atomic_write(output, html.encode("utf-8"), durable=False)  # never a half-written page
    click.echo(f"wrote {output} (run {record.id}, {record.state})")


@click.command("serve", short_help="Serve run records over local HTTP (read-only).")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8787,
    show_default=True,
    help="The port on 127.0.0.1 (0: any free port, printed).",
)
@click.pass_context
def serve_cmd(ctx: click.Context, port: int) -> None:
    """Serve the project's run records on http://127.0.0.1:PORT until Ctrl-C.

    \b
    /                   the live page of the current (else the last) run
    /runs/ID            the page of one run
    /api/runs           every run, newest first (JSON)
    /api/runs/ID        one run (JSON; ID may be `last`)
    /api/runs/current   the run in progress, with live task states (JSON)
    Read-only: anything but GET and HEAD is answered 405.
    """
    from taskrun.serve import serve

    serve(_runs_dir(ctx), port, announce=lambda url: click.echo(f"serving {url}", err=False))


def register(main: click.Group) -> None:
    for command in (runs_cmd, show_cmd, status_cmd, report_cmd, serve_cmd):
        main.add_command(command)
