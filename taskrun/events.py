"""What happens during a run, as frozen value objects.

The scheduler decides and emits; reporters (console, plain, JSON) and the result only
consume. Every event names its task; decisions carry their reasons as text a person can
read (``option 'style' changed: 'plain' -> 'fancy'``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "UNATTRIBUTED",
    "Event",
    "Interrupted",
    "MapExpanded",
    "MapFinished",
    "PlanFinished",
    "Planned",
    "RemoteSummary",
    "RemoteUploading",
    "RunFinished",
    "RunStarted",
    "Skipped",
    "TaskCached",
    "TaskCancelled",
    "TaskFailedEvent",
    "TaskOutput",
    "TaskProgress",
    "TaskQueued",
    "TaskRan",
    "TaskRetrying",
    "TaskStarted",
    "TaskWaiting",
    "Warned",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; ``kind`` names it in JSON output."""

    kind: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        # perf: asdict() deep-copies field by field; a run record writes one event per
        # task, nearly all of scalars. Same dict, same key order; anything else: asdict.
        out: dict[str, Any] = {"event": self.kind}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            kind = type(value)
            if kind not in _SCALARS and not (
                kind is tuple and all(type(v) in _SCALARS for v in value)
            ):
                return {"event": self.kind, **asdict(self)}
            out[name] = value  # a tuple of scalars: asdict would make an equal copy
        return out


_SCALARS = frozenset({str, int, float, bool, type(None)})


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run-started"
    tasks: tuple[str, ...]
    targets: tuple[str, ...]
    jobs: int
    executor: str


@dataclass(frozen=True, slots=True)
class Planned(Event):
    """Dry runs and explain: what would happen to one task, and why."""

    kind: ClassVar[str] = "planned"
    task: str
    action: str  # "cached" | "run" | "skip"
    reasons: tuple[str, ...] = ()
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class PlanFinished(Event):
    """The end of a dry run: how many tasks would hit and how many would run."""

    kind: ClassVar[str] = "plan-summary"
    total: int
    cached: int
    run: int
    skip: int = 0  # skipped by when= (and their dependents), decided before anything runs

    def to_json(self) -> dict[str, Any]:
        data = Event.to_json(self)
        if not self.skip:
            del data["skip"]  # the shape dry runs without conditions always had
        return data

    def line(self) -> str:
        """``dry run: 8 tasks: 6 cached, 2 would run (nothing was run)``."""
        s = "s" if self.total != 1 else ""
        skips = f", {self.skip} would be skipped" if self.skip else ""
        return (
            f"dry run: {self.total} task{s}: {self.cached} cached, {self.run} would run"
            f"{skips} (nothing was run)"
        )


@dataclass(frozen=True, slots=True)
class TaskWaiting(Event):
    """Another process holds this fingerprint's lock; we wait, then (normally) hit."""

    kind: ClassVar[str] = "waiting"
    task: str


@dataclass(frozen=True, slots=True)
class TaskQueued(Event):
    """A miss handed to the executor; it waits there for a free slot (``started`` follows)."""

    kind: ClassVar[str] = "queued"
    task: str
    reasons: tuple[str, ...]
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class TaskStarted(Event):
    """A call took a worker slot and is running now (may come from an executor's thread)."""

    kind: ClassVar[str] = "started"
    task: str
    reasons: tuple[str, ...]
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class TaskOutput(Event):
    """One line a running task wrote (stdout and stderr alike), as it was written.

    ``task`` is :data:`UNATTRIBUTED` for a line written straight to descriptor 1 or 2 of
    the taskrun process while several tasks ran in it (or none): see
    :mod:`taskrun.executors.fdcapture`.
    """

    kind: ClassVar[str] = "output"
    task: str
    line: str
    time: float  # time.time() when the driver received it


#: The task of an output line nobody can attribute (see TaskOutput).
UNATTRIBUTED = "?"


@dataclass(frozen=True, slots=True)
class TaskProgress(Event):
    """``taskrun.progress(done, total, message)`` called by a running task."""

    kind: ClassVar[str] = "progress"
    task: str
    done: float
    total: float | None = None
    message: str = ""
    time: float = 0.0  # time.time() when the task reported it


@dataclass(frozen=True, slots=True)
class TaskCached(Event):
    kind: ClassVar[str] = "cached"
    task: str
    saved: float  # what the task took when it was recorded
    restored: int = 0  # output files written back from the cache


