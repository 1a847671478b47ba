"""``sh``: run a command from a task, its output both captured and shown in the task's log."""

from __future__ import annotations

import codecs
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from taskrun.errors import ShellError

__all__ = ["ShResult", "sh"]

TAIL_LINES = 20
ECHO_ENV = "TASKRUN_ECHO_COMMANDS"  # set by `taskrun run -v`: sh() prints each command first
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class ShResult:
    """A finished command: how it was written, its exit code and what it printed."""

    cmd: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.returncode == 0


def sh(
    cmd: str | Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    shell: bool | None = None,
    echo: bool = True,
) -> ShResult:
    """Run CMD and return its :class:`ShResult`.

    A string runs through the shell, a list does not (SHELL overrides either way). ENV
    holds variables to set on top of the current environment. stdout and stderr are
    captured (decoded as UTF-8) and, with ECHO, also written line by line to
    ``sys.stdout``/``sys.stderr`` as they arrive, so they show in the task's log. stdin
    is empty: tasks run unattended, possibly in parallel.

    Raises :class:`ShellError` naming the command, the exit code and the last
    ``TAIL_LINES`` lines of output when the command exits non-zero (only with CHECK), and
    always when it cannot be started or runs past TIMEOUT seconds (it is then killed).
    """
    use_shell = isinstance(cmd, str) if shell is None else shell
    if isinstance(cmd, str):
        display = cmd
        args: str | list[str] = cmd if use_shell else shlex.split(cmd)
    else:
        parts = [os.fspath(c) for c in cmd]
        display = shlex.join(parts)
        args = display if use_shell else parts
    full_env = None if env is None else {**os.environ, **env}
    if echo and os.environ.get(ECHO_ENV):  # `taskrun run -v`: show what runs, in the log
        sys.stdout.write(f"$ {display}\n")
        sys.stdout.flush()
    try:
        proc = subprocess.Popen(
            args,
            shell=use_shell,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ShellError(
            f"command `{display}` could not be started: {exc.strerror or exc}",
            command=display,
            returncode=None,
        ) from exc
    try:
        stdout, stderr, combined, timed_out = _collect(proc, timeout, echo)
    except BaseException:
        # Ctrl-C or a failing echo stream: never leave the child running behind us.
        proc.kill()
        proc.wait()
        raise
    returncode = proc.returncode
    if timed_out:
        raise ShellError(
            _failure(display, f"timed out after {timeout:g}s and was killed", combined),
            command=display,
            returncode=returncode,
        )
    if check and returncode != 0:
        raise ShellError(
            _failure(display, _how(returncode), combined), command=display, returncode=returncode
        )
    return ShResult(display, returncode, stdout, stderr)


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _failure(display: str, how: str, combined: str) -> str:
    lines = combined.splitlines()
    if not lines:
        return f"command `{display}` {how} (no output)"
    tail = lines[-TAIL_LINES:]
    head = f"last {len(tail)} of {len(lines)} lines" if len(lines) > len(tail) else "output"
    return "\n".join([f"command `{display}` {how}; {head}:", *(f"  | {ln}" for ln in tail)])


class _Stream:
    """One pipe: decodes incrementally, keeps everything, echoes whole lines."""

    def __init__(self, pipe: IO[bytes], name: str, echo: bool) -> None:
        self.pipe = pipe
        self.name = name  # "stdout" or "stderr": looked up on sys at each write
        self.echo = echo
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.chunks: list[str] = []
        self.pending = ""

    def feed(self, data: bytes, combined: list[str]) -> None:
        text = self.decoder.decode(data, final=not data)
        if text:
            self.chunks.append(text)
            combined.append(text)
        if not self.echo:
            return
        # Echo whole lines only, so a reporter that prefixes lines with the task name
        # never splits one.
        text = self.pending + text
        cut = text.rfind("\n") + 1 if data else len(text)
        self.pending = text[cut:]
        if cut:
            out: Any = getattr(sys, self.name)
            out.write(text[:cut])
            out.flush()


def _collect(
    proc: subprocess.Popen[bytes], timeout: float | None, echo: bool
) -> tuple[str, str, str, bool]:
    """Read both pipes to EOF or TIMEOUT: stdout, stderr, both interleaved, whether timed out."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = [_Stream(proc.stdout, "stdout", echo), _Stream(proc.stderr, "stderr", echo)]
    combined: list[str] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    if os.name == "nt":  # pragma: no cover - selectors cannot watch pipes on Windows
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        for stream, data in zip(streams, (out, err), strict=True):
            stream.feed(data, combined)
            stream.feed(b"", combined)
    else:
        # perf/why: one selector in the calling thread rather than reader threads, so the
        # echo goes to this thread's sys.stdout (which taskrun may route per task).
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                selector.register(stream.pipe, selectors.EVENT_READ, stream)
            while selector.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    timed_out = True
                    break
                for key, _ in selector.select(remaining):
                    stream = key.data
                    data = os.read(key.fd, _READ_SIZE)
                    stream.feed(data, combined)
                    if not data:
                        selector.unregister(key.fileobj)
        for stream in streams:
            stream.pipe.close()
        if timed_out:
            proc.kill()
        try:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        if timed_out:
            for stream in streams:
                stream.feed(b"", combined)
    return "".join(streams[0].chunks), "".join(streams[1].chunks), "".join(combined), timed_out
