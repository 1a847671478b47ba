"""``taskrun cache ...``: inspect and maintain the cache (info, gc, clear, verify, export, import).

Only ``export TARGET...`` imports the task file (it must compute the targets'
fingerprints); every other command finds the project root and ``[tool.taskrun]`` without
running any project code, so it works on a checkout whose tasks do not even import.

Which cache: ``--cache-dir`` (or ``TASKRUN_CACHE_DIR``), else ``cache-dir`` in
``[tool.taskrun]``, else ``.taskrun/cache`` under the project root; a relative directory
is relative to the project root, as for ``taskrun run``. With ``--cache-dir`` no task file
is needed at all. Commands that change the cache (gc, clear, import) need the cache mode
(``TASKRUN_CACHE_MODE`` or ``cache-mode``) to be ``rw``; ``verify`` then also removes what
is bad, and only reports it otherwise.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from taskrun.cache_values import human_size as _human
from taskrun.errors import CacheError, ConfigError, UsageError, did_you_mean

__all__ = ["cache_group", "parse_age"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` or a number of seconds -> seconds."""
    match = _AGE.match(text)
    if not match:
        raise UsageError(f"--max-age {text!r} is not an age; write e.g. 7d, 12h, 30m or seconds")
    return float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]


def _n(count: int, noun: str) -> str:
    """``1 entry``, ``2 entries``, ``0 blobs``."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


@dataclass(frozen=True, slots=True)
class _Located:
    """Where the cache is, and the settings it was found with (no task file imported)."""

    directory: Path
    root: Path | None
    task_file: Path | None
    size_limit: int | None
    mode: str  # the configured mode: TASKRUN_CACHE_MODE, else cache-mode, else rw
    remote_cache: str | None = None  # remote-cache of [tool.taskrun]
    remote_mode: str | None = None


def _where(ctx: click.Context) -> tuple[Path, Path | None]:
    # cli.py keeps -C/-f in the root context's object; read it by duck-typing, since
    # nothing may import cli.
    obj = ctx.find_root().obj
    directory = getattr(obj, "directory", None)
    return (
        Path(directory) if directory is not None else Path.cwd(),
        getattr(obj, "task_file", None),
    )


def _locate(ctx: click.Context, cache_dir: Path | None) -> _Located:
    from taskrun.cache import Cache
    from taskrun.config import find_task_file, load_settings

    base, task_file = _where(ctx)
    try:
        path = find_task_file(base, task_file)
    except UsageError:
        if cache_dir is None or task_file is not None:
            raise
        # Only the cache was named: enough for every command but `export TARGET...`.
        directory = cache_dir if cache_dir.is_absolute() else base / cache_dir
        return _Located(directory, None, None, None, Cache.mode_from_env("rw"))
    settings = load_settings(path)
    root = path.parent
    chosen = cache_dir or settings.cache_dir or Path(".taskrun") / "cache"
    directory = chosen if chosen.is_absolute() else root / chosen
    mode = Cache.mode_from_env(settings.cache_mode or "rw")  # type: ignore[arg-type]
    return _Located(
        directory,
        root,
        path,
        settings.cache_size,
        mode,
        settings.remote_cache,
        settings.remote_mode,
    )


def _warn(message: str) -> None:
    click.echo(f"warning  {message}", err=True)


def _open(where: _Located, mode: str, on_warning: Callable[[str], None] = _warn) -> Any:
    from taskrun.project import open_cache

    return open_cache(
        where.root or where.directory,
        where.directory,
        size_limit=where.size_limit,
        mode=mode,
        on_warning=on_warning,
    )


def _need_rw(where: _Located, action: str) -> None:
    if where.mode != "rw":
        raise UsageError(
            f"cannot {action}: the cache mode is '{where.mode}' "
            "(TASKRUN_CACHE_MODE or cache-mode); nothing was changed"
        )


def _absent(where: _Located, as_json: bool) -> bool:
    """Say so and return True when there is no cache yet (so as not to create one)."""
    if where.directory.is_dir():
        return False
    _emit(
        as_json,
        {"directory": str(where.directory), "exists": False},
        lambda: [f"no cache at {where.directory}; nothing to do"],
    )
    return True


def _emit(as_json: bool, doc: dict[str, Any], lines: Callable[[], Sequence[str]]) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        for line in lines():
            click.echo(line)


def _cache_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="TASKRUN_CACHE_DIR",
        help="Cache directory (default: [tool.taskrun] cache-dir, else .taskrun/cache).",
    )(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


@click.group("cache")
def cache_group() -> None:
    """Inspect and maintain the result cache."""


# --------------------------------------------------------------------------- info


@cache_group.command("info")
@_cache_dir_option
@_json_option
@click.pass_context
def info_cmd(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """Location, entries, size and limit, and the hit rate of the last run."""
    where = _locate(ctx, cache_dir)
    # Read mode: looking never writes, not even the database's bookkeeping.
    from taskrun.remote import read_stats

    with _open(where, "read") as cache:
        info = cache.info()
        try:
            last = cache.last_run()
        except CacheError as exc:
            _warn(str(exc))
            last = None
    remote = read_stats(where.directory)
    doc = {
        "directory": str(info.directory),
        "mode": where.mode,
        "signed": info.signed,
        "entries": info.entries,
        "blobs": info.blobs,
        "size": info.size_bytes,
        "limit": info.size_limit,
        "orphans": {"files": info.orphan_files, "bytes": info.orphan_bytes},
        "last_run": None
        if last is None
        else {
            "used": len(last.used),
            "hits": last.hits,
            "misses": last.misses,
            "hit_rate": info.hit_rate,
            "recorded": last.recorded,
        },
        "remote_last_run": None if remote is None else remote.to_dict(),
    }

    def lines() -> list[str]:
        share = info.size_bytes / info.size_limit if info.size_limit else 0.0
        signing = (
            "signed (TASKRUN_CACHE_KEY set)" if info.signed else "unsigned (no TASKRUN_CACHE_KEY)"
        )
        out = [
            f"cache      {info.directory}",
            f"mode       {where.mode}, {signing}",
            f"entries    {info.entries} ({_n(info.blobs, 'output blob')})",
            f"size       {_human(info.size_bytes)} of {_human(info.size_limit)} ({share:.0%})",
        ]
        if info.orphan_files:
            out.append(
                f"orphans    {_n(info.orphan_files, 'value file')} "
                f"({_human(info.orphan_bytes)}) no entry refers to (left by interrupted "
                "stores); `taskrun cache gc` removes them"
            )
        if last is None:
            out.append("last run   none recorded")
        else:
            when = datetime.datetime.fromtimestamp(last.recorded).isoformat(" ", "seconds")
            rate = "n/a" if info.hit_rate is None else f"{info.hit_rate:.0%}"
            out.append(
                f"last run   {when}: {last.hits} cached, {last.misses} ran, "
                f"hit rate {rate}; used {_n(len(last.used), 'entry')}"
            )
        if remote is not None:
            off = f"; turned off mid-run: {remote.failure}" if remote.failure else ""
            refused = f", {remote.refused} refused" if remote.refused else ""
            out += [
                f"remote     {remote.url} (mode {remote.mode}), last run:",
                f"           {remote.hits} hits of {remote.looked_up} local misses{refused}; "
                f"{remote.uploaded} uploaded ({remote.already_there} already there)",
                f"           {_human(remote.bytes_down)} down, {_human(remote.bytes_up)} up, "
                f"{_n(remote.requests, 'request')}",
                f"           {remote.fetch_seconds:.2f}s waiting for lookups, "
                f"{remote.upload_seconds:.2f}s uploading in the background, "
                f"{remote.finish_seconds:.2f}s waiting for uploads at the end{off}",
            ]
        return out

    _emit(as_json, doc, lines)


# --------------------------------------------------------------------------- gc and clear


@cache_group.command("gc")
@click.option(
    "--max-size",
    metavar="SIZE",
    default=None,
    help="Remove the oldest entries until the cache is no larger (e.g. 500MB, 2GiB).",
)
@click.option(
    "--max-age",
    metavar="AGE",
    default=None,
    help="Remove entries stored longer ago (e.g. 7d, 12h, 30m, or seconds).",
)
@click.option(
    "--keep-last-run",
    is_flag=True,
    help="Keep only the entries the last run used (what the next CI job needs).",
)
@click.option(
    "--remote",
    is_flag=True,
    help="Clean the remote cache instead (with --max-age; needs TASKRUN_CACHE_KEY).",
)
@click.option(
    "--remote-cache",
    metavar="URL",
    default=None,
    envvar="TASKRUN_REMOTE_CACHE",
    help="The remote cache for --remote (default: [tool.taskrun] remote-cache).",
)
@_cache_dir_option
@_json_option
@click.pass_context
def gc_cmd(
    ctx: click.Context,
    max_size: str | None,
    max_age: str | None,
    keep_last_run: bool,
    remote: bool,
    remote_cache: str | None,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """Remove old or unused entries, orphaned output blobs and stale lock files."""
    from taskrun.config import parse_size

    if remote:
        _remote_gc(ctx, max_size, max_age, keep_last_run, remote_cache, cache_dir, as_json)
        return

    try:
        size = parse_size(max_size, where="--max-size") if max_size is not None else None
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    age = parse_age(max_age) if max_age is not None else None
    where = _locate(ctx, cache_dir)
    _need_rw(where, "collect garbage")
    if _absent(where, as_json):
        return
    with _open(where, "rw") as cache:
        report = cache.gc(max_size=size, max_age=age, keep_last_run=keep_last_run)
        info = cache.info()
    doc = {
        "removed": list(report.removed),
        "removed_blobs": report.removed_blobs,
        "removed_orphans": report.removed_orphans,
        "removed_imports": report.removed_imports,
        "kept": report.kept,
        "freed": report.freed_bytes,
        "size": info.size_bytes,
    }
    _emit(
        as_json,
        doc,
        lambda: [
            f"removed {_n(len(report.removed), 'entry')} and "
            f"{_n(report.removed_blobs, 'output blob')}"
            + (
                f" and {_n(report.removed_orphans, 'orphaned value file')}"
                if report.removed_orphans
                else ""
            )
            + (
                f" and {_n(report.removed_imports, 'unfinished import')}"
                if report.removed_imports
                else ""
            )
            + "; "
            f"kept {_n(report.kept, 'entry')} ({_human(info.size_bytes)}); "
            f"freed {_human(report.freed_bytes)}"
        ],
    )


def _remote_gc(
    ctx: click.Context,
    max_size: str | None,
    max_age: str | None,
    keep_last_run: bool,
    url: str | None,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """``cache gc --remote --max-age AGE``: entries older than AGE leave the shared store."""
    from taskrun.cache import Cache
    from taskrun.remote import FsspecStore, RemoteCache

    if max_size is not None or keep_last_run:
        raise UsageError(
            "cache gc --remote takes --max-age only (the shared store has no size of its "
            "own and no last run); e.g. taskrun cache gc --remote --max-age 30d"
        )
    if max_age is None:
        raise UsageError("cache gc --remote needs --max-age, e.g. --max-age 30d")
    age = parse_age(max_age)
    where = _locate(ctx, cache_dir)
    url = url or where.remote_cache
    if not url:
        raise UsageError(
            "cache gc --remote: no remote cache is configured; give --remote-cache URL, "
            "set TASKRUN_REMOTE_CACHE, or remote-cache in [tool.taskrun]"
        )
    mode = os.environ.get("TASKRUN_REMOTE_MODE") or where.remote_mode or "rw"
    if mode != "rw":
        raise UsageError(f"cannot clean {url}: the remote mode is '{mode}'; nothing was changed")
    key = Cache.key_from_env()
    if key is None:
        raise ConfigError(
            f"cache gc --remote: {url} holds signed entries and gc reads their signed dates, "
            "but TASKRUN_CACHE_KEY is not set; set it to the store's key"
        )
    store = FsspecStore(url)
    report = RemoteCache(store, mode="rw", key=key, on_warning=_warn).gc(max_age=age)
    doc = {
        "remote": url,
        "removed": list(report.removed),
        "removed_blobs": report.removed_blobs,
        "kept": report.kept,
        "unverified": report.refused,
    }
    unverified = (
        f"; left {_n(report.refused, 'index object')} that failed verification"
        if report.refused
        else ""
    )
    _emit(
        as_json,
        doc,
        lambda: [
            f"removed {_n(len(report.removed), 'entry')} and "
            f"{_n(report.removed_blobs, 'output blob')} from {url}; "
            f"kept {_n(report.kept, 'entry')}{unverified}"
        ],
    )


@cache_group.command("clear")
@click.argument("task", required=False)
@_cache_dir_option
@_json_option
@click.pass_context
def clear_cmd(ctx: click.Context, task: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """Remove every entry, or only TASK's."""
    where = _locate(ctx, cache_dir)
    _need_rw(where, "clear the cache")
    if _absent(where, as_json):
        return
    with _open(where, "rw") as cache:
        known = sorted({m.task for m in cache.entries()}) if task is not None else []
        if task is not None and task not in known:
            _check_task_name(ctx, task, known)
        removed = cache.clear(task)
    doc = {"task": task, "removed": removed}

    def lines() -> list[str]:
        if task is None:
            return [f"removed {_n(removed, 'entry')} from {where.directory}"]
        if removed:
            return [f"removed {_n(removed, 'entry')} of task '{task}'"]
        return [f"no entries of task '{task}' in the cache{did_you_mean(task, known)}"]

    _emit(as_json, doc, lines)


