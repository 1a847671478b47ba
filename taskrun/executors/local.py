"""Running calls inside the driver process: per-thread output capture and the working directory.

``sys.stdout`` and ``sys.stderr`` are process-global, so threads cannot each redirect them.
While an in-process executor is alive, both are replaced by a :class:`RoutedStream`: a
write from a thread that is running a task goes to that task's buffer (stdout and stderr
share one buffer, so their lines stay in order), and a write from any other thread goes to
the stream that was there before. ``print()`` and the ``sh()`` helper, which writes what
its command printed to ``sys.stdout``, both land in the right task's buffer.

What this cannot catch, by design: writes straight to file descriptors 1 and 2 (C
extensions, a subprocess started without capturing its output), writes from threads the
task starts itself, and logging handlers that kept a reference to the old stream. The
process executor captures at the descriptor level and catches all of these.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TextIO

from taskrun.executors.base import Call, Outcome, call_function

__all__ = ["STREAMS", "LocalSession", "RoutedStream", "routed_to", "run_here"]

_route = threading.local()  # .sink: the buffer of the task this thread is running, if any


def _sink() -> io.StringIO | None:
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
                sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
                self._installed = (out, err)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._installed is not None:
                out, err = self._installed
                self._installed = None
                # Only undo our own change: if someone replaced the streams on top of ours,
                # theirs stay (ours keep passing writes through).
                if sys.stdout is out:
                    sys.stdout = out.original
                if sys.stderr is err:
                    sys.stderr = err.original


STREAMS = _Streams()  # acquire() while routing may be needed, release() after


@contextmanager
def routed_to(sink: io.StringIO) -> Iterator[io.StringIO]:
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
                try:
                    os.chdir(self._saved_cwd)
                except OSError:  # gone meanwhile: nothing sensible to go back to
                    pass
            self._saved_cwd = None
            for path in self._added_paths:
                try:
                    sys.path.remove(path)
                except ValueError:
                    pass
            self._added_paths.clear()


def run_here(
    call: Call,
    sink: io.StringIO,
    *,
    interruptible: bool,
    cancel: threading.Event | None = None,
) -> Outcome:
    """Run ``call`` in this thread with its output routed to ``sink``.

    ``cancel`` is what :func:`taskrun.cancelled` reads in the task while it runs.
    """
    from taskrun.outcome import cancel_scope

    with routed_to(sink), cancel_scope(cancel):
        outcome = call_function(call.task, call.fn, call.kwargs, interruptible=interruptible)
    return replace(outcome, output=sink.getvalue())
