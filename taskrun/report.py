"""Reporters: turn events into what users see.

* :class:`ConsoleReporter` — terminals: a live view of the tasks in flight with a progress
  count, redrawn in place, above which the permanent lines (ran, failed, ...) scroll.
* :class:`PlainReporter` — one line per task event, no control characters (CI, pipes, logs).
* :class:`JsonReporter` — one JSON object per event, then a summary object (machines).

A reporter is a callable taking an event; ``warning(msg)`` takes the cache's warnings and
``close()`` ends the output (it stops the live view; it is safe to call twice).
:func:`make_reporter` picks the reporter that fits where the output goes.

Every reporter is built so that it can never fail a run: a stream that breaks (a closed
pipe) silences it, and a console that cannot draw falls back to plain lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from taskrun import events as ev

__all__ = [
    "ConsoleReporter",
    "JsonReporter",
    "PlainReporter",
    "Reporter",
    "is_live_terminal",
    "make_reporter",
    "printable",
]

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Every other C0/C1 control character except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without control characters: what a log file can hold safely.

    Escape sequences are dropped; a carriage return keeps what a terminal would finally
    show on that line (the last non-empty segment), so progress bars collapse to their end.
    """
    if not text or (text.isprintable() and "\x1b" not in text):
        return text
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    if "\r" in text:
        lines = []
        for line in text.split("\n"):
            parts = [p for p in line.split("\r") if p]
            lines.append(parts[-1] if parts else "")
        text = "\n".join(lines)
    return _CONTROL.sub("", text)


def _reasons(reasons: tuple[str, ...]) -> str:
    return "; ".join(reasons)


def _output_lines(task: str, text: str) -> list[Line]:
    """A task's output as the ``TASK | line`` lines its live output events show."""
    return [Line(s, "dim") for s in _indent(text, f"{task} | ")]