@dataclass(frozen=True, slots=True)
class TaskRan(Event):
    kind: ClassVar[str] = "ran"
    task: str
    duration: float
    reasons: tuple[str, ...]
    output: str = ""
    stored: bool = True
    unchanged: bool = False  # product equal to the last entry's (early cutoff for dependents)


@dataclass(frozen=True, slots=True)
class TaskRetrying(Event):
    kind: ClassVar[str] = "retrying"
    task: str
    attempt: int  # the attempt that will start after the delay
    error: str  # why the previous attempt failed
    delay: float = 0.0  # seconds until it starts (retry_delay, backoff and jitter applied)
    output: str = ""  # what the failed attempt printed
    duration: float = 0.0  # how long the failed attempt took
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class TaskFailedEvent(Event):
    kind: ClassVar[str] = "failed"
    task: str
    error: str
    traceback: str = ""
    output: str = ""
    duration: float = 0.0
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class Skipped(Event):
    kind: ClassVar[str] = "skipped"
    task: str
    reason: str
    cached: bool = False  # the task called taskrun.skip() in an earlier run (a cached result)


@dataclass(frozen=True, slots=True)
class TaskCancelled(Event):
    """A task stopped before it finished (fail-fast, Ctrl-C, a handle's cancel())."""

    kind: ClassVar[str] = "cancelled"
    task: str
    reason: str
    output: str = ""
    duration: float = 0.0
    running: bool = False  # it had started (and was stopped), rather than still waiting


@dataclass(frozen=True, slots=True)
class Warned(Event):
    kind: ClassVar[str] = "warning"
    message: str
    task: str = ""


@dataclass(frozen=True, slots=True)
class RemoteUploading(Event):
    """The run is done; it waits for this many entries to reach the remote cache."""

    kind: ClassVar[str] = "remote-uploading"
    url: str
    pending: int


@dataclass(frozen=True, slots=True)
class RemoteSummary(Event):
    """What the remote cache did for this run."""

    kind: ClassVar[str] = "remote"
    url: str
    hits: int
    uploaded: int
    refused: int
    bytes_down: int
    bytes_up: int
    requests: int
    failed: bool  # the remote was turned off mid-run (a warning said why)

    def line(self) -> str:
        """``remote s3://b/p: 12 hits, 3 uploaded, 1.2 MB down, 40.0 kB up, 31 requests``."""
        off = " (turned off mid-run)" if self.failed else ""
        refused = f", {self.refused} refused" if self.refused else ""
        return (
            f"remote {self.url}: {self.hits} hit(s), {self.uploaded} uploaded{refused},"
            f" {_size(self.bytes_down)} down, {_size(self.bytes_up)} up,"
            f" {self.requests} request(s){off}"
        )


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


@dataclass(frozen=True, slots=True)
class MapExpanded(Event):
    """A mapped task got item calls (all at once, or in batches while a generator streams)."""

    kind: ClassVar[str] = "mapped"
    task: str
    items: tuple[str, ...]  # the item calls' names: "compile[src/a.c]"
    keys: tuple[str, ...]  # what is between their brackets: "src/a.c", or an index


@dataclass(frozen=True, slots=True)
class MapFinished(Event):
    """Every item call of a mapped task has ended; ``state`` is the task's as a whole."""

    kind: ClassVar[str] = "map-finished"
    task: str
    state: str  # "ran" (some item ran) | "cached" (none did) | "failed"
    items: int
    ran: int
    cached: int
    failed: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Interrupted(Event):
    kind: ClassVar[str] = "interrupted"
    running: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    kind: ClassVar[str] = "summary"
    total: int
    cached: int
    ran: int
    failed: int
    skipped: int
    elapsed: float
    saved: float
    failures: tuple[str, ...] = field(default=())
    cancelled: int = 0

    @property
    def ok(self) -> bool:
        # A skip is a decision (when=, taskrun.skip(), a rule), not a failure; a skip
        # caused by a failure comes with that failure.
        return self.failed == 0 and self.cancelled == 0

    def line(self) -> str:
        """``8 tasks: 6 cached, 2 ran, 0 failed in 3.1s (saved 41.0s)``."""
        text = (
            f"{self.total} task{'s' if self.total != 1 else ''}: {self.cached} cached,"
            f" {self.ran} ran, {self.failed} failed"
        )
        if self.skipped:
            text += f", {self.skipped} skipped"
        if self.cancelled:
            text += f", {self.cancelled} cancelled"
        return text + f" in {self.elapsed:.1f}s (saved {self.saved:.1f}s)"
