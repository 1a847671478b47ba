"""The trampoline: how user code crosses into another process and its outcome comes back.

A task function from a task file loaded by path cannot be pickled by reference (the
worker could not import it), so the driver cloudpickles ``(fn, kwargs)`` *by value* into
bytes with :func:`encode_call`, the worker calls the importable :func:`run_pickled` with
those bytes, and the driver turns the bytes it returns into an :class:`Outcome` with
:func:`decode_result`. Any pool that can call an importable function with bytes can run
tasks this way: the process executor here, and Dask workers. :func:`run_pickled_then` also
hands the outcome to a function of the caller's before it is encoded (a Dask worker running
a call in a scratch copy of the project collects the output files there).

Result bytes are a plain pickle of the outcome's text fields plus the product as its own
cloudpickle bytes, so a product that cannot be pickled (in the worker) or loaded (in the
driver) is a failed outcome that still carries the task's output.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import tempfile
import types
from collections import ChainMap
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import IO, Any, Literal, TextIO

import cloudpickle

from taskrun.executors.base import Call, Outcome, call_function, describe_exception
from taskrun.executors.local import STREAMS, routed_to
from taskrun.modules import project_module_names

__all__ = ["decode_result", "encode_call", "run_pickled", "run_pickled_then"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
Capture = Literal["fd", "sys", "none"]


def encode_call(call: Call) -> bytes:
    """The bytes a worker needs to run ``call``: ``(fn, kwargs)``, cloudpickled.

    Raises whatever pickling raises (an argument that cannot be pickled); callers turn that
    into a failed outcome.
    """
    with io.BytesIO() as buffer:
        _Pickler(buffer, protocol=_PROTOCOL).dump((call.fn, dict(call.kwargs)))
        return buffer.getvalue()


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, keeping its real file name.

    cloudpickle (3.1+) renames the file of code pickled by value to "<dynamic-code>" to make
    its bytes deterministic; we never hash pickle bytes, and without the name a traceback
    from a worker would show neither the task file nor its source lines.
    """
    assert _CLOUDPICKLE_CODE_REDUCE is not None
    ctor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    args = tuple(
        code.co_filename if isinstance(a, str) and a == "<dynamic-code>" else a for a in args
    )
    return ctor, args


_CLOUDPICKLE_CODE_REDUCE = getattr(cloudpickle.cloudpickle, "_code_reduce", None)