class _Rate:
    """Progress of one task as reported: how far, how fast, how long still."""

    __slots__ = ("done", "first", "message", "since", "total", "when")

    def __init__(self, event: ev.TaskProgress) -> None:
        self.first = (event.time, event.done)
        self.since = time.monotonic()
        self.update(event)

    def update(self, event: ev.TaskProgress) -> None:
        self.done, self.total, self.message, self.when = (
            event.done,
            event.total,
            event.message,
            event.time,
        )

    def rate(self) -> float | None:
        """Units per second since the first report (None until there are two)."""
        t0, d0 = self.first
        if self.when <= t0 or self.done <= d0:
            return None
        return (self.done - d0) / (self.when - t0)

    def text(self) -> str:
        """``30/100 (30%, 12.0/s, ETA 6s) message``."""
        done = _number(self.done)
        parts = []
        if self.total is not None:
            done += f"/{_number(self.total)}"
            parts.append(f"{min(self.done / self.total, 1.0):.0%}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g}/s")
            if self.total is not None and self.done < self.total:
                parts.append(f"ETA {_seconds((self.total - self.done) / rate)}")
        out = done + (f" ({', '.join(parts)})" if parts else "")
        return out + (f" {self.message}" if self.message else "")

    def bar(self, width: int) -> str:
        """``[#####.....]`` for a known total, else an empty string."""
        if self.total is None or width < 3:
            return ""
        filled = int(min(self.done / self.total, 1.0) * (width - 2))
        return "[" + "#" * filled + "." * (width - 2 - filled) + "]"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    minutes, seconds = divmod(int(s), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass(frozen=True, slots=True)
class Line:
    """One permanent output line and its tone (how a console colours it)."""

    text: str
    tone: str = ""  # "" | "ok" | "bad" | "warn" | "dim" | "bold"


_TONES: Mapping[str, Mapping[str, Any]] = {
    "ok": {"fg": "green"},
    "bad": {"fg": "red", "bold": True},
    "warn": {"fg": "yellow"},
    "dim": {"dim": True},
    "bold": {"bold": True},
}


class Reporter(ABC):
    """Base: collects failures to show at the end, counts planned tasks, writes safely."""

    def __init__(self, stream: TextIO | None = None, *, quiet: int = 0, verbose: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = quiet
        self.verbose = verbose
        self.failures: list[ev.TaskFailedEvent] = []
        self.planned: list[ev.Planned] = []
        #: item call -> (its mapped task, its item key), from MapExpanded events
        self.items: dict[str, tuple[str, str]] = {}
        self._closed = False
        self._broken = False  # the stream failed (a closed pipe): say nothing more

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.TaskFailedEvent):
            self.failures.append(event)
        elif isinstance(event, ev.Planned):
            self.planned.append(event)
        elif isinstance(event, ev.MapExpanded):
            self.items.update(zip(event.items, ((event.task, k) for k in event.keys), strict=True))
        self.handle(event)

    @abstractmethod
    def handle(self, event: ev.Event) -> None:
        """Render one event (every reporter has its own way)."""

    def warning(self, message: str) -> None:
        self(ev.Warned(message))

    def close(self) -> None:
        """Called once after the run (again is harmless): ends a dry run with its summary."""
        if self._closed:
            return
        self._closed = True
        # A mapped task with items to run is summarised by its own line ("118 cached");
        # its items that would run are counted one by one.
        planned = [p for p in self.planned if p.action != "mapped"]
        if self.planned:
            cached = sum(1 for p in planned if p.action == "cached")
            skip = sum(1 for p in planned if p.action == "skip")
            self.handle(
                ev.PlanFinished(
                    total=len(planned),
                    cached=cached,
                    run=len(planned) - cached - skip,
                    skip=skip,
                )
            )

    def write(self, text: str = "") -> None:
        """Write ``text`` and a newline; a broken stream silences the reporter, never the run."""
        if self._broken:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, or a closed file
            self._broken = True


def _indent(text: str, prefix: str) -> list[str]:
    # printable() first: it settles carriage returns, which splitlines() would split on.
    return [prefix + line for line in printable(text).rstrip("\n").split("\n")]


class PlainReporter(Reporter):
    """One plain line per task event, then the summary. Safe for logs: no control characters.

    A task's output comes as ``TASK | line`` while it runs; its progress as a line at most
    every :attr:`PROGRESS_EVERY` seconds per task (and its first and last report).

    Lines are flushed at most every :attr:`FLUSH_EVERY` seconds (a small thread flushes
    what is left, so a line never waits longer), and at once at the end of a run.

    Cache hits are counted, not listed: consecutive hits become one ``cached   N tasks``
    line, written before the next line of any other kind (and before a task starts, so a
    CI log shows them before a long wait). A hit that restored files keeps a line of its
    own, since it wrote to the project. ``-v`` lists every hit, one line each.
    """

    PROGRESS_EVERY = 5.0  # seconds between two progress lines of one task, at least
    FLUSH_EVERY = 0.1  # seconds a written line may wait in the stream's buffer, at most

    def __init__(self, stream: TextIO | None = None, *, quiet: int = 0, verbose: int = 0) -> None:
        super().__init__(stream, quiet=quiet, verbose=verbose)
        self._io = threading.Lock()  # the flusher thread and the writers
        self._pending: list[str] = []  # lines written but not yet handed to the stream
        self._flushed = 0.0  # time.monotonic() of the last flush
        self._flusher: threading.Thread | None = None  # runs while lines wait unflushed
        self._streamed: set[str] = set()  # tasks whose output came as output events
        self._rates: dict[str, _Rate] = {}
        self._said: dict[str, float] = {}  # task -> time.monotonic() of its last progress line
        self._hits: list[str] = []  # cache hits not written yet (see the class docstring)

    color = False  # FORCE_COLOR: colour the lines (still no cursor movement)

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.TaskCached) and self.counts_cached(event):
            self._hits.append(event.task)
            return
        lines = self.lines(event)
        if self._hits and (lines or isinstance(event, ev.TaskStarted)):
            lines = [self._hits_line(), *lines]
        for line in lines:
            text = printable(line.text)
            if self.color and line.tone and text:
                import click

                text = click.style(text, **_TONES[line.tone])
            self.write(text)
        if isinstance(event, (ev.RunFinished, ev.Interrupted)):
            with self._io:
                self.flush_now()

    def write(self, text: str = "") -> None:
        """Write a line: now if the last flush is FLUSH_EVERY old, else soon, by a thread.

        perf: a write and a flush per line was a system call per task (5,000 in a cold
        run; also with PYTHONUNBUFFERED set), each waking whatever reads the pipe.
        Lines are collected here, not in the stream's buffer, for that reason.
        """
        if self._broken:
            return
        with self._io:
            self._pending.append(text + "\n")
            if time.monotonic() - self._flushed >= self.FLUSH_EVERY:
                self.flush_now()
            elif self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_later, name="taskrun-plain-flush", daemon=True
                )
                self._flusher.start()

    def _flush_later(self) -> None:
        """Flush what the writers left in the buffer, FLUSH_EVERY after it was written."""
        time.sleep(self.FLUSH_EVERY)
        with self._io:
            self._flusher = None
            self.flush_now()

    def flush_now(self) -> None:
        """Write the waiting lines and flush (the caller holds ``_io``)."""
        pending, self._pending = self._pending, []
        if self._broken or not pending:
            return
        try:
            self.stream.write("".join(pending))
            self.stream.flush()
            self._flushed = time.monotonic()
        except (OSError, ValueError):  # BrokenPipeError, or a closed file
            self._broken = True

    def counts_cached(self, event: ev.TaskCached) -> bool:
        """Whether a hit is counted into a ``cached   N tasks`` line instead of listed."""
        return self.quiet < 1 and not self.verbose and not event.restored

    def _hits_line(self) -> Line:
        hits, self._hits = self._hits, []
        if len(hits) == 1:
            return Line(f"cached   {hits[0]}", "dim")
        return Line(f"cached   {len(hits)} tasks", "dim")

    def close(self) -> None:
        super().close()
        if self._hits:  # a run that ended without a summary (it should not happen)
            self.write(printable(self._hits_line().text))
        with self._io:
            self.flush_now()

    def lines(self, event: ev.Event) -> list[Line]:
        """The permanent lines for ``event`` at this reporter's verbosity."""
        out: list[Line] = []
        q, v = self.quiet, self.verbose
        if isinstance(event, ev.TaskCached):
            if self.show_cached():
                restored = f", restored {event.restored} file(s)" if event.restored else ""
                out.append(Line(f"cached   {event.task}{restored}", "dim"))
        elif isinstance(event, ev.TaskStarted):
            if v:
                attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                why = _reasons(event.reasons)
                out.append(Line(f"start    {event.task}{attempt}: {why}", "dim"))
        elif isinstance(event, ev.TaskRan):
            if q < 1:
                note = ""
                if v and event.unchanged:
                    note = " [product unchanged: dependents stay cached]"
                if v and not event.stored:
                    note += " [not stored]"
                took = f"({event.duration:.2f}s)"
                why = _reasons(event.reasons)
                out.append(Line(f"ran      {event.task} {took}: {why}{note}", "ok"))
                if event.output and self.reprints(event.task):
                    out += _output_lines(event.task, event.output)
        elif isinstance(event, ev.TaskOutput):
            self._streamed.add(event.task)
            if q < 1 and self.prints_output():
                # printable() of the line alone: a \r in it must not eat the prefix.
                out.append(Line(f"{event.task} | {printable(event.line)}"))
        elif isinstance(event, ev.TaskProgress):
            rate = self._rates.get(event.task)
            if rate is None:
                rate = self._rates[event.task] = _Rate(event)
            else:
                rate.update(event)
            now = time.monotonic()
            last = self._said.get(event.task)
            final = event.total is not None and event.done >= event.total
            due = last is None or final or now - last >= self.PROGRESS_EVERY
            if q < 1 and self.prints_output() and due:
                self._said[event.task] = now
                out.append(Line(f"progress {event.task} {rate.text()}", "dim"))
        elif isinstance(event, ev.TaskFailedEvent):
            kind = "timed out" if event.timed_out else "failed"
            out.append(Line(f"{kind:<8} {event.task}: {event.error}", "bad"))
        elif isinstance(event, ev.TaskRetrying):
            wait = f" in {event.delay:.2f}s" if event.delay else ""
            attempt = f"(attempt {event.attempt}{wait})"
            out.append(Line(f"retry    {event.task} {attempt}: {event.error}", "warn"))
        elif isinstance(event, ev.Skipped):
            if q < 2:
                cached = " (cached)" if event.cached else ""
                out.append(Line(f"skipped  {event.task}: {event.reason}{cached}", "warn"))
        elif isinstance(event, ev.TaskCancelled):
            out.append(Line(f"cancelled {event.task}: {event.reason}", "bad"))
        elif isinstance(event, ev.TaskWaiting):
            if q < 1:
                out.append(Line(f"waiting  {event.task}: another taskrun is computing it", "dim"))
        elif isinstance(event, ev.MapExpanded):
            if v:
                shown = ", ".join(event.keys[:5]) + (", ..." if len(event.keys) > 5 else "")
                added = f"+{len(event.items)} items ({shown})"
                out.append(Line(f"mapped   {event.task}: {added}", "dim"))
        elif isinstance(event, ev.MapFinished):
            if q < 1 or event.state == "failed":
                counts = f"{event.cached} cached, {event.ran} ran"
                if event.failed:
                    counts += f", {event.failed} did not complete"
                tone = "bad" if event.state == "failed" else "dim"
                out.append(Line(f"mapped   {event.task}: {event.items} items: {counts}", tone))
        elif isinstance(event, ev.Warned):
            where = f"{event.task}: " if event.task else ""
            out.append(Line(f"warning  {where}{event.message}", "warn"))
        elif isinstance(event, ev.Planned):
            if event.action == "cached":
                if q < 1:
                    out.append(Line(f"cached   {event.task}", "dim"))
            elif event.action == "skip":
                out.append(Line(f"skip     {event.task}: {_reasons(event.reasons)}", "warn"))
            else:
                out.append(Line(f"run      {event.task}: {_reasons(event.reasons)}"))
        elif isinstance(event, ev.PlanFinished):
            out.append(Line(event.line(), "bold"))
        elif isinstance(event, ev.RemoteUploading):
            if q < 1:
                # Entries still in flight at the end, not all of the run's uploads (the
                # summary's "N uploaded" counts those): worded so the two cannot clash.
                left = f"{event.pending} {'entry' if event.pending == 1 else 'entries'} left"
                text = f"remote   finishing uploads to {event.url}: {left}"
                out.append(Line(text, "dim"))
        elif isinstance(event, ev.RemoteSummary):
            if q < 1:
                out.append(Line(f"remote   {event.line().removeprefix('remote ')}", "dim"))
        elif isinstance(event, ev.Interrupted):
            running = ", ".join(event.running) or "nothing"
            out.append(Line(f"interrupted (in flight, not recorded: {running})", "bad"))
        elif isinstance(event, ev.RunFinished):
            out += self.failure_lines()
            if q < 2 or not event.ok:
                out.append(Line(event.line(), "bold" if event.ok else "bad"))
        return out

    def show_cached(self) -> bool:
        """Whether a cache hit that is not counted (see :meth:`counts_cached`) gets a line."""
        return self.quiet < 1

    def prints_output(self) -> bool:
        """Whether output lines are printed as they come (the console shows them live)."""
        return True

    def reprints(self, task: str) -> bool:
        """Whether a finished task's output is printed with its ``ran`` line."""
        return task not in self._streamed

    def failure_lines(self) -> list[Line]:
        """Each failure again at the end, with the task's output and traceback."""
        out: list[Line] = []
        for failure in self.failures:
            out.append(Line(""))
            out.append(Line(f"--- {failure.task} failed: {failure.error}", "bad"))
            if failure.output:
                out += [Line(s) for s in _indent(failure.output, f"  [{failure.task}] ")]
            if failure.traceback:
                out += [Line(s) for s in _indent(failure.traceback, "  ")]
        if out:
            out.append(Line(""))
        return out


