"""What in-process tasks write straight to file descriptors 1 and 2, caught and attributed.

The ``inline`` and ``thread`` executors run tasks in threads of the taskrun process.
Python-level writes are routed per thread (see :mod:`taskrun.executors.local`), but a
descriptor belongs to the process: C extensions, ``os.write(1, ...)``, ``os.system`` and
any child that inherits descriptors 1 and 2 write past that routing. For the ``taskrun``
command, while a run with such an executor goes on, :class:`FdCapture` points both
descriptors at one pipe and reads it on a thread of its own. Each complete line read is

- the task's, when exactly one call runs in this process at that moment: it joins the
  task's output (its ``output`` events and the output kept with its result);
- otherwise an ``output`` event of the pseudo-task :data:`UNATTRIBUTED` (``?``): with
  several calls running nobody can tell whose it was, and with none it was written by
  something else in the process (a thread a task left running). It is shown, never
  dropped.

A call's bytes are in the pipe once its write returned, so :func:`call_ended` reads the
pipe out while the call still counts as running: its lines are its own, and come before
its ``ran`` event. The reporters write to duplicates of the original descriptors made
before the redirect (:attr:`FdCapture.stdout`), so they reach the terminal as before.
:meth:`FdCapture.running` restores both descriptors when the run ends, however it ends
(an error, Ctrl-C, SIGTERM), after a last read; an unfinished last line is sent as a line.

Only the CLI turns this on: it owns its process. A program calling :func:`taskrun.run`
may have threads of its own writing to its descriptors (a server's log), which would
become a task's output.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from taskrun.events import UNATTRIBUTED

__all__ = ["FdCapture", "active", "prepare"]

active: FdCapture | None = None  # the capture under way in this process, read by run_here


def prepare() -> FdCapture | None:
    """An :class:`FdCapture` for this process's descriptors 1 and 2, if they are real.

    None when ``sys.stdout``/``sys.stderr`` are not descriptors 1 and 2 (a test runner's
    capture, click's CliRunner) or a descriptor is closed: there is nothing to redirect.
    """
    try:
        if sys.stdout.fileno() != 1 or sys.stderr.fileno() != 2:
            return None
        os.fstat(1)
        os.fstat(2)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    return FdCapture()


class FdCapture:
    """Descriptors 1 and 2 into a pipe while :meth:`running`; see the module docstring."""

    def __init__(self) -> None:
        _flush_python()
        self._saved = (os.dup(1), os.dup(2))
        #: Where reporters write: the original stdout, whatever 1 points at meanwhile.
        self.stdout: TextIO = open(  # noqa: SIM115 - closed by close()
            os.dup(self._saved[0]),
            "w",
            encoding=getattr(sys.stdout, "encoding", None) or "utf-8",
            errors=getattr(sys.stdout, "errors", None) or "strict",
        )
        # Reading the pipe and the set of running calls. Re-entrant: sending a line to a
        # task's sink comes back to catch_up(), which then has nothing to do.
        self._lock = threading.RLock()
        self._reading = False  # a thread holding the lock is reading the pipe
        self._running: dict[int, Any] = {}  # id(sink) -> sink of a call running here
        self._feed: Any = None
        self._read_fd = -1
        self._wake: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        self._lines: Any = None

    @contextlib.contextmanager
    def running(self, feed: Any) -> Iterator[None]:
        """Capture while the block runs; ``feed`` (a streaming.Feed) takes unattributed lines."""
        self._start(feed)
        try:
            yield
        finally:
            self._stop()

    def _start(self, feed: Any) -> None:
        global active
        from taskrun.streaming import _Lines

        self._feed = feed
        self._lines = _Lines()
        read, write = os.pipe()
        os.set_blocking(read, False)
        self._read_fd = read
        self._wake = os.pipe()
        _flush_python()
        try:
            os.dup2(write, 1)
            os.dup2(write, 2)
        finally:
            os.close(write)
        self._reader = threading.Thread(target=self._read, name="taskrun-fd-capture", daemon=True)
        self._reader.start()
        active = self

    def _stop(self) -> None:
        global active
        active = None
        try:
            _flush_python()
            _flush_c()
        finally:
            # First of all: the shell gets its terminal back, whatever happens next.
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            assert self._wake is not None
            os.write(self._wake[1], b"x")
            if self._reader is not None:
                self._reader.join()
            with self._lock:
                self._drain_locked()  # what was written up to the restore
                rest = self._lines.rest()
                if rest:
                    self._send_locked(rest)
                self._running.clear()
                os.close(self._read_fd)
                self._read_fd = -1
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def close(self) -> None:
        """Close the duplicates of the original descriptors (after :meth:`running`)."""
        with contextlib.suppress(OSError):
            self.stdout.close()
        for fd in self._saved:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- calls running in this process ------------------------------------------------
    def call_started(self, sink: Any) -> None:
        """A call writing its output to ``sink`` runs in this process from now on."""
        with self._lock:
            self._running[id(sink)] = sink
        if hasattr(sink, "capture"):  # a LineSink: its writes first catch_up()
            sink.capture = self

    def catch_up(self) -> None:
        """Read out what the pipe holds now, before a task's own write or progress report.

        So a task's raw lines and its ``print()`` lines keep the order they were written in.
        """
        with self._lock:
            if not self._reading and self._read_fd >= 0:
                self._drain_locked()

    def call_ended(self, sink: Any) -> None:
        """The call of ``sink`` returned: what it wrote is read (and is its own if alone)."""
        with self._lock:
            if self._read_fd < 0 or id(sink) not in self._running:
                return
            self._drain_locked()
            if len(self._running) == 1:
                rest = self._lines.rest()  # an unfinished line: the task ended it
                if rest:
                    self._send_locked(rest)
            del self._running[id(sink)]
        if hasattr(sink, "capture"):
            sink.capture = None

    # -- the pipe ------------------------------------------------------------------------
    def _read(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        while True:
            try:
                ready, _, _ = select.select([self._read_fd, wake], [], [])
            except (OSError, ValueError):
                return
            if wake in ready:
                return
            with self._lock:
                if self._drain_locked():
                    return

    def _drain_locked(self) -> bool:
        """Read what the pipe holds now and send its complete lines; True at its end."""
        self._reading = True
        try:
            while True:
                try:
                    data = os.read(self._read_fd, 1 << 16)
                except BlockingIOError:
                    return False
                except OSError:
                    return True
                if not data:
                    return True
                lines = self._lines.feed_bytes(data)
                if lines:
                    self._send_locked(lines)
        finally:
            self._reading = False

    def _send_locked(self, lines: list[str]) -> None:
        if len(self._running) == 1:
            (sink,) = self._running.values()
            sink.write("".join(line + "\n" for line in lines))
        else:
            self._feed.lines(UNATTRIBUTED, lines)


def _flush_python() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def _flush_c() -> None:
    """Flush C stdio buffers (a C extension's printf) into the pipe before it is closed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
