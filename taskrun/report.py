"""Reporters: turn events into what users see.

* :class:`PlainReporter` — one line per task event, no control characters (CI, pipes).
* :class:`JsonReporter` — one JSON object per event, then a summary object (machines).

A reporter is a callable taking an event; ``warning(msg)`` takes the cache's warnings and
``close()`` prints what belongs at the end (failures with their output and traceback).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from taskrun import events as ev

__all__ = ["JsonReporter", "PlainReporter", "Reporter", "make_reporter"]


class Reporter:
    """Base: collects failures to show at the end."""

    def __init__(self, stream: TextIO | None = None, *, quiet: int = 0, verbose: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = quiet
        self.verbose = verbose
        self.failures: list[ev.TaskFailedEvent] = []

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.TaskFailedEvent):
            self.failures.append(event)
        self.handle(event)

    def handle(self, event: ev.Event) -> None:
        raise NotImplementedError  # abstractmethod-like: every reporter renders

    def warning(self, message: str) -> None:
        self(ev.Warned(message))

    def close(self) -> None:
        """Called once after the run."""

    def write(self, line: str = "") -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def _reasons(reasons: tuple[str, ...]) -> str:
    return "; ".join(reasons)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


class PlainReporter(Reporter):
    """One plain line per task event, then the summary. Safe for logs."""

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.TaskCached):
            if self.quiet < 1:
                restored = f", restored {event.restored} file(s)" if event.restored else ""
                self.write(f"cached   {event.task}{restored}")
        elif isinstance(event, ev.TaskStarted):
            if self.verbose:
                self.write(f"start    {event.task}: {_reasons(event.reasons)}")
        elif isinstance(event, ev.TaskRan):
            if self.quiet < 1:
                self.write(f"ran      {event.task} ({event.duration:.2f}s): {_reasons(event.reasons)}")
                if event.output and self.quiet < 1:
                    self.write(_indent(event.output, f"  [{event.task}] "))
        elif isinstance(event, ev.TaskFailedEvent):
            kind = "timed out" if event.timed_out else "failed"
            self.write(f"{kind:<8} {event.task}: {event.error}")
        elif isinstance(event, ev.TaskRetrying):
            self.write(f"retry    {event.task} (attempt {event.attempt}): {event.error}")
        elif isinstance(event, ev.Skipped):
            if self.quiet < 2:
                self.write(f"skipped  {event.task}: {event.reason}")
        elif isinstance(event, ev.TaskWaiting):
            if self.quiet < 1:
                self.write(f"waiting  {event.task}: another taskrun is computing it")
        elif isinstance(event, ev.Warned):
            where = f"{event.task}: " if event.task else ""
            self.write(f"warning  {where}{event.message}")
        elif isinstance(event, ev.Planned):
            if event.action == "cached":
                self.write(f"cached   {event.task}")
            else:
                self.write(f"run      {event.task}: {_reasons(event.reasons)}")
        elif isinstance(event, ev.Interrupted):
            running = ", ".join(event.running) or "nothing"
            self.write(f"interrupted (in flight, not recorded: {running})")
        elif isinstance(event, ev.RunFinished):
            self._failures()
            if self.quiet < 2 or not event.ok:
                self.write(event.line())

    def _failures(self) -> None:
        for failure in self.failures:
            self.write("")
            self.write(f"--- {failure.task} failed: {failure.error}")
            if failure.output:
                self.write(_indent(failure.output, f"  [{failure.task}] "))
            if failure.traceback:
                self.write(_indent(failure.traceback, "  "))


class JsonReporter(Reporter):
    """One JSON object per event (``{"event": "ran", ...}``), the summary last."""

    def handle(self, event: ev.Event) -> None:
        doc: dict[str, Any] = event.to_json()
        if isinstance(event, ev.RunFinished):
            doc["ok"] = event.ok
        self.write(json.dumps(doc, default=str))


def make_reporter(*, as_json: bool = False, quiet: int = 0, verbose: int = 0,
                  stream: TextIO | None = None) -> Reporter:
    """The reporter that fits where output goes."""
    if as_json:
        return JsonReporter(stream, quiet=quiet, verbose=verbose)
    return PlainReporter(stream, quiet=quiet, verbose=verbose)
