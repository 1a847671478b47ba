"""Live output and progress of running tasks, on their way to the driver as they happen.

Every executor runs task code somewhere else than the scheduler's thread; what the code
writes and the progress it reports must reach the user *while it runs*, attributed to its
task, and in the order it was written. The pieces, by where they run:

In the driver
  :class:`Feed` wraps the run's event sink. The scheduler emits through it from the driver
  thread, executors from their own threads (a worker thread, the process executor's
  dispatcher, Dask's event loop); one lock keeps every event whole and in order, so
  reporters and the run record never see two events at once. Executors tell it when a call
  really starts (``started``: it left the queue for a slot), what it wrote and its progress.

  :class:`LineSink` is what a call running *in* the driver (thread and inline executors)
  writes to, through the routed ``sys.stdout``/``sys.stderr`` of
  :mod:`taskrun.executors.local`: it keeps the whole text (the outcome's ``output``) and
  sends every complete line on as an ``output`` event at once.

  :class:`FileTail` follows a worker process's capture file (the process executor points
  fds 1 and 2 of a worker at it for the duration of a call, so C code and child processes
  are caught too) and sends on what it gained since it last looked. The dispatcher looks
  every :data:`TAIL_INTERVAL` seconds while calls run, and once more before it resolves a
  call, so every line is out before the task's ``ran``/``failed`` event.

In the task
  :func:`progress` finds the *channel* of the call it runs in: the :class:`LineSink` of its
  thread (in the driver), or the channel a worker installed for the call
  (:func:`set_channel`: the process executor's connection, a Dask topic), and reports
  through it, throttled to :data:`PROGRESS_INTERVAL`.

Why not one mechanism for all: a thread cannot have file descriptors of its own, so
in-driver executors route Python-level writes per thread (see ``local.py`` for what that
cannot catch, and ``executors/fdcapture.py`` for how the CLI catches raw descriptor writes
of in-driver tasks), while worker processes capture at the descriptor level.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from taskrun import events as ev
from taskrun.errors import UsageError

__all__ = [
    "PROGRESS_INTERVAL",
    "TAIL_INTERVAL",
    "CallbackChannel",
    "Channel",
    "Feed",
    "FileTail",
    "LineSink",
    "clear_channel",
    "decode_progress",
    "encode_progress",
    "progress",
    "set_channel",
]

PROGRESS_INTERVAL = 0.1  # perf: seconds between progress reports a task sends, at least
TAIL_INTERVAL = 0.05  # perf: seconds between looks at a busy worker's capture file


class Feed:
    """The run's event sink, made safe to call from any thread, plus executors' notifications.

    ``feed(event)`` passes ``event`` on. :meth:`started`, :meth:`lines` and :meth:`progress`
    turn what an executor saw into events. All of it under one lock: the sink is called by
    one thread at a time.
    """

    def __init__(self, sink: Callable[[ev.Event], None]) -> None:
        self._sink = sink
        self._lock = threading.RLock()
        self._queued: dict[str, tuple[tuple[str, ...], int]] = {}  # task -> (reasons, attempt)

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            if isinstance(event, ev.TaskQueued):
                self._queued[event.task] = (event.reasons, event.attempt)
            elif isinstance(event, ev.TaskStarted):
                self._queued.pop(event.task, None)
            self._sink(event)

    def started(self, task: str) -> None:
        """The call of ``task`` left the queue and runs now (once per queued attempt)."""
        with self._lock:
            queued = self._queued.pop(task, None)
            if queued is not None:
                self._sink(ev.TaskStarted(task, queued[0], queued[1]))

    def lines(self, task: str, lines: Iterable[str]) -> None:
        """Complete lines ``task`` wrote (without their newline)."""
        with self._lock:
            now = time.time()
            for line in lines:
                self._sink(ev.TaskOutput(task, line, now))

    def progress(
        self, task: str, done: float, total: float | None, message: str, when: float
    ) -> None:
        with self._lock:
            self._sink(ev.TaskProgress(task, done, total, message, when))

    def sink_for(self, task: str) -> LineSink:
        """A fresh :class:`LineSink` for a call of ``task`` running in the driver."""
        return LineSink(task, self)


# -- the task's side --------------------------------------------------------------------------


class Channel(ABC):
    """Where :func:`progress` reports for the call running here; throttles, then sends."""

    def __init__(self) -> None:
        self._last = -math.inf  # time.monotonic() of the last report sent

    def report(self, done: float, total: float | None, message: str) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        # perf: a task may report once per item of a million; the user needs ten a second.
        if not final and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        self.send(done, total, message, time.time())

    @abstractmethod
    def send(self, done: float, total: float | None, message: str, when: float) -> None:
        """Deliver one progress report (subclasses: in the driver, or across a process)."""


_here = threading.local()  # .channel: the channel of the call this thread runs (workers)
_process_channel: Channel | None = None  # a worker process running one call at a time


def set_channel(channel: Channel | None, *, process_wide: bool = False) -> None:
    """Install ``channel`` for the call this thread (or, ``process_wide``, process) runs."""
    global _process_channel
    if process_wide:
        _process_channel = channel
    else:
        _here.channel = channel


def clear_channel(*, process_wide: bool = False) -> None:
    """Remove what :func:`set_channel` installed."""
    set_channel(None, process_wide=process_wide)


def _current() -> Channel | None:
    channel: Channel | None = getattr(_here, "channel", None)
    if channel is not None:
        return channel
    from taskrun.executors.local import current_sink

    sink = current_sink()
    if isinstance(sink, Channel):
        return sink
    return _process_channel


def progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report how far the running task is: ``done`` of ``total`` (if known), and what it does.

    Shown as a bar with rate and ETA in the live view, as throttled lines in plain output
    and as ``progress`` events with ``--json``, under every executor. Cheap enough to call
    per item: reports are sent at most every 0.1 s (the last one, ``done >= total``,
    always). Outside a running task it does nothing.
    """
    if isinstance(done, bool) or not isinstance(done, (int, float)) or not done >= 0:
        raise UsageError(f"taskrun.progress(done={done!r}): done must be a number of at least 0")
    if total is not None and (
        isinstance(total, bool) or not isinstance(total, (int, float)) or not total > 0
    ):
        raise UsageError(
            f"taskrun.progress(total={total!r}): total must be a number above 0, or None"
            " when it is not known"
        )
    channel = _current()
    if channel is not None:
        channel.report(done, total, str(message))