class ConsoleReporter(PlainReporter):
    """For terminals: the plain lines in colour, and below them a live view of the run.

    The live view is the tasks in flight with their elapsed time, their progress bar (rate
    and ETA) when they report one, the last lines of their output, and a count
    (``[12/40] 3 running, 2 queued``), redrawn in place about ten times a second by a small
    daemon thread. A finished task's output is printed whole above the view, with its
    ``ran`` line. Before a permanent line is printed the live lines are erased, so they
    never mix. Cached tasks are counted, and listed only with ``-v``.

    Drawing uses two ANSI sequences only (cursor up, erase to end of screen). Live lines
    are cut to the terminal width, so they never wrap and the cursor arithmetic holds on
    a narrow terminal. If drawing ever fails, the view turns itself off and plain lines go on.
    """

    TICK = 0.1  # seconds between redraws
    MAX_LIVE = 10  # task lines in the live view, at most
    TAIL = 2  # last output lines shown under each running task

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: int = 0,
        verbose: int = 0,
        color: bool = True,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(stream, quiet=quiet, verbose=verbose)
        self.color = color
        self._size = size  # (columns, lines); None: ask the terminal each time
        self._lock = threading.RLock()  # the driver's events and the ticker both draw
        self._running: dict[str, float] = {}  # task -> monotonic start of this attempt
        self._waiting: dict[str, float] = {}  # task -> since when another process holds it
        self._queued: set[str] = set()  # handed to the executor, waiting for a slot
        self._tails: dict[str, deque[str]] = {}  # task -> its last output lines
        self._total = 0
        self._done = 0
        self._maps: dict[str, list[int]] = {}  # mapped task in progress -> [done, items]
        self._drawn = 0  # live lines now on screen, below the cursor's line
        self._live = True
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- events ------------------------------------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            try:
                super().__call__(event)
            except Exception:  # noqa: BLE001 - a display must never fail the run
                # Never fail the run for the sake of a display: drop the live view and
                # print this event as a plain line.
                self._give_up()
                for line in PlainReporter.lines(self, event):
                    self.write(printable(line.text))

    def handle(self, event: ev.Event) -> None:
        changed = self._track(event)
        lines = self.lines(event)
        if lines or changed:
            # perf: a cached task changes only the count; the ticker shows that soon
            # enough, and 10,000 hits need not mean 10,000 redraws.
            text = "".join(self._styled(line) + "\n" for line in lines)
            self._emit(self._erase() + text + self._live_text())
        if isinstance(event, (ev.RunFinished, ev.Interrupted)):
            self._stop_ticker()

    def show_cached(self) -> bool:
        return self.verbose > 0

    # A terminal shows each line as it comes (when it cannot draw, it writes plain lines).
    write = Reporter.write

    def prints_output(self) -> bool:
        return False  # shown under the running task, then whole when it has finished

    def lines(self, event: ev.Event) -> list[Line]:
        if isinstance(event, ev.TaskOutput) and event.task == ev.UNATTRIBUTED:
            # No running task to show it under, and no end to print it with: now.
            return [Line(f"{event.task} | {printable(event.line)}")]
        return super().lines(event)

    def reprints(self, task: str) -> bool:
        return True

    def _track(self, event: ev.Event) -> bool:
        """Update the live state; True when the set of tasks in flight changed."""
        now = time.monotonic()
        if isinstance(event, ev.RunStarted):
            self._total = len(event.tasks)
            self._start_ticker()
        elif isinstance(event, ev.TaskQueued):
            self._queued.add(event.task)
        elif isinstance(event, ev.TaskStarted):
            self._waiting.pop(event.task, None)
            self._queued.discard(event.task)
            self._running[event.task] = now
            return True
        elif isinstance(event, ev.TaskOutput):
            tail = self._tails.get(event.task)
            if tail is None:
                tail = self._tails[event.task] = deque(maxlen=self.TAIL)
            tail.append(event.line)
        elif isinstance(event, ev.TaskWaiting):
            self._waiting[event.task] = now
            return True
        elif isinstance(event, ev.MapExpanded):
            if event.task not in self._maps:
                self._maps[event.task] = [0, 0]
                self._total -= 1  # counted as its item calls from now on
            self._maps[event.task][1] += len(event.items)
            self._total += len(event.items)
        elif isinstance(event, ev.MapFinished):
            self._maps.pop(event.task, None)
        elif isinstance(
            event, (ev.TaskCached, ev.TaskRan, ev.TaskFailedEvent, ev.Skipped, ev.TaskCancelled)
        ):
            if event.task in self._maps:
                self._maps.pop(event.task)  # skipped as a whole: its items are counted
                return False
            self._done += 1
            self._queued.discard(event.task)
            self._tails.pop(event.task, None)
            self._rates.pop(event.task, None)
            if event.task in self.items:
                progress = self._maps.get(self.items[event.task][0])
                if progress is not None:
                    progress[0] += 1
            gone = self._running.pop(event.task, None), self._waiting.pop(event.task, None)
            return gone != (None, None)
        elif isinstance(event, (ev.RunFinished, ev.Interrupted)):
            self._running.clear()
            self._waiting.clear()
            self._queued.clear()
            return True
        return False

    def close(self) -> None:
        with self._lock:
            self._stop_ticker()
            if self._drawn:
                self._emit(self._erase())
            super().close()

    # -- the live view -----------------------------------------------------------------
    def _start_ticker(self) -> None:
        if self._ticker is not None or not self._live:
            return
        self._ticker = threading.Thread(target=self._tick, name="taskrun-console", daemon=True)
        self._ticker.start()

    def _stop_ticker(self) -> None:
        # No join: the caller holds the lock the ticker may be waiting for. The ticker
        # checks the event under the lock, so it draws nothing once this returns.
        self._stop.set()
        self._ticker = None

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK):
            with self._lock:
                if self._stop.is_set() or not self._live:
                    return
                try:
                    if self._running or self._waiting:
                        self._emit(self._erase() + self._live_text())
                except Exception:  # noqa: BLE001 - a display error drops the live view, not the run
                    self._give_up()
                    return

    def _give_up(self) -> None:
        if self._live:
            try:
                if self._drawn:
                    self._emit(self._erase())
            except Exception:  # noqa: BLE001 - erasing a failed display: nothing to add
                pass
            self._live = False
            self._drawn = 0
            self._stop.set()

    def _terminal_size(self) -> tuple[int, int]:
        if self._size is not None:
            return self._size
        columns = lines = 0
        try:
            size = os.get_terminal_size(self.stream.fileno())
            columns, lines = size.columns, size.lines
        except (AttributeError, OSError, ValueError):
            pass
        if columns <= 0 or lines <= 0:  # not a terminal, or one that never set its size
            # shutil's answer can be 0x0 too on Python 3.10 (it asks the same terminal;
            # 3.11 falls back to 80x24 there), which cut every line to 10 characters.
            fallback = shutil.get_terminal_size()
            columns = columns or fallback.columns or 80
            lines = lines or fallback.lines or 24
        return columns, lines

    def _erase(self) -> str:
        if not self._drawn:
            return ""
        drawn, self._drawn = self._drawn, 0
        return f"\x1b[{drawn}A\r\x1b[J"

    def _live_text(self) -> str:
        if not self._live or self._closed or not (self._running or self._waiting):
            return ""
        columns, rows = self._terminal_size()
        width = max(columns - 1, 10)  # the last column would wrap on some terminals
        room = max(0, min(self.MAX_LIVE, rows - 2))
        now = time.monotonic()
        tasks = sorted(self._running.items(), key=lambda kv: kv[1])
        waiting = sorted(self._waiting.items(), key=lambda kv: kv[1])
        rows_out: list[str] = []
        name_width = max((len(n) for n, _ in tasks + waiting), default=0)
        name_width = min(name_width, max(width - 12, 1))
        entries = [(n, s, "") for n, s in tasks]
        entries += [(n, s, " waiting for another taskrun") for n, s in waiting]
        shown = entries if len(entries) <= room else entries[: max(room - 1, 0)]
        # Output lines under the tasks only where the terminal has room for them.
        spare = room - len(shown) - (1 if len(shown) < len(entries) else 0)
        for name, since, note in shown:
            label = name if len(name) <= name_width else name[: name_width - 1] + "~"
            elapsed = _seconds(now - since)
            rate = self._rates.get(name)
            if rate is not None and not note:
                note = f"  {rate.bar(min(22, max(width // 4, 3)))} {rate.text()}"
            rows_out.append(self._fit(f"  {label:<{name_width}}  {elapsed:>6}{note}", width))
            for line in list(self._tails.get(name, ()))[: max(spare, 0)]:
                rows_out.append(self._fit(f"    | {line}", width))
                spare -= 1
        if len(shown) < len(entries) and room > 0:
            rows_out.append(self._fit(f"  ... and {len(entries) - len(shown)} more", width))
        parts = [f"{len(self._running)} running"]
        if self._queued:
            parts.append(f"{len(self._queued)} queued")
        if waiting:
            parts.append(f"{len(waiting)} waiting")
        parts += [f"{task} {done}/{items}" for task, (done, items) in self._maps.items()]
        status = self._fit(f"[{self._done}/{self._total}] {', '.join(parts)}", width)
        lines = [self._paint(r, "dim") for r in rows_out] + [self._paint(status, "bold")]
        self._drawn = len(lines)
        return "".join(line + "\n" for line in lines)

    @staticmethod
    def _fit(text: str, width: int) -> str:
        text = printable(text).replace("\t", " ")
        return text if len(text) <= width else text[: max(width - 3, 0)] + "..."

    # -- writing -----------------------------------------------------------------------
    def _paint(self, text: str, tone: str) -> str:
        if not self.color or not tone or not text:
            return text
        import click

        return click.style(text, **_TONES[tone])

    def _styled(self, line: Line) -> str:
        return self._paint(printable(line.text), line.tone)

    def _emit(self, text: str) -> None:
        if not text or self._broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self._broken = True
            self._live = False
            self._stop.set()


