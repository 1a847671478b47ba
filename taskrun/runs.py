"""Run records: what each ``taskrun run`` did, written as it goes, read by runs/show/status/report.

A record is one file, ``.taskrun/runs/<id>.jsonl`` under the project root, of JSON lines
appended as the run goes:

- first, the *header*: ``{"record": "run", "id", "command", "targets", "options", "executor",
  "jobs", "runtime", "taskrun", "python", "host", "pid", "started", "tasks": [{"name",
  "deps"}]}``;
- then every event of the run (``--json`` shows the same objects) with ``t``, the seconds
  since the start. ``output`` events are kept up to :data:`OUTPUT_LINES` per task and
  ``progress`` events at most one a second per task; ``ran`` and ``failed`` events carry
  ``output_tail`` (the last :data:`TAIL_LINES` lines) instead of the whole output;
- last, when the run ends normally, the ``summary`` event (and whatever follows it), then
  always an ``{"record": "end", "error"}`` line (``error`` empty after a summary).

Why JSON lines, appended: a run killed with ``kill -9`` leaves every line written up to
then, a record that simply has no end. Lines are flushed at least every
:data:`FLUSH_EVERY` seconds (by a small thread), so another shell (``taskrun status``)
sees the run in progress. A record without an end whose process is gone is *unfinished*;
the next run says so.

The newest :data:`KEEP_RUNS` records are kept (``keep-runs`` in ``[tool.taskrun]``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from taskrun import events as ev
from taskrun.errors import UsageError, did_you_mean

__all__ = [
    "KEEP_RUNS",
    "RUNS_DIR",
    "RunRecord",
    "RunRecorder",
    "TaskRecord",
    "find_run",
    "list_runs",
    "load_run",
    "prune_runs",
    "record_run",
    "recorded_durations",
]

RUNS_DIR = Path(".taskrun") / "runs"
KEEP_RUNS = 100  # records kept by default
OUTPUT_LINES = 1000  # output lines kept per task (live); the tail of the rest comes at the end
TAIL_LINES = 100  # lines of a finished task's output kept in its record
FLUSH_EVERY = 0.2  # seconds: what a run wrote reaches the file at least this often
PROGRESS_EVERY = 1.0  # seconds between two progress lines of one task in a record
_SUFFIX = ".jsonl"
_RECORDS_TRIED = 5  # newest records recorded_durations looks at for one that has ended


# -- writing ------------------------------------------------------------------------------------


class RunRecorder:
    """An event sink that appends each event to the run's record (see the module docstring).

    Thread-safe (events come from the driver and, through the feed, one at a time; the
    flusher thread writes the buffer out). :meth:`close` ends the record.
    """

    def __init__(self, directory: Path, header: Mapping[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.id = new_run_id(directory)
        self.path = directory / f"{self.id}{_SUFFIX}"
        self._file: IO[str] | None = open(self.path, "x", encoding="utf-8")  # noqa: SIM115
        self._start = time.time()
        self._clock = time.monotonic()
        self._lock = threading.Lock()
        self._dirty = False
        self._ended = False
        self._lines: dict[str, int] = {}  # task -> output lines recorded
        self._progress: dict[str, float] = {}  # task -> monotonic time of its last line
        self._write(
            {
                "record": "run",
                "id": self.id,
                **header,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self._start,
            }
        )
        self._flush_locked()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="taskrun-record", daemon=True
        )
        self._flusher.start()

    def __call__(self, event: ev.Event) -> None:
        if type(event) is ev.TaskCached:  # perf: one per hit, 5,000 in a warm run
            line = cached_line(event, round(time.monotonic() - self._clock, 6))
            if line is not None:
                with self._lock:
                    if self._file is not None:
                        self._file.write(line)
                        self._dirty = True
                return
        doc = self._document(event)
        if doc is None:
            return
        with self._lock:
            if self._file is None:
                return
            self._write(doc)
            if isinstance(event, (ev.RunFinished, ev.TaskFailedEvent, ev.Interrupted)):
                self._flush_locked()  # perf: the rest waits for the flusher thread
            if isinstance(event, (ev.RunFinished, ev.Interrupted)):
                self._ended = isinstance(event, ev.RunFinished)

    def _document(self, event: ev.Event) -> dict[str, Any] | None:
        now = time.monotonic()
        if isinstance(event, ev.TaskOutput):
            count = self._lines.get(event.task, 0) + 1
            self._lines[event.task] = count
            if count > OUTPUT_LINES:
                return None  # the task's record keeps the tail of it when it ends
        elif isinstance(event, ev.TaskProgress):
            final = event.total is not None and event.done >= event.total
            last = self._progress.get(event.task)
            if last is not None and not final and now - last < PROGRESS_EVERY:
                return None
            self._progress[event.task] = now
        doc = event.to_json()
        if "output" in doc:  # ran, failed, retrying, cancelled: the whole output once more
            doc["output_tail"] = _tail(doc.pop("output"))
        doc["t"] = round(now - self._clock, 6)
        return doc

    def close(self, error: str = "") -> None:
        """End the record: an end line unless the run's summary was written."""
        self._stop.set()
        with self._lock:
            if self._file is None:
                return
            # Always last: a record without it is one whose process died (see _has_end).
            if not self._ended:
                error = error or "the run stopped early"
            self._write({"record": "end", "error": error if not self._ended else ""})
            self._flush_locked()
            self._file.close()
            self._file = None

    def _write(self, doc: Mapping[str, Any]) -> None:
        assert self._file is not None
        self._file.write(_ENCODE(doc) + "\n")
        self._dirty = True

    def _flush_locked(self) -> None:
        if self._file is not None and self._dirty:
            # A full disk must not fail the run: the record is best effort.
            with contextlib.suppress(OSError):
                self._file.flush()
            self._dirty = False

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            with self._lock:
                self._flush_locked()


