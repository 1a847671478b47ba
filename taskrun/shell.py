"""``sh``: run a command from a task, its output both captured and shown in the task's log.

Every command runs in a process group of its own (a new session), so that everything it
starts can be killed at once: at its timeout, on Ctrl-C, and when the task that ran it is
cancelled or timed out. The groups are remembered in a :class:`ProcessGroups` registry:
the one of the task running in this thread (the in-process executors open one per call
with :func:`collecting_groups`), else the process-wide :data:`GROUPS` (what a process
worker kills before it exits). A group is forgotten once it is empty; one that outlives
its command (``cmd &``) is killed with its registry, at the latest when the executor shuts
down, so no child of a task outlives the run.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from taskrun.errors import ShellError

__all__ = [
    "GROUPS",
    "ProcessGroups",
    "ShResult",
    "adopt_orphans",
    "collecting_groups",
    "kill_children",
    "kill_group",
    "kill_journaled",
    "sh",
    "swap_groups",
]

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
    groups = current_groups()
    try:
        proc = subprocess.Popen(
            args,
            shell=use_shell,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Its own group (and session, so no terminal signal reaches it behind our
            # back): killing the group kills what the command started, `sleep` in
            # `sleep 30; echo done` included, not only the shell.
            start_new_session=True,
        )
    except OSError as exc:
        raise ShellError(
            f"command `{display}` could not be started: {exc.strerror or exc}",
            command=display,
            returncode=None,
        ) from exc
    if not groups.add(proc.pid):
        # The task was cancelled or timed out meanwhile (its thread runs on, abandoned).
        kill_group(proc.pid)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        raise ShellError(
            f"command `{display}` was not run: its task was cancelled",
            command=display,
            returncode=None,
        )
    try:
        stdout, stderr, combined, timed_out = _collect(proc, timeout, echo)
    except BaseException:
        # Ctrl-C or a failing echo stream: never leave the command's group running.
        kill_group(proc.pid)
        proc.wait()
        groups.settled(proc.pid)
        raise
    groups.settled(proc.pid)
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
            kill_group(proc.pid)
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
            kill_group(proc.pid)  # before reaping: the group id cannot have been reused
        try:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid)
            proc.wait()
        if timed_out:
            for stream in streams:
                stream.feed(b"", combined)
    return "".join(streams[0].chunks), "".join(streams[1].chunks), "".join(combined), timed_out


# -- process groups -------------------------------------------------------------------------


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_journaled(path: str) -> int:
    """Kill the groups the journal ``path`` lists as live (see ProcessGroups.keep_journal),
    then remove it. Returns how many groups were listed live."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().split()
    except OSError:
        return 0
    live: set[int] = set()
    for line in lines:
        if line[1:].isdigit():
            (live.add if line[0] == "+" else live.discard)(int(line[1:]))
    for pgid in live:
        kill_group(pgid)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return len(live)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process took the id
        return False
    return True