# -- text to lines ----------------------------------------------------------------------------


class _Lines:
    """Bytes or text in, complete lines out; the unfinished last line is kept for later."""

    def __init__(self) -> None:
        # perf: made by the first feed_bytes(); a task's own writes arrive as text.
        self._decoder: codecs.IncrementalDecoder | None = None
        self._pending = ""

    def feed_bytes(self, data: bytes) -> list[str]:
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return self.feed_text(self._decoder.decode(data))

    def feed_text(self, text: str) -> list[str]:
        if "\n" not in text:
            self._pending += text
            return []
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        return lines

    def rest(self) -> list[str]:
        """The unfinished line, if any (the stream ended without a newline)."""
        text = self._pending
        if self._decoder is not None:
            text += self._decoder.decode(b"", final=True)
        self._pending = ""
        return [text] if text else []


class LineSink(Channel):
    """A call running in the driver writes here: text kept whole, lines sent on as they end.

    Safe to write from several threads (the task's own, and the readers of its subprocess
    pipes). :meth:`finish` sends the unfinished last line and stops sending: a call
    abandoned at its deadline may go on writing, but nobody is listening any more.
    """

    def __init__(self, task: str, feed: Feed | None) -> None:
        super().__init__()
        self.task = task
        self._feed = feed
        self._parts: list[str] = []
        self._lines = _Lines()
        self._lock = threading.Lock()
        self._readers: list[tuple[threading.Thread, Any]] = []  # (reader, its Popen)
        #: The CLI's descriptor capture while the call runs (executors.fdcapture), if on:
        #: what the task wrote to descriptors 1 and 2 before is read out first, in order.
        self.capture: Any = None

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._readers:
            self._catch_up()
        if self.capture is not None:
            self.capture.catch_up()
        with self._lock:
            self._parts.append(text)
            if self._feed is not None:
                lines = self._lines.feed_text(text)
                if lines:
                    self._feed.lines(self.task, lines)
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def follow(self, fd: int, process: Any = None) -> None:
        """Copy what arrives on the read end of a pipe ``fd`` here, on a thread, until EOF.

        ``process`` (a ``subprocess.Popen``) is the child writing to it: once it has been
        waited for, the next write of the task first waits for the pipe to be read out, so
        that the child's lines come before what the task writes after it.
        """
        thread = threading.Thread(
            target=self._pump, args=(fd,), name=f"taskrun-pipe-{self.task}", daemon=True
        )
        with self._lock:
            self._readers.append((thread, process))
        thread.start()

    def _catch_up(self) -> None:
        me = threading.current_thread()
        with self._lock:
            ended = [
                (t, p)
                for t, p in self._readers
                if t is not me and p is not None and p.returncode is not None
            ]
        for thread, _ in ended:
            # Bounded: a grandchild the task left running may hold the pipe open.
            thread.join(2.0)
        with self._lock:
            self._readers = [r for r in self._readers if r not in ended]

    def _pump(self, fd: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                data = os.read(fd, 1 << 16)
                text = decoder.decode(data, final=not data)
                if text:
                    self.write(text)
                if not data:
                    return
        except OSError:
            return
        finally:
            os.close(fd)

    def finish(self, *, wait: float = 2.0) -> None:
        """Wait (up to ``wait`` s) for pipes to close, send the last line, stop sending."""
        with self._lock:
            readers, self._readers = self._readers, []
        end = time.monotonic() + wait
        for reader, _ in readers:
            # A pipe stays open while a child the task left behind holds it: don't hang.
            reader.join(max(0.0, end - time.monotonic()))
        with self._lock:
            feed, self._feed = self._feed, None
            if feed is not None:
                rest = self._lines.rest()
                if rest:
                    feed.lines(self.task, rest)

    def send(self, done: float, total: float | None, message: str, when: float) -> None:
        if self._readers:
            self._catch_up()
        if self.capture is not None:
            self.capture.catch_up()
        feed = self._feed
        if feed is not None:
            feed.progress(self.task, done, total, message, when)


class FileTail:
    """Follows a file another process appends to; sends on each complete line it gains.

    Safe to call from two threads (a poller and the one that resolves the call).
    """

    def __init__(self, path: str, task: str, feed: Feed) -> None:
        self.path = path
        self.task = task
        self._feed = feed
        self._offset = 0
        self._lines = _Lines()
        self._sent = 0  # lines sent so far
        self._done = False
        self._lock = threading.Lock()

    def poll(self) -> None:
        """Read what the file gained since the last look, send its complete lines."""
        with self._lock:
            if not self._done:
                self._poll_locked()

    def _poll_locked(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # truncated: the worker started the call afresh
                    self._offset = 0
                if size == self._offset:
                    return
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except OSError:
            return
        self._offset += len(data)
        lines = self._lines.feed_bytes(data)
        if lines:
            self._sent += len(lines)
            self._feed.lines(self.task, lines)

    def finish(self, output: str | None = None) -> None:
        """A last look, then the unfinished last line; then stop.

        With ``output`` (the whole output of the call, as its outcome carries it), send the
        lines of it not sent yet instead: the file may be gone (a Dask worker removes it
        before its result arrives) or on another machine.
        """
        with self._lock:
            if self._done:
                return
            self._done = True
            if output is None:
                self._poll_locked()
                rest = self._lines.rest()
            else:
                lines = output.split("\n")
                if lines and not lines[-1]:
                    lines.pop()
                rest = lines[self._sent :]
            if rest:
                self._feed.lines(self.task, rest)


def decode_progress(data: bytes) -> tuple[float, float | None, str, float]:
    """A progress report as a worker sends it: see :func:`encode_progress`."""
    import json

    done, total, message, when = json.loads(data)
    return float(done), None if total is None else float(total), str(message), float(when)


def encode_progress(done: float, total: float | None, message: str, when: float) -> bytes:
    import json

    return json.dumps([done, total, message, when]).encode()


class CallbackChannel(Channel):
    """A channel that hands each report to a function (a worker's way back to the driver)."""

    def __init__(self, send: Callable[[float, float | None, str, float], Any]) -> None:
        super().__init__()
        self._send = send

    def send(self, done: float, total: float | None, message: str, when: float) -> None:
        with contextlib.suppress(Exception):  # progress is a display: never fail the task for it
            self._send(done, total, message, when)


# -- logging in worker processes ------------------------------------------------------------
LoggingSetup = tuple[int, str | None, str | None, str]  # level, format, datefmt, style


def logging_setup() -> LoggingSetup | None:
    """How the driver's root logger shows records (for workers to do the same), if it does.

    A task file that calls ``logging.basicConfig(level=logging.INFO)`` configures the
    driver; a worker process unpickles the task functions without running the task file, so
    it would drop every record below WARNING and format the rest its own way.
    """
    import logging

    root = logging.getLogger()
    if root.level == logging.NOTSET:
        return None  # not configured: the worker's own defaults are as good
    for handler in root.handlers:
        # Exactly what basicConfig() makes: not a test runner's or a framework's handler.
        if type(handler) is logging.StreamHandler:
            formatter = handler.formatter
            if formatter is None:
                return (root.level, None, None, "%")
            kinds = {logging.StrFormatStyle: "{", logging.StringTemplateStyle: "$"}
            style = kinds.get(type(formatter._style), "%")
            return (root.level, formatter._fmt, formatter.datefmt, style)
    return None


_WORKER_LOGGERS = ("distributed", "tornado", "asyncio", "dask")


class use_logging_setup:  # noqa: N801 - a context manager used like a function
    """In a worker, for one call: show log records as the driver does (see logging_setup)."""

    def __init__(self, setup: LoggingSetup | None) -> None:
        self._setup = setup
        self._handler: Any = None
        self._level = 0

    def __enter__(self) -> use_logging_setup:
        import logging
        import sys

        root = logging.getLogger()
        if self._setup is None or root.handlers:
            return self
        level, fmt, datefmt, style = self._setup
        self._handler = logging.StreamHandler(sys.stderr)  # the captured stream, now
        self._handler.setFormatter(logging.Formatter(fmt, datefmt, style))  # type: ignore[arg-type]
        # The task's records, not the worker's own (Dask logs through the root logger too).
        self._handler.addFilter(lambda r: not r.name.startswith(_WORKER_LOGGERS))
        self._level = root.level
        root.addHandler(self._handler)
        root.setLevel(level)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        if self._handler is not None:
            root = logging.getLogger()
            root.removeHandler(self._handler)
            root.setLevel(self._level)
            self._handler = None