# cloudpickle ships no type information (its Pickler is Any to mypy): subclassing it is
# what this module is for.
class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, except that code keeps its file name (see _code_reduce)."""

    if _CLOUDPICKLE_CODE_REDUCE is not None:
        dispatch_table = ChainMap(
            {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
        )


def run_pickled(
    payload: bytes,
    cwd: str,
    *,
    capture: Capture = "fd",
    capture_path: str | None = None,
    forget_project_modules: bool = False,
) -> bytes:
    """Run a call made by :func:`encode_call` in this process; return bytes for decode_result.

    The call runs with ``cwd`` as working directory and first on ``sys.path`` (so the
    project's own modules import). Output is captured per ``capture``:

    - ``"fd"`` (default): file descriptors 1 and 2 go to a file for the duration, so
      output of C code and of child processes is caught too, in order. For a process
      that runs one call at a time (process executor, Dask worker with one thread).
    - ``"sys"``: only Python-level writes to sys.stdout/sys.stderr from this thread, for
      a worker that runs several calls at once in threads.
    - ``"none"``: nothing captured.

    ``capture_path`` (with ``"fd"``) names the file to capture into, truncated first: the
    process executor reads it when the worker dies mid-call or is killed at a deadline.

    ``forget_project_modules`` drops the modules imported from under ``cwd`` from
    ``sys.modules`` after the call, so the next call imports them afresh. A long-lived
    worker (a Dask cluster serving run after run) needs it: otherwise, after the user edits
    a helper module, the task reruns (its code fingerprint changed) with the old helper
    still loaded, and a wrong product is cached under the new fingerprint. The process
    executor's workers live for one run and skip it.

    Never raises for anything the task does.
    """
    return run_pickled_then(
        payload,
        cwd,
        None,
        capture=capture,
        capture_path=capture_path,
        forget_project_modules=forget_project_modules,
    )


def run_pickled_then(
    payload: bytes,
    cwd: str,
    then: Callable[[Outcome], Outcome] | None,
    *,
    capture: Capture = "fd",
    capture_path: str | None = None,
    forget_project_modules: bool = False,
) -> bytes:
    """:func:`run_pickled`, with ``then(outcome)`` run on how the call ended.

    ``then`` runs still in ``cwd``, after the output capture and before the outcome is
    encoded (and before project modules are forgotten); the outcome it returns is the one
    sent back. An exception from it fails the call, with the exception's text as the
    error: a worker that runs calls in a scratch copy of the project collects the output
    files there, and gives up on a call whose outputs cannot be sent back.
    """
    _enter_project(cwd)
    sink = _open_capture(capture, capture_path)
    with sink:
        try:
            fn, kwargs = cloudpickle.loads(payload)
        except Exception as exc:  # noqa: BLE001
            outcome = Outcome(
                task="",
                ok=False,
                error=f"cannot load the task on this worker: {describe_exception(exc)}",
            )
        else:
            outcome = call_function("", fn, kwargs, interruptible=False)
    if then is not None:
        try:
            outcome = then(outcome)
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the call failed
            outcome = replace(outcome, ok=False, value=None, error=str(exc) or repr(exc))
    # Encode before forgetting: a product whose class lives in a project module must be
    # pickled by reference to that module, which needs it still in sys.modules.
    result = _encode_result(replace(outcome, output=sink.text))
    if forget_project_modules:
        _forget_modules_under(cwd)
    return result


def decode_result(task: str, data: bytes) -> Outcome:
    """The :class:`Outcome` of ``task`` from the bytes :func:`run_pickled` returned."""
    fields, product = pickle.loads(data)
    outcome = Outcome(task=task, **fields)
    if product is None:
        return outcome
    try:
        value = cloudpickle.loads(product)
    except Exception as exc:  # noqa: BLE001
        return replace(
            outcome,
            ok=False,
            error=f"the product could not be loaded in the driver: {describe_exception(exc)}",
        )
    return replace(outcome, value=value)


def _encode_result(outcome: Outcome) -> bytes:
    product: bytes | None = None
    fields: dict[str, Any] = {
        "ok": outcome.ok,
        "error": outcome.error,
        "traceback": outcome.traceback,
        "output": outcome.output,
        "duration": outcome.duration,
        "error_types": outcome.error_types,
    }
    if outcome.ok:
        try:
            product = cloudpickle.dumps(outcome.value, protocol=_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - pickling raises many kinds
            fields["ok"] = False
            fields["error"] = (
                "the product cannot be pickled to send it back from the worker process:"
                f" {describe_exception(exc)}; return plain data (or use the thread executor)"
            )
    return pickle.dumps((fields, product), protocol=_PROTOCOL)


def _enter_project(cwd: str) -> None:
    os.chdir(cwd)
    if sys.path[:1] != [cwd]:
        if cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)


def _forget_modules_under(root: str) -> None:
    """Drop the project's own pure-Python modules (those under ``root``) from sys.modules."""
    for name in project_module_names(root, list(sys.modules), pure_python=True):
        del sys.modules[name]


class _Capture:
    """Captures nothing; the base of the capture context managers."""

    text = ""

    def __enter__(self) -> _Capture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _SysCapture(_Capture):
    """Routes this thread's sys.stdout/sys.stderr writes to a buffer (see local.py)."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._routing = routed_to(self._buffer)

    def __enter__(self) -> _Capture:
        STREAMS.acquire()
        self._routing.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._routing.__exit__(exc_type, exc, tb)
        STREAMS.release()
        self.text = self._buffer.getvalue()


class _FdCapture(_Capture):
    """Points file descriptors 1 and 2 (and sys.stdout/sys.stderr) at one file."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        self._saved: list[int | None] = []
        self._streams: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> _Capture:
        _flush(sys.stdout, sys.stderr)
        self._file = open(self._path, "w+b") if self._path else tempfile.TemporaryFile()
        target = self._file.fileno()
        for fd in (1, 2):
            try:
                self._saved.append(os.dup(fd))
            except OSError:  # the worker was started with fd closed
                self._saved.append(None)
            os.dup2(target, fd)
        self._streams = (sys.stdout, sys.stderr)
        # Both descriptors share one open file (one offset), so C-level writes interleave in
        # order; the Python streams write through with no buffer of their own, so print()
        # and sys.stderr.write() keep their order too, and a crash loses nothing.
        sys.stdout, sys.stderr = _unbuffered_text(1), _unbuffered_text(2)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _flush(sys.stdout, sys.stderr)
        assert self._streams is not None and self._file is not None
        sys.stdout, sys.stderr = self._streams
        for fd, saved in zip((1, 2), self._saved, strict=True):
            if saved is None:
                os.close(fd)
            else:
                os.dup2(saved, fd)
                os.close(saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", errors="replace")
        self._file.close()


def _open_capture(capture: Capture, path: str | None) -> _Capture:
    if capture == "fd":
        return _FdCapture(path)
    if capture == "sys":
        return _SysCapture()
    if capture == "none":
        return _Capture()
    raise ValueError(f"capture must be 'fd', 'sys' or 'none', not {capture!r}")


def _unbuffered_text(fd: int) -> TextIO:
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        raw,  # a raw file works, and is what makes it unbuffered
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def _flush(*streams: TextIO | None) -> None:
    for stream in streams:
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing to keep
            pass