def _check_task_name(ctx: click.Context, task: str, cached: Sequence[str]) -> None:
    """A name with no entries must at least be a task of the project: else exit 2."""
    # Only now is the task file imported: a name with entries needs no project code.
    from taskrun.project import Project

    base, task_file = _where(ctx)
    try:
        tasks: Sequence[str] = list(Project.load(base, task_file).registry.tasks)
    except Exception:  # noqa: BLE001 - no task file, or a broken one: cache names only
        tasks = []
    if task in tasks:
        return
    known = sorted({*tasks, *cached})
    listed = ", ".join(known) if known else "none"
    raise UsageError(
        f"there is no task '{task}'{did_you_mean(task, known)}; the tasks are: {listed}"
    )


# --------------------------------------------------------------------------- verify


@cache_group.command("verify")
@_cache_dir_option
@_json_option
@click.pass_context
def verify_cmd(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """Check every entry's and blob's digest and signature; remove bad ones (mode rw).

    Exits 1 when anything was bad, so CI can notice.
    """
    where = _locate(ctx, cache_dir)
    if _absent(where, as_json):
        return
    mode = "rw" if where.mode == "rw" else "read"
    problems: list[str] = []
    # Warnings would be the same problems again; verify's own report says each once.
    with _open(where, mode, on_warning=problems.append) as cache:
        report = cache.verify()
        signed = cache.signed
    doc = {
        "entries": report.entries,
        "blobs": report.blobs,
        "signed": signed,
        "problems": [{"kind": p.kind, "name": p.name, "reason": p.reason} for p in report.problems],
        "removed": report.removed,
    }

    def lines() -> list[str]:
        checks = "digests and signatures" if signed else "digests; no TASKRUN_CACHE_KEY"
        head = f"checked {_n(report.entries, 'entry')} and {_n(report.blobs, 'blob')} ({checks})"
        if report.ok:
            return [f"{head}: all good"]
        out = [f"bad {p.kind:<5} {p.name}: {p.reason}" for p in report.problems]
        fate = "removed" if report.removed else "not removed (cache mode is not rw)"
        return [*out, f"{head}: {len(report.problems)} bad, {fate}"]

    _emit(as_json, doc, lines)
    if not report.ok:
        ctx.exit(1)


# --------------------------------------------------------------------------- export and import


@cache_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("targets", nargs=-1)
@click.option(
    "-o",
    "--option",
    "assignments",
    multiple=True,
    metavar="[TASK.]OPTION=VALUE",
    help="Option values for TARGETS, as for `taskrun run`.",
)
@_cache_dir_option
@_json_option
@click.pass_context
def export_cmd(
    ctx: click.Context,
    file: Path,
    targets: tuple[str, ...],
    assignments: tuple[str, ...],
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """Write the entries a run needs, with their output files, to FILE (a .tar.gz).

    With TARGETS: the cached entries of those targets and everything they need (as
    `taskrun run --dry-run TARGETS` would find them). Without: the entries the last run
    used.
    """
    from taskrun.archive import export_archive

    where = _locate(ctx, cache_dir)
    base, _ = _where(ctx)
    path = file if file.is_absolute() else base / file
    not_cached: list[tuple[str, str]] = []
    with _open(where, "read") as cache:
        fingerprints: list[str] | None = None
        if targets or assignments:
            fingerprints = []
            for item in _plan(ctx, cache, targets, assignments):
                if item.action == "cached":
                    fingerprints.append(item.fingerprint)
                else:
                    not_cached.append((item.task, "; ".join(item.reasons)))
        report = export_archive(cache, path, fingerprints)
    doc = {
        "file": str(report.path),
        "entries": list(report.entries),
        "blobs": len(report.blobs),
        "size": report.size,
        "not_cached": [{"task": t, "reason": r} for t, r in not_cached],
        "skipped": [{"fingerprint": f, "reason": r} for f, r in report.skipped],
    }

    def lines() -> list[str]:
        out = [f"not cached {task}: would run ({why})" for task, why in not_cached]
        out += [f"skipped  {fp}: {why}" for fp, why in report.skipped]
        out.append(
            f"exported {_n(len(report.entries), 'entry')} and "
            f"{_n(len(report.blobs), 'output blob')} to {report.path} "
            f"({_human(report.size)})"
        )
        return out

    _emit(as_json, doc, lines)


def _plan(
    ctx: click.Context, cache: Any, targets: Sequence[str], assignments: Sequence[str]
) -> list[Any]:
    """A dry run of TARGETS against ``cache``: Planned events with their fingerprints."""
    from taskrun.project import Project, runtime_of
    from taskrun.scheduler import Scheduler

    base, task_file = _where(ctx)
    project = Project.load(base, task_file)
    plain = [t for t in targets if "=" not in t]
    inline = [t for t in targets if "=" in t]
    invocation = project.invoke(plain, [*assignments, *inline])
    scheduler = Scheduler(
        invocation, cache=cache, runtime=runtime_of(project.settings.runtime, project.root)
    )
    with project.context():
        return scheduler.plan()


@cache_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_cache_dir_option
@_json_option
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, cache_dir: Path | None, as_json: bool) -> None:
    """Verify the archive FILE whole, then add its entries to the cache (all or nothing).

    Every member's digest (and signature, when TASKRUN_CACHE_KEY is set) is checked
    before anything is written; one bad member refuses the whole archive (exit 1).
    """
    from taskrun.archive import import_archive

    where = _locate(ctx, cache_dir)
    _need_rw(where, "import")
    base, _ = _where(ctx)
    path = file if file.is_absolute() else base / file
    with _open(where, "rw") as cache:
        report = import_archive(cache, path)
    doc = {
        "file": str(report.path),
        "ok": report.ok,
        "taken": [{"fingerprint": fp, "task": report.tasks.get(fp, "")} for fp in report.taken],
        "present": list(report.present),
        "blobs": report.blobs,
        "refused": [{"member": m, "reason": r} for m, r in report.refused],
    }

    def lines() -> list[str]:
        if not report.ok:
            return [f"refused  {member}: {reason}" for member, reason in report.refused]
        out = [f"took     {report.tasks.get(fp, '?')} {fp}" for fp in report.taken]
        out.append(
            f"imported {_n(len(report.taken), 'entry')} and "
            f"{_n(report.blobs, 'output blob')} from {report.path.name}; "
            f"{len(report.present)} already present"
        )
        return out

    _emit(as_json, doc, lines)
    if not report.ok:
        raise CacheError(
            f"refused {report.path}: {len(report.refused)} problem(s); nothing was imported"
        )
