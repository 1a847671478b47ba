"""Atomic file writes: a reader sees the old file or the new one, never a part of one.

Every file taskrun replaces whole -- ``last-run.json``, cache archives, the stat cache,
the source memo, restored outputs, remote statistics, the HTML report -- is written
through this module: into a temporary file beside the target (same directory, so the
same file system), then renamed over it with :func:`os.replace`, which POSIX makes
atomic. On any error the temporary file is removed and the target is left as it was.

**When to fsync** (``durable=``). The rename is atomic for readers, but not durable by
itself: after a power loss or kernel crash a renamed file can come back empty or torn,
or the rename can be lost. ``durable=True`` fsyncs the file before the rename (its bytes
are on disk before its name points at them) and the directory after it (the rename
survives). Use it for state that another run or machine trusts without checking:
``last-run.json`` (``gc --keep-last-run`` keeps what it names) and archives (CI uploads
them). Leave it off where a torn or lost file is detected and simply redone, because an
fsync costs milliseconds on a real disk: the stat cache and source memo (validated on
load, a loss costs a re-hash), restored outputs (checked against their digest on the
next hit), remote statistics and reports (informational, written again next run).

Not covered: write-once publication, where an existing target must win (the remote
store's hard link, :mod:`taskrun.remote`), and append-only logs (run records,
:mod:`taskrun.runs`) -- different guarantees, different primitives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_write", "publish", "temp_beside"]


def temp_beside(path: str | os.PathLike[str], *, mode: int | None = None) -> tuple[int, str]:
    """Create a new temporary file beside PATH; return its descriptor (open for writing)
    and its path.

    The name is hidden (``.NAME.<pid>-<random>.tmp``) and created exclusively. MODE sets
    the permission bits; None creates it as ``open(path, "w")`` would (0o666 less the
    umask), not ``mkstemp``'s 0o600.
    """
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
    if mode is not None:
        try:
            os.fchmod(fd, mode)  # the umask does not apply to fchmod: the bits asked for
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    return fd, tmp


def publish(tmp: str, path: str | os.PathLike[str], *, durable: bool) -> None:
    """Rename the finished temporary file TMP over PATH (see the module docstring for
    DURABLE; the file's own fsync is the writer's, done before closing it)."""
    os.replace(tmp, path)
    if durable:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself reaches the disk
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, durable: bool, mode: int | None = None
) -> Iterator[BinaryIO]:
    """Write PATH whole or not at all: yields a binary file; PATH is replaced when the
    ``with`` block ends without an error, and left untouched (no temporary file) if it
    raises. DURABLE and MODE: see the module docstring and :func:`temp_beside`."""
    fd, tmp = temp_beside(path, mode=mode)
    try:
        with open(fd, "wb", closefd=True) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, path, durable=durable)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, durable: bool, mode: int | None = None
) -> None:
    """Replace PATH with DATA atomically (:func:`atomic_file` for bytes in hand)."""
    with atomic_file(path, durable=durable, mode=mode) as f:
        f.write(data)