class JsonReporter(Reporter):
    """One JSON object per event (``{"event": "ran", ...}``), the summary last."""

    def handle(self, event: ev.Event) -> None:
        doc: dict[str, Any] = event.to_json()
        item = self.items.get(doc.get("task", ""))
        if item is not None and not isinstance(event, ev.MapExpanded):
            doc["mapped"], doc["item"] = item  # an item call: its mapped task and item key
        if isinstance(event, ev.RunFinished):
            doc["ok"] = event.ok
        self.write(json.dumps(doc, default=str))


def is_live_terminal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is an interactive terminal and not a CI job (``CI=true``)."""
    env = os.environ if environ is None else environ
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if env.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def make_reporter(
    *,
    as_json: bool = False,
    quiet: int = 0,
    verbose: int = 0,
    stream: TextIO | None = None,
    live: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> Reporter:
    """The reporter that fits where output goes: JSON if asked, live on a terminal, else plain.

    ``live`` forces the choice between the console and the plain reporter.
    """
    out = stream if stream is not None else sys.stdout
    if as_json:
        return JsonReporter(out, quiet=quiet, verbose=verbose)
    env = os.environ if environ is None else environ
    if live is None:
        live = is_live_terminal(out, env)
    # FORCE_COLOR (any value but ""/0/false/no) asks for colours where they would be off:
    # over NO_COLOR in the live view, and in plain output (CI logs that render them).
    force = env.get("FORCE_COLOR", "").strip().lower() not in ("", "0", "false", "no")
    if live:
        color = force or "NO_COLOR" not in env
        return ConsoleReporter(out, quiet=quiet, verbose=verbose, color=color)
    plain = PlainReporter(out, quiet=quiet, verbose=verbose)
    plain.color = force
    return plain


def __getattr__(name: str) -> Any:
    # Moved to taskrun.report_explain (one release of the old import path).
    if name in ("change_text", "explain_json", "explain_lines"):
        from taskrun import report_explain

        return getattr(report_explain, name)
    raise AttributeError(f"module 'taskrun.report' has no attribute {name!r}")
