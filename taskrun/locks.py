"""Per-fingerprint locks: two taskrun processes never compute the same fingerprint at once.

The scheduler takes a fingerprint's lock when a miss gets a slot to run (not when it
becomes ready, so concurrent runs share the work) and releases it after the entry is
stored; a second process that finds the lock taken parks the task and goes on with
others, while :meth:`FingerprintLocks.wait` blocks in a helper thread until the lock is
free (no polling: the kernel wakes it); then the task, normally, hits. The kernel drops
a lock when its holder dies, so a killed process never blocks the next run.

On Linux a lock is one byte of one shared file, ``locks/fingerprints.lock``, at an offset
taken from the fingerprint, held with an *open-file-description* lock (``F_OFD_SETLK``).
perf: creating a lock file per task cost more than the rest of a cold run of no-op tasks.
Unlike classic POSIX record locks, OFD locks belong to our descriptor, so closing another
descriptor of the file elsewhere in the process does not drop them; like them, they do
not exclude their own owner, so the held ranges are also tracked here. Elsewhere, each
fingerprint gets a ``locks/<fingerprint>.lock`` file and ``flock``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import pathlib
import struct
import sys
import threading

from taskrun.errors import UsageError

__all__ = ["FingerprintLocks", "HeldLock", "abandon", "sweep_lock_files"]

# struct flock for F_OFD_SETLK(W): l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK = struct.Struct("hhqqi4x")
_OFD = getattr(fcntl, "F_OFD_SETLK", None) is not None and sys.platform == "linux"
_RANGE_FILE = "fingerprints.lock"


def _ofd(fd: int, kind: int, offset: int, *, wait: bool) -> bool:
    """Set or clear one byte-range open-file-description lock; False if it is taken."""
    cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    except (BlockingIOError, PermissionError):
        return False
    return True


class HeldLock:
    """A held per-fingerprint lock; ``release()`` or leaving a ``with`` block frees it."""

    __slots__ = ("_fd", "_held", "_offset", "_owns_fd", "fingerprint")

    def __init__(
        self,
        fingerprint: str,
        fd: int | None,
        offset: int | None = None,
        held: set[int] | None = None,
        *,
        owns_fd: bool = False,
    ) -> None:
        self.fingerprint = fingerprint
        self._fd = fd
        self._offset = offset  # set: a byte range of the shared lock file, not our own fd
        self._held = held  # the owner's set of held ranges (OFD locks do not exclude their owner)
        self._owns_fd = owns_fd  # a byte range on a descriptor of its own (see wait())

    def release(self) -> None:
        """Let the next process in (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._offset is not None:
            with contextlib.suppress(OSError):
                _ofd(fd, fcntl.F_UNLCK, self._offset, wait=False)
            if self._held is not None:
                self._held.discard(self._offset)
            if self._owns_fd:
                os.close(fd)
        else:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A forgotten lock must not outlive its owner object (the kernel would keep it).
        self.release()


class FingerprintLocks:
    """The lock directory of one cache, as seen by one opener."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self._range_fd: int | None = None  # the shared byte-range lock file, once opened
        self._held: set[int] = set()

    def acquire(self, fingerprint: str, *, blocking: bool) -> HeldLock | None:
        """The fingerprint's lock, or None if it is taken and ``blocking`` is False."""
        if _OFD:
            if self._range_fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                # 0o666: sharing a cache directory between users is left to the umask.
                self._range_fd = os.open(
                    self.directory / _RANGE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666
                )
            offset = int(fingerprint[:15], 16)  # 60 bits: collisions are not a concern
            if offset in self._held:
                # Our own descriptor already holds it; the kernel would say yes again.
                if not blocking:
                    return None
                raise UsageError(f"the lock for {fingerprint} is already held by this cache")
            if not _ofd(self._range_fd, fcntl.F_WRLCK, offset, wait=blocking):
                return None
            self._held.add(offset)
            return HeldLock(fingerprint, self._range_fd, offset, self._held)
        return self._flock(fingerprint, blocking)

    def wait(self, fingerprint: str) -> concurrent.futures.Future[HeldLock]:
        """The fingerprint's lock, taken by a helper thread that sleeps until it is free.

        For a lock another process holds: the caller goes on with other work and waits on
        the future with its other futures. perf: the thread blocks in the kernel
        (F_OFD_SETLKW, or flock), so waiting costs no CPU, where polling every 50 ms once
        burned a whole core. The lock is taken on a descriptor of the helper's own, so
        closing this object's shared descriptor never drops it, and it excludes our own
        byte ranges too. A caller that loses interest calls :func:`abandon` on the future:
        the lock is then released as soon as it is taken.
        """
        future: concurrent.futures.Future[HeldLock] = concurrent.futures.Future()

        def take() -> None:
            try:
                held = self._wait_blocking(fingerprint)
            except BaseException as exc:  # noqa: BLE001 - the waiter reports, never dies silent
                future.set_exception(exc)
            else:
                future.set_result(held)

        name = f"taskrun-lock-wait-{fingerprint[:12]}"
        threading.Thread(target=take, name=name, daemon=True).start()
        return future

    def _wait_blocking(self, fingerprint: str) -> HeldLock:
        if not _OFD:
            held = self._flock(fingerprint, blocking=True)
            assert held is not None
            return held
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / _RANGE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        offset = int(fingerprint[:15], 16)
        try:
            while not _ofd(fd, fcntl.F_WRLCK, offset, wait=True):
                pass  # pragma: no cover - F_OFD_SETLKW only returns once it holds the lock
        except BaseException:
            os.close(fd)
            raise
        return HeldLock(fingerprint, fd, offset, owns_fd=True)

    def _flock(self, fingerprint: str, blocking: bool) -> HeldLock | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{fingerprint}.lock"
        while True:
            # Read-only is enough for flock, so another user's lock file in a shared
            # directory can be locked too; 0o666 leaves the sharing to the umask.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
                try:
                    on_disk, mine = os.stat(path), os.fstat(fd)
                    same = (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return HeldLock(fingerprint, fd)
            # gc unlinked the file between our open and our lock: lock the current one.
            os.close(fd)

    def close(self) -> None:
        """Close the shared descriptor (dropping any byte-range lock still held by it)."""
        if self._range_fd is not None:
            os.close(self._range_fd)
            self._range_fd = None
            self._held.clear()


def abandon(future: concurrent.futures.Future[HeldLock]) -> None:
    """Give up a :meth:`FingerprintLocks.wait`: release the lock whenever it is taken."""

    def release(done: concurrent.futures.Future[HeldLock]) -> None:
        if done.exception() is None:
            done.result().release()

    future.add_done_callback(release)


def sweep_lock_files(directory: pathlib.Path) -> None:
    """Delete per-fingerprint lock files that nobody holds (gc)."""
    for path in directory.glob("*.lock"):
        if path.name == _RANGE_FILE:
            continue  # shared by every fingerprint; its byte ranges are the locks
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()  # while we hold it; acquire() re-checks the inode after locking
        except OSError:
            pass  # held by a live process: leave it
        finally:
            os.close(fd)