# perf: json.dumps(doc, default=str) builds an encoder per call; the same one, kept.
_ENCODE = json.JSONEncoder(default=str).encode
_ENCODE_STR = json.encoder.encode_basestring_ascii  # what _ENCODE does to a str


def cached_line(event: ev.TaskCached, t: float) -> str | None:
    """The record line of a ``cached`` event at ``t``: the bytes the general path writes
    (tests compare the two), without building and encoding a dict; None when a field is
    not of the usual type (the general path then writes it)."""
    saved, restored, task = event.saved, event.restored, event.task
    if type(saved) is not float or not math.isfinite(saved) or type(restored) is not int:
        return None
    if type(task) is not str or type(t) is not float or not math.isfinite(t):
        return None
    return (
        f'{{"event": "cached", "task": {_ENCODE_STR(task)}, "saved": {saved!r}, '
        f'"restored": {restored}, "t": {t!r}}}\n'
    )


def _tail(text: str) -> str:
    lines = text.splitlines()
    if len(lines) <= TAIL_LINES:
        return text
    return "\n".join(lines[-TAIL_LINES:]) + "\n"


def new_run_id(directory: Path) -> str:
    """``20261205-174901.250-3fa2``: sorts by start time (to the millisecond), unique."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    while True:
        run_id = f"{stamp}-{secrets.token_hex(2)}"
        if not (directory / f"{run_id}{_SUFFIX}").exists():
            return run_id


def run_header(
    *,
    command: Sequence[str],
    targets: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    executor: str,
    jobs: int,
    runtime: Mapping[str, str],
    graph: Mapping[str, Sequence[str]],
    cache_mode: str,
) -> dict[str, Any]:
    """The first line of a record, from what ``taskrun run`` knows before it starts."""
    from taskrun import __version__

    return {
        "command": list(command),
        "targets": list(targets),
        "options": {
            task: {k: repr(v) for k, v in values.items()} for task, values in options.items()
        },
        "executor": executor,
        "jobs": jobs,
        "cache_mode": cache_mode,
        "runtime": dict(runtime),
        "taskrun": __version__,
        "python": platform.python_version(),
        "tasks": [{"name": name, "deps": list(deps)} for name, deps in graph.items()],
    }


def prune_runs(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` records (never one still being written)."""
    paths = _paths(directory)
    removed = []
    for path in paths[keep:]:
        if not _has_end(path) and _alive(_header(path)):
            continue  # still being written
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


