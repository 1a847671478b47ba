"""Running calls inside the driver process: per-thread output capture and the working directory.

``sys.stdout`` and ``sys.stderr`` are process-global, so threads cannot each redirect them.
While an in-process executor is alive, both are replaced by a :class:`RoutedStream`: a
write from a thread that is running a task goes to that task's buffer (stdout and stderr
share one buffer, so their lines stay in order), and a write from any other thread goes to
the stream that was there before. ``print()`` and the ``sh()`` helper, which writes what
its command printed to ``sys.stdout``, both land in the right task's buffer.

Two more routes lead to a task's buffer while the routed streams are installed:

- **Subprocesses.** ``subprocess.Popen`` (and so ``run``, ``call``, ``check_output``),
  called from a task thread with stdout or stderr left to inherit, gets a pipe instead,
  read into the task's buffer by a thread of its own. Without it a child writes straight
  to the terminal, unattributed and under the live view.
- **Logging.** Handlers of the root logger that write to the original ``sys.stdout`` or
  ``sys.stderr`` (``logging.basicConfig()`` in the task file) are pointed at the routed
  streams, and back when the streams are restored.

What this cannot route, by design: writes straight to file descriptors 1 and 2 from the
task's own process (C extensions, ``os.write(1, ...)``, ``os.system``) and writes from
threads the task starts itself: a descriptor belongs to the process, not to a thread.
The ``taskrun`` command catches the former at the descriptor level
(:mod:`taskrun.executors.fdcapture`, told here which calls run), and attributes them to
the task when it is the only one running; the process executor attributes all of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TextIO

from taskrun.executors import fdcapture
from taskrun.executors.base import Call, Outcome, call_function
from taskrun.outcome import swap_cancel_event
from taskrun.shell import ProcessGroups, swap_groups

__all__ = ["STREAMS", "LocalSession", "RoutedStream", "current_sink", "routed_to", "run_here"]

_route = threading.local()  # .sink: the buffer of the task this thread is running, if any


def _sink() -> Any:
    return getattr(_route, "sink", None)


def current_sink() -> Any:
    """The buffer the task running in this thread writes to (None outside a task)."""
    return getattr(_route, "sink", None)


class RoutedStream:
    """Stands in for sys.stdout/sys.stderr: task threads write to their buffer, others through."""

    def __init__(self, original: TextIO) -> None:
        self.original = original

    def write(self, text: str) -> int:
        sink = _sink()
        return (self.original if sink is None else sink).write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _sink() is None:
            self.original.flush()

    def isatty(self) -> bool:
        # A task's output goes to a buffer: colour codes and progress bars would garble it.
        return False if _sink() is not None else self.original.isatty()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ...
        return getattr(self.original, name)


class _Streams:
    """Installs the routed streams while at least one in-process executor needs them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._installed: tuple[RoutedStream, RoutedStream] | None = None
        self._handlers: list[tuple[Any, Any]] = []  # logging handlers we pointed elsewhere

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                out, err = sys.stdout, sys.stderr
                # Reuse stand-ins left by someone else rather than stacking a second layer.
                if not isinstance(out, RoutedStream):
                    out = RoutedStream(out)
                if not isinstance(err, RoutedStream):
                    err = RoutedStream(err)
                sys.stdout, sys.stderr = out, err
                self._installed = (out, err)
                self._handlers = _route_handlers(out, err)
                _ROUTED_POPEN.install()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._installed is not None:
                out, err = self._installed
                self._installed = None
                _ROUTED_POPEN.uninstall()
                for handler, stream in self._handlers:
                    if getattr(handler, "stream", None) in (out, err):
                        handler.stream = stream
                self._handlers = []
                # Only undo our own change: if someone replaced the streams on top of ours,
                # theirs stay (ours keep passing writes through).
                if sys.stdout is out:
                    sys.stdout = out.original
                if sys.stderr is err:
                    sys.stderr = err.original


def _route_handlers(out: RoutedStream, err: RoutedStream) -> list[tuple[Any, Any]]:
    """Point root-logger handlers that write to the original streams at the routed ones."""
    changed: list[tuple[Any, Any]] = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if not isinstance(handler, logging.StreamHandler) or stream is None:
            continue
        for routed in (out, err):
            if stream is routed.original:
                handler.stream = routed
                changed.append((handler, stream))
    return changed