class ProcessGroups:
    """The process groups ``sh()`` started for one owner: a task call, an executor, a worker.

    Thread-safe. :meth:`kill` kills every group (and those of the registries made with
    :meth:`child`) and closes the registry: a command started for it afterwards (by a task
    thread that was abandoned at its timeout and runs on) is killed at once and fails.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pgids: set[int] = set()
        self._children: set[ProcessGroups] = set()
        self._parent: ProcessGroups | None = None
        self._closed = False
        self._journal: str | None = None  # see keep_journal

    def keep_journal(self, path: str) -> None:
        """Also note this registry's groups (and its children's) in the file ``path``.

        ``+pgid`` when a group is added, ``-pgid`` when it is gone or killed: what another
        process reads with :func:`kill_journaled` after this one died without killing
        them (a process worker SIGKILLed, or crashed; its commands run in sessions of
        their own, so killing the worker's group does not reach them).
        """
        self._journal = path

    def _note(self, sign: str, pgids: Collection[int]) -> None:
        root = self
        while root._parent is not None:
            root = root._parent
        if root._journal is None or not pgids:
            return
        text = "".join(f"{sign}{pgid}\n" for pgid in pgids)
        with contextlib.suppress(OSError):  # a lost note costs a cleanup, never the call
            fd = os.open(
                root._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)

    def child(self) -> ProcessGroups:
        """A registry for one call, killed with this one."""
        sub = ProcessGroups()
        with self._lock:
            sub._parent = self
            if self._closed:
                sub._closed = True
            else:
                self._children.add(sub)
        return sub

    def add(self, pgid: int) -> bool:
        """Remember group ``pgid``; False if this registry was killed already."""
        with self._lock:
            if self._closed:
                return False
            self._pgids.add(pgid)
        self._note("+", (pgid,))
        return True

    def settled(self, pgid: int) -> None:
        """The command that leads ``pgid`` was reaped: forget the group unless strays remain."""
        if not _group_alive(pgid):
            with self._lock:
                self._pgids.discard(pgid)
            self._note("-", (pgid,))

    def done(self) -> None:
        """The owner call ended: detach from the parent, unless groups live on (killed later)."""
        with self._lock:
            gone = {p for p in self._pgids if not _group_alive(p)}
            self._pgids -= gone
            idle = not self._pgids and not self._children
            parent = self._parent
        self._note("-", gone)
        if idle and parent is not None:
            with parent._lock:
                parent._children.discard(self)

    def kill(self) -> int:
        """Kill every group of this registry and its children; close it. Returns how many."""
        with self._lock:
            self._closed = True
            pgids, self._pgids = self._pgids, set()
            children, self._children = self._children, set()
        for pgid in pgids:
            kill_group(pgid)
        self._note("-", pgids)
        return len(pgids) + sum(sub.kill() for sub in children)

    def reopen(self) -> None:
        """Accept new groups again after :meth:`kill` (an executor that stays usable)."""
        with self._lock:
            self._closed = False


GROUPS = ProcessGroups()  # groups started outside any task call (process workers, scripts)
_scope = threading.local()  # .groups: the registry of the call this thread is running


def current_groups() -> ProcessGroups:
    """The registry ``sh()`` uses in this thread."""
    groups: ProcessGroups | None = getattr(_scope, "groups", None)
    return GROUPS if groups is None else groups


@contextlib.contextmanager
def collecting_groups(groups: ProcessGroups) -> Iterator[ProcessGroups]:
    """Register the groups that ``sh()`` starts in this thread with ``groups``."""
    previous = swap_groups(groups)
    try:
        yield groups
    finally:
        _scope.groups = previous


def swap_groups(groups: ProcessGroups | None) -> ProcessGroups | None:
    """Make ``sh()`` in this thread register with ``groups``; returns the registry before.

    :func:`collecting_groups` without the context manager (perf: the inline executor's
    per-call cost); the caller gives the returned registry back the same way.
    """
    previous: ProcessGroups | None = getattr(_scope, "groups", None)
    _scope.groups = groups
    return previous


# -- the CLI's last resort: children nobody registered ---------------------------------------

_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Make orphaned descendants this process's children (Linux), so :func:`kill_children`
    finds what a task left behind after its parent exited (``os.system("cmd &")``).

    Only for a process that owns everything below it, like the ``taskrun`` command; False
    where the platform does not offer it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def _children() -> list[tuple[int, str, int]]:
    """(pid, state, process group) of this process's children, from /proc (Linux)."""
    me = os.getpid()
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:  # pragma: no cover - no procfs
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[1]) == me:
            found.append((int(name), fields[0], int(fields[2])))
    return found


def kill_children(keep: Sequence[int] = ()) -> int:
    """Kill this process's remaining children (with their groups when they lead their own)
    and reap them; returns how many were alive. Linux only (reads /proc); else 0.

    For the end of a ``taskrun run``: a task in the driver (thread and inline executors)
    that started a process and never waited for it would otherwise keep running, holding
    the driver's stdout open (``taskrun run | cat`` would not end).
    """
    mine = os.getpgrp()
    killed = 0
    for pid, state, pgid in _children():
        if pid in keep:
            continue
        if state not in ("Z", "X"):
            killed += 1
            try:
                if pgid != mine:
                    os.killpg(pgid, signal.SIGKILL)
                else:  # in our own group (and our caller's, `| cat` too): only itself
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        with contextlib.suppress(ChildProcessError):  # reaped by its Popen meanwhile
            os.waitpid(pid, 0)
    return killed