# -- reading ------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaskRecord:
    """One task in a run, as its events tell it."""

    name: str
    deps: list[str] = field(default_factory=list)
    state: str = "pending"  # pending|queued|running|waiting|ran|cached|failed|skipped|cancelled
    reasons: list[str] = field(default_factory=list)
    queued: float | None = None  # seconds since the run started
    start: float | None = None
    end: float | None = None
    duration: float | None = None  # what the task took (a cached task: what it took then)
    saved: float = 0.0
    attempts: int = 0
    error: str = ""
    traceback: str = ""
    output: list[str] = field(default_factory=list)  # the tail, or the live lines so far
    progress: dict[str, Any] | None = None
    stored: bool | None = None
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "deps": self.deps,
            "state": self.state,
            "reasons": self.reasons,
            "queued": self.queued,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "saved": self.saved,
            "attempts": self.attempts,
            "error": self.error,
            "traceback": self.traceback,
            "output": self.output,
            "progress": self.progress,
            "stored": self.stored,
            "timed_out": self.timed_out,
        }


@dataclass(slots=True)
class RunRecord:
    """A run as its record tells it: header facts, each task, how it ended."""

    id: str
    path: Path
    header: dict[str, Any]
    tasks: dict[str, TaskRecord]
    state: str  # running|finished|failed|interrupted|unfinished
    summary: dict[str, Any] | None = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    # Seconds from the start to the last thing recorded; for a run in progress, to now.
    elapsed: float = 0.0
    events: int = 0  # the lines read after the header (grows with each change)
    #: Output lines of no task (written to descriptors 1/2 while several tasks ran).
    unattributed: list[str] = field(default_factory=list)

    @property
    def started(self) -> float:
        return float(self.header.get("started", 0.0))

    @property
    def command(self) -> str:
        return " ".join(self.header.get("command", ()))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for task in self.tasks.values():
            out[task.state] = out.get(task.state, 0) + 1
        return out

    def line(self) -> str:
        """``8 tasks: 6 cached, 2 ran, 0 failed in 3.1s (saved 41.0s)`` or how far it got."""
        if self.summary is not None:
            fields = ev.RunFinished.__dataclass_fields__
            return ev.RunFinished(**{k: v for k, v in self.summary.items() if k in fields}).line()
        c = self.counts()
        done = sum(c.get(s, 0) for s in ("ran", "cached", "failed", "skipped"))
        text = (
            f"{done}/{len(self.tasks)} tasks done: {c.get('cached', 0)} cached,"
            f" {c.get('ran', 0)} ran, {c.get('failed', 0)} failed"
        )
        busy = [f"{c[s]} {s}" for s in ("running", "queued", "waiting") if c.get(s)]
        if busy:
            text += ", " + ", ".join(busy)
        return text + f" after {self.elapsed:.1f}s"

    def brief(self) -> dict[str, Any]:
        """The run as one row of a list (`taskrun runs --json`, `/api/runs`)."""
        return {
            "id": self.id,
            "state": self.state,
            "started": self.started,
            "elapsed": self.elapsed,
            "command": self.header.get("command", []),
            "summary": self.summary,
            "line": self.line(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "header": self.header,
            "summary": self.summary,
            "error": self.error,
            "warnings": self.warnings,
            "elapsed": self.elapsed,
            "tasks": [t.to_json() for t in self.tasks.values()],
            "unattributed": self.unattributed,
        }


def load_run(path: Path) -> RunRecord:
    """Read a record; a truncated last line (a crash mid-write) is ignored."""
    header: dict[str, Any] = {}
    docs: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if doc.get("record") == "run" and not header:
                header = doc
            else:
                docs.append(doc)
    return _replay(path, header, docs)


def _replay(path: Path, header: dict[str, Any], docs: Iterable[dict[str, Any]]) -> RunRecord:
    tasks = {
        t["name"]: TaskRecord(t["name"], list(t.get("deps", ())))
        for t in header.get("tasks", ())
        if isinstance(t, dict) and "name" in t
    }
    record = RunRecord(
        id=str(header.get("id", path.stem)), path=path, header=header, tasks=tasks, state=""
    )
    ended = ""
    live: dict[str, deque[str]] = {}
    for doc in docs:
        record.events += 1
        kind = doc.get("event")
        t = float(doc.get("t", 0.0) or 0.0)
        record.elapsed = max(record.elapsed, t)
        if doc.get("record") == "end":
            if doc.get("error"):
                ended = ended or "failed"
                record.error = str(doc.get("error", ""))
            elif not ended:
                ended = "finished"
            continue
        name = doc.get("task")
        if name == ev.UNATTRIBUTED:  # not a task: see events.TaskOutput
            if kind == "output":
                record.unattributed.append(str(doc.get("line", "")))
            continue
        task = tasks.get(name) if isinstance(name, str) else None
        if task is None and isinstance(name, str) and name:
            task = tasks[name] = TaskRecord(name)
        if kind == "summary":
            record.summary = doc
            ended = "finished"
        elif kind == "interrupted":
            ended = "interrupted"
        elif kind == "warning":
            record.warnings.append(str(doc.get("message", "")))
        elif task is None:
            continue
        elif kind == "queued":
            task.state, task.queued = "queued", t
            task.reasons = list(doc.get("reasons", ()))
        elif kind == "started":
            task.state, task.start = "running", t
            task.attempts = int(doc.get("attempt", 1))
            task.reasons = list(doc.get("reasons", ()))
            live[task.name] = deque(maxlen=TAIL_LINES)
        elif kind == "waiting":
            task.state = "waiting"
        elif kind == "output":
            live.setdefault(task.name, deque(maxlen=TAIL_LINES)).append(str(doc.get("line", "")))
            task.output = list(live[task.name])
        elif kind == "progress":
            task.progress = {k: doc.get(k) for k in ("done", "total", "message", "time")}
        elif kind == "retrying":
            task.error = str(doc.get("error", ""))
            task.state = "queued"
        elif kind == "cancelled":
            task.state, task.end = "cancelled", t
            task.error = str(doc.get("reason", ""))
            task.duration = float(doc.get("duration", 0.0))
            if doc.get("output_tail"):
                task.output = str(doc.get("output_tail", "")).splitlines()
        elif kind == "cached":
            task.state, task.start, task.end = "cached", t, t
            task.saved = task.duration = float(doc.get("saved", 0.0))
        elif kind in ("ran", "failed"):
            task.state = kind
            task.end = t
            task.duration = float(doc.get("duration", 0.0))
            if task.start is None:
                task.start = max(0.0, t - task.duration)
            task.output = str(doc.get("output_tail", "")).splitlines()
            if kind == "ran":
                task.stored = bool(doc.get("stored", True))
                task.reasons = list(doc.get("reasons", task.reasons))
            else:
                task.error = str(doc.get("error", ""))
                task.traceback = str(doc.get("traceback", ""))
                task.timed_out = bool(doc.get("timed_out", False))
        elif kind == "skipped":
            task.state, task.end = "skipped", t
            task.error = str(doc.get("reason", ""))
    if ended:
        record.state = ended
        fields = ev.RunFinished.__dataclass_fields__
        summary = {k: v for k, v in (record.summary or {}).items() if k in fields}
        try:
            ok = ev.RunFinished(**summary).ok
        except TypeError:  # a record written by another version
            ok = not (summary.get("failed") or summary.get("cancelled"))
        if ended == "finished" and not ok:
            record.state = "failed"
    elif _alive(header):
        record.state = "running"
        # Its time, and its running tasks' (elapsed - start), go on to now: a quiet task
        # writes nothing, so the last event's t would show them frozen.
        if record.started:
            record.elapsed = max(record.elapsed, time.time() - record.started)
    else:
        record.state = "unfinished"
    return record


def recorded_durations(runs_dir: Path) -> dict[str, float]:
    """Each task's duration in the newest run record that has ended (empty if none).

    A ``ran`` event gives its ``duration``, a ``cached`` one its ``saved`` time. Only
    those lines are parsed (perf: a 5,000-task record is megabytes of JSON, mostly
    output tails and reasons). A record that cannot be read counts as absent: weights
    only order the work, they never change a result.
    """
    for path in _paths(runs_dir)[:_RECORDS_TRIED]:
        if not _has_end(path):
            continue  # this very run (being written), or one that died
        out: dict[str, float] = {}
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.startswith(('{"event": "ran"', '{"event": "cached"')):
                        continue
                    try:
                        doc = json.loads(line)
                        seconds = float(doc["duration"] if doc["event"] == "ran" else doc["saved"])
                        task = doc["task"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if isinstance(task, str) and seconds >= 0:
                        out[task] = seconds
        except OSError:
            return {}
        return out
    return {}


def _alive(header: Mapping[str, Any]) -> bool:
    """Whether the process that writes this record still runs (on this machine)."""
    if header.get("host") != socket.gethostname():
        return False
    pid = header.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _paths(directory: Path) -> list[Path]:
    """Record files, newest first."""
    try:
        paths = [p for p in directory.iterdir() if p.suffix == _SUFFIX]
    except OSError:
        return []
    return sorted(paths, key=lambda p: p.name, reverse=True)


def list_runs(directory: Path) -> list[RunRecord]:
    """Every record in ``directory``, newest first."""
    return [load_run(p) for p in _paths(directory)]


def find_run(directory: Path, ref: str | None) -> RunRecord:
    """The run ``ref`` names: an id, a unique prefix of one, or ``last`` (the default)."""
    paths = _paths(directory)
    if not paths:
        raise UsageError(f"no runs recorded in {directory}; `taskrun run` records each run there")
    if ref in (None, "", "last"):
        return load_run(paths[0])
    assert ref is not None
    ids = [p.stem for p in paths]
    matches = [p for p in paths if p.stem == ref] or [p for p in paths if p.stem.startswith(ref)]
    if len(matches) == 1:
        return load_run(matches[0])
    if matches:
        shown = ", ".join(p.stem for p in matches[:5])
        raise UsageError(f"run '{ref}' is ambiguous: it starts {shown}; give more of the id")
    raise UsageError(
        f"no run '{ref}' in {directory}{did_you_mean(ref, ids)}; `taskrun runs` lists them"
    )


def unfinished_warning(directory: Path) -> str:
    """What to say when the newest record before this run never ended (killed, crashed)."""
    paths = _paths(directory)
    if not paths or _has_end(paths[0]):
        return ""
    header = _header(paths[0])
    if _alive(header):
        return ""  # another taskrun is running in this project now
    run_id = header.get("id", paths[0].stem)
    return (
        f"the last run ({run_id}) did not finish: its process is gone without a summary"
        f" (killed?); `taskrun show {run_id}` shows how far it got"
    )


def _has_end(path: Path) -> bool:
    """Whether a record has its end (a summary or an end line), reading only its last line.

    perf: a run starts by looking at the last record; reading a cold 5,000-task record
    whole (2 MB of JSON) cost more than a warm run of the same graph.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 16384))
            tail = f.read()
    except OSError:
        return True  # gone meanwhile: nothing to say about it
    for line in reversed(tail.splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line cut by the seek, or by a crash mid-write
        return isinstance(doc, dict) and doc.get("record") == "end"
    return False


def _header(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            doc = json.loads(f.readline())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record_run(
    root: Path,
    invocation: Any,
    keep: int | None,
    *,
    executor: str,
    jobs: int,
    runtime: Mapping[str, str],
    cache_mode: str,
    warn: Any,
) -> RunRecorder:
    """Start the record of a ``taskrun run`` in ``root``; warn about an unfinished last run."""
    directory = root / RUNS_DIR
    message = unfinished_warning(directory)
    if message:
        warn(message)
    prune_runs(directory, max((keep or KEEP_RUNS) - 1, 0))
    graph = {name: [d.task for d in invocation.spec(name).deps] for name in invocation.order}
    header = run_header(
        command=command_line(),
        targets=invocation.targets,
        options=invocation.options,
        executor=executor,
        jobs=jobs,
        runtime=runtime,
        graph=graph,
        cache_mode=cache_mode,
    )
    return RunRecorder(directory, header)


def command_line() -> list[str]:
    """The command as the user typed it, near enough: ``taskrun run -j 4 report``."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("__main__.py") or os.path.basename(argv[0]) == "taskrun"):
        argv[0] = "taskrun"
    return argv