class _RoutedPopen:
    """Gives subprocesses a task thread starts a pipe into the task's buffer (see the top)."""

    def __init__(self) -> None:
        self._original: Any = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = subprocess.Popen.__init__

        def __init__(popen: Any, args: Any, *more: Any, **kwargs: Any) -> None:  # noqa: N807
            sink = _sink()
            # Positional stdout/stderr (the 5th and 6th parameters) are rare: left alone.
            if sink is None or not hasattr(sink, "follow") or len(more) > 3:
                original(popen, args, *more, **kwargs)
                return
            wants = [name for name in ("stdout", "stderr") if kwargs.get(name) is None]
            if not wants:
                original(popen, args, *more, **kwargs)
                return
            read, write = os.pipe()
            for name in wants:
                kwargs[name] = write
            try:
                original(popen, args, *more, **kwargs)
            except BaseException:
                os.close(read)
                raise
            finally:
                os.close(write)
            sink.follow(read, popen)

        subprocess.Popen.__init__ = __init__  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            subprocess.Popen.__init__ = self._original  # type: ignore[method-assign]
            self._original = None


_ROUTED_POPEN = _RoutedPopen()
STREAMS = _Streams()  # acquire() while routing may be needed, release() after


@contextmanager
def routed_to(sink: Any) -> Iterator[Any]:
    """Send this thread's writes to sys.stdout/sys.stderr into ``sink`` (streams installed)."""
    previous = _sink()
    _route.sink = sink
    try:
        yield sink
    finally:
        _route.sink = previous


class LocalSession:
    """What in-process executors change in the driver while alive, undone by :meth:`close`.

    That is: the routed streams, the working directory (tasks run in the project root, and
    the working directory is per process, not per thread) and ``sys.path`` (the project root
    goes first so the project's own modules import, as in a worker process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams = False
        self._saved_cwd: str | None = None
        self._added_paths: list[str] = []

    def enter(self, cwd: str) -> None:
        """Make the driver ready to run a call rooted at ``cwd``."""
        with self._lock:
            if not self._streams:
                STREAMS.acquire()
                self._streams = True
            try:
                here = os.getcwd()
            except FileNotFoundError:  # the old working directory was deleted
                here = ""
            if here != cwd:
                if self._saved_cwd is None:
                    self._saved_cwd = here
                os.chdir(cwd)
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
                self._added_paths.append(cwd)

    def close(self) -> None:
        """Restore the streams, the working directory and sys.path."""
        with self._lock:
            if self._streams:
                STREAMS.release()
                self._streams = False
            if self._saved_cwd:
                with contextlib.suppress(OSError):  # gone meanwhile: nothing sensible to go back to
                    os.chdir(self._saved_cwd)
            self._saved_cwd = None
            for path in self._added_paths:
                with contextlib.suppress(ValueError):
                    sys.path.remove(path)
            self._added_paths.clear()


def run_here(
    call: Call,
    sink: Any,
    *,
    interruptible: bool,
    cancel: threading.Event | None = None,
    groups: ProcessGroups | None = None,
) -> Outcome:
    """Run ``call`` in this thread with its output routed to ``sink``.

    ``sink`` is an ``io.StringIO`` or a :class:`taskrun.streaming.LineSink` (which sends
    each line on as it is written, and is finished here: every line is out before the
    outcome). ``cancel`` is what :func:`taskrun.cancelled` reads in the task while it runs.
    The process groups its ``sh()`` commands start are registered with ``groups``, so the
    executor can kill them when the call times out or is cancelled.
    """
    # perf: the three per-thread scopes (output route, cancel event, process groups) are
    # set here and restored in one finally, not entered as three generator context
    # managers: their cost showed per task in a cold run of no-op tasks.
    previous_sink = _sink()
    _route.sink = sink
    capture = fdcapture.active  # the CLI's descriptor capture (see fdcapture), if on
    if capture is not None:
        capture.call_started(sink)
    previous_event = swap_cancel_event(cancel)
    previous_groups = swap_groups(groups) if groups is not None else None
    try:
        outcome = call_function(call.task, call.fn, call.kwargs, interruptible=interruptible)
    finally:
        if groups is not None:
            swap_groups(previous_groups)
        swap_cancel_event(previous_event)
        _route.sink = previous_sink
        if groups is not None:
            groups.done()
        if capture is not None:
            capture.call_ended(sink)  # its raw writes are read before its outcome
    finish = getattr(sink, "finish", None)
    if finish is not None:
        finish()
    output = sink.getvalue()
    # perf: most calls print nothing; their outcome needs no copy.
    return replace(outcome, output=output) if output else outcome
