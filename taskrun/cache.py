"""The result cache: verified, optionally signed entries and blobs on diskcache.

A cache directory holds::

    cache.db, xx/yy/*.val       diskcache: the SQLite index, large values as files
    locks/fingerprints.lock     one byte-range lock per fingerprint (one computes, others
                                wait); elsewhere than Linux, locks/<fingerprint>.lock flocks
    last-run.json               the fingerprints the last run used, its hits and misses

diskcache keys (all values are bytes)::

    <fingerprint>   tag "entry"   an entry envelope: meta JSON + the cloudpickled product
    <digest>        tag "blob"    a blob envelope: one output file's bytes, content-addressed
    task:<name>     tag "task"    the fingerprint last stored for that task (for ``explain``)

Fingerprints and blob digests are xxh3-128 in lowercase hex (32 characters). A blob's
digest is that of its bytes (:func:`blob_digest`), so equal outputs are stored once.

Entries and blobs are stored as envelopes (see :mod:`taskrun.cache_format`): length,
xxh3-128 digest and, with ``TASKRUN_CACHE_KEY`` set, an HMAC-SHA256 bound to the key they
are stored under, all checked before the meta is parsed or the product unpickled.

Trust: values are read through our own read-only SQLite connection, never through
``diskcache.Cache.get``, because diskcache unpickles rows stored in its pickle mode and a
cache restored from elsewhere could carry such a row. Mode ``read`` never even opens
diskcache (its constructor writes to the database), so it writes nothing at all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import os
import pathlib
import shutil
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import IO, Final, Literal

import cloudpickle
import diskcache

from taskrun.atomic import atomic_write
from taskrun.cache_format import (
    KIND_BLOB,
    KIND_ENTRY,
    HitHead,
    Opened,
    StoreReader,
    audit_store,
    blob_digest,
    entry_head,
    is_digest,
    open_envelope,
    seal,
    split_entry_meta,
    value_files_on_disk,
)
from taskrun.cache_values import (
    CacheInfo,
    EntryMeta,
    GcReport,
    LastRun,
    OutputRecord,
    StoreResult,
    VerifyProblem,
    VerifyReport,
    human_size,
    meta_json,
    unsafe_path,
)
from taskrun.errors import CacheError, ConfigError, IntegrityError, UsageError, did_you_mean
from taskrun.locks import FingerprintLocks, HeldLock, sweep_lock_files

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "Cache",
    "CacheInfo",
    "CacheMode",
    "CacheWarning",
    "Entry",
    "EntryMeta",
    "GcReport",
    "HeldLock",
    "LastRun",
    "OutputRecord",
    "StoreResult",
    "VerifyProblem",
    "VerifyReport",
    "blob_digest",
    "shared_mode",
]

DEFAULT_SIZE_LIMIT: Final = 5 * 2**30
CacheMode = Literal["rw", "read", "off"]
CACHE_MODES: Final = ("rw", "read", "off")
KEY_ENV: Final = "TASKRUN_CACHE_KEY"
MODE_ENV: Final = "TASKRUN_CACHE_MODE"

_TAG_ENTRY, _TAG_BLOB, _TAG_TASK = "entry", "blob", "task"
_PINNED_SETTINGS: Final = {
    k: v for k, v in diskcache.core.DEFAULT_SETTINGS.items() if k.startswith(("sqlite_", "disk_"))
}
_LAST_RUN = "last-run.json"


class _Diskcache(diskcache.Cache):  # type: ignore[misc]  # diskcache has no types
    """diskcache whose :meth:`close` closes the connection of every thread that used it.

    diskcache keeps one SQLite connection per thread and closes only the calling thread's,
    so a cache opened on one thread and closed on another (``taskrun.start``, the thread
    executor, a lock waiter) left connections to the garbage collector: "unclosed
    database" ResourceWarnings on Python 3.13. Here connections are made with
    ``check_same_thread=False`` (each is still used by its own thread only) and recorded,
    so that ``close`` closes them all, whichever thread calls it; a thread that uses the
    cache again afterwards gets a new connection. ``_con`` otherwise mirrors diskcache 5.
    """

    def __init__(self, *args: object, **settings: object) -> None:
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        self._generation = 0  # bumped by close(): connections of older ones are closed
        try:
            super().__init__(*args, **settings)
        except BaseException:
            self.close()
            raise

    @property
    def _con(self) -> sqlite3.Connection:
        local = self._local
        pid = os.getpid()
        forked = getattr(local, "pid", pid) != pid
        if forked:
            self.close()  # the parent's connections are not this process's to use
        if forked or getattr(local, "generation", None) != self._generation:
            local.__dict__.pop("con", None)
            local.pid = pid
            local.generation = self._generation
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if con is None:
            con = sqlite3.connect(
                os.path.join(self._directory, diskcache.core.DBNAME),
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            with self._opened_lock:
                self._opened.append(con)
            local.con = con
            # Per-connection pragmas are kept in the Settings table (none before it exists).
            try:
                settings = con.execute("SELECT key, value FROM Settings").fetchall()
            except sqlite3.OperationalError:
                pass
            else:
                for key, value in settings:
                    if key.startswith("sqlite_"):
                        self.reset(key, value, update=False)
        return con

    @property
    def small(self) -> int:
        """Values shorter than this are kept in their row (diskcache's disk_min_file_size)."""
        return int(self._disk.min_file_size)

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` (str keys) have a row, as this connection sees it (in transact())."""
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._sql(f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk)
            found.update(key for (key,) in rows)
        return found

    def set_small(self, items: Mapping[str, bytes], *, tag: str, fresh: bool) -> None:
        """``set(key, value, tag=tag)`` for each item in one statement; call in transact().

        perf: diskcache's set() costs a SELECT, an INSERT or UPDATE and its Python around
        them per value; a cold run stores two values per task. The rows written are the
        ones set() writes for a ``bytes`` value under a ``str`` key below
        ``disk_min_file_size`` (kept in the row, no value file: the caller checks the
        size), and diskcache's own triggers keep its count and size. ``fresh``: no key has
        a row (the caller checked in this transaction), a plain INSERT; else an existing
        row is updated in place (an UPSERT; a value file such a row named, which taskrun
        never writes for these small values, would be left to gc as an orphan).
        """
        now = time.time()
        rows = [(key, now, now, tag, value) for key, value in items.items()]
        if not rows:
            return
        if not fresh and not _UPSERT:
            for key, value in items.items():  # SQLite older than 3.24: no UPSERT
                self.set(key, value, tag=tag)
            return
        self._con.executemany(_INSERT if fresh else _UPSERT_SQL, rows)

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
            self._generation += 1
        for con in opened:
            con.close()
        local = getattr(self, "_local", None)  # absent if __init__ failed early
        if local is not None:
            local.__dict__.pop("con", None)


# The row diskcache 5's set() writes for a small bytes value under a str key (see set_small).
_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag,"
    f" size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, 0, {diskcache.core.MODE_RAW},"
    " NULL, ?)"
)
_UPSERT_SQL = (
    _INSERT + " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " expire_time = NULL, access_time = excluded.access_time, access_count = 0,"
    " tag = excluded.tag, size = 0, mode = excluded.mode, filename = NULL,"
    " value = excluded.value"
)
_UPSERT = sqlite3.sqlite_version_info >= (3, 24, 0)


class CacheWarning(UserWarning):
    """A cache entry or blob was unusable (corrupt, truncated, unsigned, mis-signed)."""


def _check_name(name: str, what: str) -> None:
    if not is_digest(name):
        raise UsageError(f"{what} {name!r} is not 32 lowercase hex digits (an xxh3-128 digest)")


def _batch_keys(sealed: Sequence[tuple[EntryMeta, bytes, Mapping[str, bytes]]]) -> set[str]:
    """The entries of a stored batch and the blobs they refer to (not to be evicted)."""
    return {
        key
        for meta, _, _ in sealed
        for key in (meta.fingerprint, *(o.digest for o in meta.outputs))
    }


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _pointer_key(task: str) -> str:
    return f"task:{task}"


def _newest_by_task(metas: Iterable[EntryMeta]) -> dict[str, EntryMeta]:
    newest: dict[str, EntryMeta] = {}
    for m in metas:
        if m.task not in newest or m.created > newest[m.task].created:
            newest[m.task] = m
    return newest


def _default_warning(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=3)


def shared_mode(directory: pathlib.Path) -> int:
    """Permission bits for a new file in ``directory``: its read/write bits, at least 0o600."""
    try:
        return (directory.stat().st_mode & 0o666) | 0o600
    except OSError:
        return 0o644


def _stream(raw: bytes | pathlib.Path) -> IO[bytes]:
    return raw.open("rb") if isinstance(raw, pathlib.Path) else io.BytesIO(raw)


def _unwritable(directory: pathlib.Path) -> str | None:
    """Why the cache ``directory`` cannot be written (creating it if needed), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror}"
    with contextlib.suppress(OSError):
        if os.statvfs(directory).f_bavail == 0:
            return _FULL
    if not os.access(directory, os.W_OK):  # EROFS for a read-only mount, even for root
        return "it is read-only"
    db = directory / "cache.db"
    if db.exists() and not os.access(db, os.W_OK):
        return "cache.db is read-only"
    return None


def _no_space(exc: BaseException, directory: pathlib.Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "disk is full" in str(exc):
        return True
    # SQLite reports a -wal or -shm it cannot extend as a "disk I/O error": ask the disk.
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


def _read_only_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return True
    return "readonly" in str(exc) or "read-only" in str(exc)


_FULL = "no space left on the device"
_ORPHAN_GRACE = 3600.0  # seconds: an unindexed value file this old is no store in flight
_IMPORT_DIRS = ".import-*"  # archive import's temporary directories (archive.import_archive)
_WRITERS = "writers"  # locks/writers: held shared by every process that has the cache open rw


def _hold_writers(directory: pathlib.Path) -> int | None:
    """Hold ``locks/writers`` shared: gc removes unindexed value files only when alone."""
    try:
        (directory / "locks").mkdir(exist_ok=True)
        fd = os.open(
            directory / "locks" / _WRITERS,
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o666 & shared_mode(directory),
        )
    except OSError:
        return None  # then gc never thinks it is alone: it keeps recent orphans
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def _head_of(meta: EntryMeta) -> HitHead:
    return HitHead(
        meta.fingerprint, meta.compute_time, len(meta.outputs), meta.task, meta.product_digest
    )


class Entry:
    """A verified cache hit. The product is unpickled only by :meth:`load`.

    ``fingerprint``, ``task``, ``product_digest``, ``compute_time`` and ``outputs`` are
    what a hit uses; ``meta`` (the full metadata, with the fingerprint's components) is
    read again and parsed only when asked for: perf, a warm run parses no JSON.
    """

    __slots__ = (
        "_cache",
        "_digest",
        "_meta",
        "compute_time",
        "fingerprint",
        "product_digest",
        "task",
    )

    def __init__(
        self, cache: Cache, head: HitHead, digest: str, meta: EntryMeta | None = None
    ) -> None:
        self._cache = cache
        self._digest = digest
        self._meta = meta
        self.fingerprint = head.fingerprint
        self.task = head.task
        self.product_digest = head.product_digest
        self.compute_time = head.compute_time

    @property
    def meta(self) -> EntryMeta:
        """The entry's full metadata (re-read and parsed on first use)."""
        if self._meta is None:
            self._meta = self._cache._meta_of(self.fingerprint, self._digest, self.task)
        return self._meta

    @property
    def outputs(self) -> tuple[OutputRecord, ...]:
        """The output files the entry restores."""
        return self._meta.outputs if self._meta is not None else ()

    def load(self) -> object:
        """Re-read, re-verify and unpickle the product.

        Raises IntegrityError when the entry is gone, changed or fails its checks since
        the lookup, and CacheError when a verified payload cannot be unpickled.
        """
        return self._cache._load(self.fingerprint, self.task, self._digest)

    def __repr__(self) -> str:
        return f"<Entry {self.task} {self.fingerprint}>"


# --------------------------------------------------------------------------- the cache


class Cache:
    """The result cache in ``directory``: entries, blobs, signing, size limit, gc."""

    def __init__(
        self,
        directory: pathlib.Path | str,
        *,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        key: bytes | None = None,
        mode: CacheMode = "rw",
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in CACHE_MODES:
            raise UsageError(
                f"unknown cache mode {mode!r}; use rw, read or off"
                + did_you_mean(str(mode), CACHE_MODES)
            )
        if not isinstance(size_limit, int) or size_limit <= 0:
            raise UsageError(
                f"cache size limit must be a positive number of bytes, not {size_limit!r}"
            )
        if key is not None and not key:
            raise UsageError("the cache signing key is empty; unset it or give a real key")
        # absolute: the read-only SQLite connection opens it by file: URI
        self._directory = pathlib.Path(directory).absolute()
        self._size_limit = size_limit
        self._key = key
        self._mode: CacheMode = mode
        self._warn = on_warning or _default_warning
        self._outcomes: dict[str, bool] = {}  # fingerprint -> hit, for the run's hit rate
        self._dc: diskcache.Cache | None = None
        self._reader: StoreReader | None = None
        self._closed = False  # a product loaded after close() opens and closes its own read
        self._locks: FingerprintLocks | None = None  # opened on the first lock
        self._volume: int | None = None  # the store's size when last measured
        self._written = 0  # bytes stored by this object since then
        self._read_only_reason: str | None = None  # why a rw cache is read in read mode
        self._writers: int | None = None  # fd of locks/writers, held shared while open rw
        if mode == "rw":
            self._open_rw()
        if self._mode != "off":
            self._reader = StoreReader(self._directory, live=self._dc is not None)

    def _open_rw(self) -> None:
        """Open diskcache for writing, or fall back to read mode with one warning.

        A cache that cannot be written (a read-only mount or directory, a full disk) is
        still a valid cache: it is read, nothing is stored, and the warning says why.
        """
        reason = _unwritable(self._directory)
        if reason is None:
            problems = audit_store(self._directory)
            if problems and any("disk I/O error" in p for p in problems):
                # Not evidence of tampering: SQLite could not read (a full disk cannot
                # give a read-only connection its -shm file).
                reason = _FULL if _no_space(OSError(), self._directory) else problems[0]
                problems = []
            if problems:
                raise CacheError(
                    f"the cache in {self._directory} was not written by taskrun, or was "
                    f"tampered with ({'; '.join(problems[:3])}); it was not opened. Move "
                    "that directory aside (or import results with `taskrun cache import`)"
                )
            reason = reason or self._open_dc()
        if reason is not None:
            self._read_only_reason = reason
            self._mode = "read"
            self._warn(
                f"the cache in {self._directory} cannot be written ({reason}); using it "
                "read-only: hits are served, nothing is stored this run"
            )

    def _open_dc(self) -> str | None:
        """Open diskcache (and the writers lock); None, or why it cannot be written."""
        try:
            # least-recently-stored: a read never writes (LRU would update on every hit).
            # The sqlite_/disk_ settings are given explicitly so that values stored in
            # a database restored from elsewhere never reach a PRAGMA.
            self._dc = _Diskcache(
                str(self._directory),
                size_limit=self._size_limit,
                eviction_policy="least-recently-stored",
                tag_index=True,
                # perf: diskcache's own culling runs a volume query on every set(); the
                # size limit is enforced once per stored batch instead (_cull).
                cull_limit=0,
                **_PINNED_SETTINGS,
            )
        except (OSError, sqlite3.Error) as exc:
            if _no_space(exc, self._directory):
                return _FULL
            if _read_only_error(exc):
                return f"it is read-only: {exc}"
            raise CacheError(f"cannot open the cache in {self._directory}: {exc}") from exc
        except diskcache.Timeout as exc:
            raise CacheError(f"cannot open the cache in {self._directory}: {exc}") from exc
        self._writers = _hold_writers(self._directory)
        return None

    @staticmethod
    def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
        """The signing key from ``TASKRUN_CACHE_KEY`` (UTF-8), or None when unset or empty."""
        value = (os.environ if environ is None else environ).get(KEY_ENV, "")
        return value.encode("utf-8") if value else None

    @staticmethod
    def mode_from_env(
        default: CacheMode = "rw", environ: Mapping[str, str] | None = None
    ) -> CacheMode:
        """The mode from ``TASKRUN_CACHE_MODE``, or ``default``; ConfigError when invalid."""
        value = (os.environ if environ is None else environ).get(MODE_ENV, "") or default
        if value not in CACHE_MODES:
            raise ConfigError(
                f"{MODE_ENV}={value!r} is not a cache mode; use rw, read or off"
                + did_you_mean(value, CACHE_MODES)
            )
        return value  # type: ignore[return-value]

    @property
    def directory(self) -> pathlib.Path:
        """Where the cache lives."""
        return self._directory

    @property
    def mode(self) -> CacheMode:
        """rw, read (never writes) or off (never reads or writes)."""
        return self._mode

    @property
    def size_limit(self) -> int:
        """Bytes the cache may use; past them the least recently stored entries are evicted."""
        return self._size_limit

    @property
    def key(self) -> bytes | None:
        """The signing key, or None (the remote cache signs what it writes with it)."""
        return self._key

    @property
    def signed(self) -> bool:
        """True when a signing key is set (entries are signed and signatures required)."""
        return self._key is not None

    def __repr__(self) -> str:
        return f"<Cache {str(self._directory)!r} mode={self._mode}>"

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the database connections (idempotent)."""
        # The read-only connection goes first, so that diskcache's is the last one: SQLite
        # then checkpoints and deletes cache.db-wal and -shm, and a later read-mode run
        # can open the database immutable, writing nothing (a read-only connection to a
        # WAL database would rewrite -shm).
        self._closed = True
        if self._reader is not None:
            self._reader.close()
        if self._dc is not None:
            self._dc.close()
        if self._locks is not None:
            self._locks.close()  # drops any lock still held through it
            self._locks = None
        if self._writers is not None:
            os.close(self._writers)
            self._writers = None

    def _writable(
        self, action: str, free_first: Callable[[], Iterable[str]] | None = None
    ) -> diskcache.Cache:
        """diskcache, for ``action``; UsageError in read/off mode, CacheError if unwritable.

        On a full disk, ``free_first`` names value files that ``action`` removes anyway:
        they are deleted before the database is opened for writing (which needs room).
        A reader then finds them missing: a miss, never a wrong hit.
        """
        if self._dc is None and free_first is not None and self._read_only_reason == _FULL:
            for name in free_first():
                with contextlib.suppress(OSError):
                    (self._directory / name).unlink()
            if self._open_dc() is None:
                self._read_only_reason = None
                self._mode = "rw"
                if self._reader is not None:
                    self._reader.close()
                self._reader = StoreReader(self._directory, live=True)
        if self._dc is None:
            if self._read_only_reason is not None:
                raise CacheError(
                    f"cannot {action}: the cache in {self._directory} cannot be written "
                    f"({self._read_only_reason}); nothing was changed"
                )
            raise UsageError(
                f"cannot {action}: the cache in {self._directory} is in "
                f"'{self._mode}' mode; use --cache-mode rw"
            )
        return self._dc

    @contextlib.contextmanager
    def _alone(self) -> Iterator[bool]:
        """True inside when no other process has this cache open for writing."""
        fd = self._writers
        if fd is None:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)

    def _recreate_database(self) -> bool:
        """Remove cache.db (and -wal, -shm) if no writer has it open; then open a new one.

        True when the database was removed (a new one is open if there was room for it).
        """
        try:
            fd = os.open(self._directory / "locks" / _WRITERS, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False
            if self._reader is not None:
                self._reader.close()
            for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self._directory / name).unlink()
        finally:
            if fd is not None:
                os.close(fd)
        self._reader = StoreReader(self._directory, live=False)
        if self._open_dc() is None:
            self._read_only_reason = None
            self._mode = "rw"
            self._reader = StoreReader(self._directory, live=True)
        return True

    def _orphans(self) -> dict[str, int]:
        """Value files on disk that no index row names (left by rollbacks and kills)."""
        assert self._reader is not None
        on_disk = value_files_on_disk(self._directory)
        if not on_disk:
            return {}
        referenced = self._reader.value_files()
        return {name: size for name, size in on_disk.items() if name not in referenced}

    def _sweep_orphans(self) -> tuple[int, int]:
        """Remove orphaned value files; return (how many, bytes).

        A process storing right now writes a value file before the row that names it is
        committed, so while another process has the cache open for writing only orphans
        older than an hour are removed; alone, all of them.
        """
        removed = freed = 0
        with self._alone() as alone:
            cutoff = time.time() - _ORPHAN_GRACE
            for name, size in sorted(self._orphans().items()):
                path = self._directory / name
                try:
                    if not alone and path.lstat().st_mtime > cutoff:
                        continue
                    path.unlink()
                except OSError:
                    continue
                removed += 1
                freed += size
        return removed, freed

    def _sweep_imports(self) -> tuple[int, int]:
        """Remove what killed archive imports left; return (directories, bytes).

        An import streams members into ``.import-*`` beside the database and removes it
        when it ends, but not when it is killed. An import in progress has the cache open
        for writing, so while another process does, only directories untouched for an
        hour are removed; alone, all of them. Symlinks are never followed.
        """
        removed = freed = 0
        with self._alone() as alone:
            cutoff = time.time() - _ORPHAN_GRACE
            for path in sorted(self._directory.glob(_IMPORT_DIRS)):
                try:
                    st = path.lstat()
                    if not stat.S_ISDIR(st.st_mode) or (not alone and st.st_mtime > cutoff):
                        continue
                    size = sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
                    shutil.rmtree(path)
                except OSError:
                    continue
                removed += 1
                freed += size
        return removed, freed

    # ---- reading and checking

    def _read_entry(self, fp: str) -> tuple[EntryMeta, Opened] | None:
        """The verified meta of entry ``fp``; None if absent; IntegrityError if bad."""
        if self._reader is None:
            return None
        stream = self._reader.open(fp)
        if stream is None:
            return None
        with stream:
            opened = open_envelope(stream, kind=KIND_ENTRY, name=fp, key=self._key)
        return self._entry_meta(fp, opened), opened

    def _entry_meta(self, fp: str, opened: Opened) -> EntryMeta:
        raw, head = opened.meta, None
        if opened.version == 2:
            head, raw = split_entry_meta(raw)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise IntegrityError(f"entry metadata is not JSON: {exc}") from None
        meta = EntryMeta.from_dict(data)
        if meta.fingerprint != fp:
            raise IntegrityError(f"entry for {meta.fingerprint} is stored under {fp}")
        if head is not None and head != _head_of(meta):
            raise IntegrityError("entry hit head does not match its metadata")
        return meta

    def _hit_head(self, fp: str, opened: Opened) -> tuple[HitHead, EntryMeta | None]:
        """What a hit needs: from the hit head alone when the entry has no output files
        (perf: no JSON parse), else from the full metadata (legacy entries too)."""
        if opened.version == 2:
            head, _ = split_entry_meta(opened.meta)
            if head.fingerprint != fp:
                raise IntegrityError(f"entry for {head.fingerprint} is stored under {fp}")
            if not head.outputs:
                return head, None
        meta = self._entry_meta(fp, opened)
        # A format-1 entry without outputs is kept as lean as a format-2 one (memory: the
        # components are re-read only if asked for, see Entry.meta).
        return _head_of(meta), meta if meta.outputs else None

    def _meta_of(self, fp: str, digest: str, task: str) -> EntryMeta:
        """The full metadata of an entry a lookup verified (for Entry.meta)."""
        got = self._read_entry(fp) if self._reader is not None else None
        if got is None or got[1].digest != digest:
            raise IntegrityError(
                f"cache entry {fp} of task '{task}' vanished or changed since lookup"
            )
        return got[0]

    def _entry_or_warn(self, fp: str) -> tuple[EntryMeta, Opened] | None:
        try:
            return self._read_entry(fp)
        except IntegrityError as exc:
            self._discard("entry", fp, str(exc))
            return None

    def _missing_blobs(self, meta: EntryMeta) -> list[str]:
        assert self._reader is not None
        return [o.digest for o in meta.outputs if not self._reader.contains(o.digest, _TAG_BLOB)]

    def _blob_problem(self, digest: str, raw: bytes) -> tuple[str | None, int]:
        """Why the blob envelope ``raw`` is bad (or None), and its payload offset."""
        try:
            opened = open_envelope(raw, kind=KIND_BLOB, name=digest, key=self._key)
        except IntegrityError as exc:
            return str(exc), 0
        if opened.meta or opened.digest != digest:
            return "content does not match its digest", 0
        return None, opened.payload_offset

    def _discard(self, kind: str, name: str, reason: str) -> None:
        removed = self._dc is not None
        if self._dc is not None:
            self._dc.delete(name)
        self._warn(
            f"cache {kind} {name} is unusable ({reason}); treated as a miss"
            + ("; removed" if removed else "")
        )

    def _load(self, fp: str, task: str, digest: str) -> object:
        raw = self._reader.read(fp) if self._reader is not None else None
        if self._closed and self._reader is not None:
            # A lazy product (RunResult.products) read after the run closed its cache: the
            # read reopened a connection, which must not be left to the garbage collector.
            self._reader.close()
        if raw is None:
            raise IntegrityError(
                f"cache entry {fp} of task '{task}' vanished before "
                "it was loaded (evicted or removed)"
            )
        try:
            opened = open_envelope(raw, kind=KIND_ENTRY, name=fp, key=self._key)
        except IntegrityError as exc:
            if self._dc is not None:
                self._dc.delete(fp)
            raise IntegrityError(f"cache entry {fp} of task '{task}': {exc}") from None
        if opened.digest != digest:
            raise IntegrityError(f"cache entry {fp} of task '{task}' changed since lookup")
        try:
            # Only verified bytes reach here: digest (and signature when keyed) checked above.
            return cloudpickle.loads(memoryview(raw)[opened.payload_offset :])
        except Exception as exc:
            raise CacheError(
                f"cannot unpickle the cached product of task '{task}' ({fp}): {exc!r}"
            ) from exc

    # ---- the run's interface

    def lookup(self, fingerprint: str) -> Entry | None:
        """The verified entry for ``fingerprint`` with all its output blobs, or None.

        A corrupt, truncated, unsigned (with a key set) or mis-signed entry is reported
        through ``on_warning``, removed (mode rw) and treated as a miss.
        """
        _check_name(fingerprint, "fingerprint")
        got: tuple[HitHead, EntryMeta | None, Opened] | None = None
        if self._reader is not None:
            try:
                found = self._reader.get(fingerprint)  # perf: bytes, not a stream, if it can
                if found is not None:
                    with contextlib.nullcontext() if isinstance(found, bytes) else found:
                        opened = open_envelope(
                            found, kind=KIND_ENTRY, name=fingerprint, key=self._key
                        )
                    got = (*self._hit_head(fingerprint, opened), opened)
            except IntegrityError as exc:
                self._discard("entry", fingerprint, str(exc))
        hit = got is not None and (got[1] is None or not self._missing_blobs(got[1]))
        self._outcomes[fingerprint] = hit
        if got is None or not hit:
            return None  # a missing blob was evicted: a plain miss, store() will replace it
        entry = Entry(self, got[0], got[2].digest, got[1])
        entry.fingerprint = fingerprint  # perf: the caller's string, not a second copy
        return entry

    def prime(self, fingerprints: Collection[str]) -> None:
        """Read the entries of ``fingerprints`` in one query; each next lookup() uses it.

        perf: the scheduler primes a ready wave before it decides it. A primed row serves
        one look-up only, and :meth:`unprime` drops the rest, so a later look-up (after a
        lock or a wait for another process) reads the database again.
        """
        if self._reader is not None and fingerprints:
            self._reader.prime(fingerprints)

    def prime_latest(self, tasks: Collection[str]) -> None:
        """Read the pointers of ``tasks`` in one query; each next latest() of one uses it.

        perf: the scheduler asks latest() for the reasons of every miss it starts, and
        primes a wave's misses at once. As with :meth:`prime`, a primed pointer serves one
        latest() only and :meth:`unprime` drops the rest.
        """
        if self._reader is not None and tasks:
            self._reader.prime([_pointer_key(task) for task in tasks])

    def unprime(self) -> None:
        if self._reader is not None:
            self._reader.unprime()

    def point(self, used: Mapping[str, str]) -> None:
        """Make each task's pointer name the entry it used this run, ``{task: fingerprint}``
        of the hits: the next miss's reasons then compare with the entry the task last
        matched, not with the newest one stored (a run that went back to an older option
        value hit an older entry). Only pointers that differ are written, in one
        transaction. Call it before :meth:`record_run`: perf: an entry the last completed
        run used already has its task's pointer (that run stored or pointed it), so a warm
        run that changed nothing reads no pointer and writes none (a concurrent run that
        moved one in between only shows in reasons, never in what hits). Best effort: a
        failure is reported through ``on_warning``."""
        if self._dc is None or self._reader is None or not used:
            return
        try:
            last = self.last_run()
        except CacheError:
            last = None
        done = last.used if last is not None else frozenset()
        wanted = {
            _pointer_key(task): fp.encode("ascii") for task, fp in used.items() if fp not in done
        }
        if not wanted:
            return
        try:
            current = self._reader.values(list(wanted))
            changed = {k: v for k, v in wanted.items() if current.get(k) != v}
            if changed:
                with self._dc.transact():
                    self._dc.set_small(changed, tag=_TAG_TASK, fresh=False)
        except (OSError, sqlite3.Error, diskcache.Timeout, CacheError) as exc:
            self._warn(f"could not record which entries this run used: {exc}")

    def store(
        self,
        meta: EntryMeta,
        payload: bytes,
        blobs: Mapping[str, bytes] | None = None,
        *,
        replace: bool = False,
    ) -> StoreResult:
        """Store an entry: its blobs first, then the envelope, atomically.

        ``payload`` is the cloudpickled product; ``blobs`` maps digests to the bytes of
        outputs not yet in the cache. An existing complete, valid entry is kept (the
        first one wins; the result says whether its product digest was the same) unless
        ``replace`` (``--force``, or an entry that could not be restored): then the new
        one replaces it (REPLACED). ``meta.size`` is set to ``len(payload)``. Records
        ``meta.task``'s newest fingerprint. I/O errors are reported through
        ``on_warning`` and give FAILED.
        """
        fps = {meta.fingerprint} if replace else set()
        return self.store_many([(meta, payload, blobs or {})], replace=fps)[0]

    def store_many(
        self,
        items: Sequence[tuple[EntryMeta, bytes, Mapping[str, bytes]]],
        *,
        replace: Collection[str] = (),
    ) -> list[StoreResult]:
        """:meth:`store` for several entries in one transaction (one commit, one cull check).

        perf: a commit and a size check per entry cost more than the rest of a cold run of
        no-op tasks; the scheduler stores what finished together as one batch. A failure
        fails the whole batch (nothing of it is stored), reported through ``on_warning``.
        """
        if self._dc is None:
            return [StoreResult.NOT_WRITABLE] * len(items)
        dc = self._dc
        sealed: list[tuple[EntryMeta, bytes, Mapping[str, bytes]]] = []
        for meta, payload, blobs in items:
            _check_name(meta.fingerprint, "fingerprint")
            for digest, data in blobs.items():
                if blob_digest(data) != digest:
                    raise UsageError(
                        f"blob given as {digest} for task '{meta.task}' has "
                        f"digest {blob_digest(data)}"
                    )
            for o in meta.outputs:
                if unsafe_path(o.path):
                    raise UsageError(
                        f"task '{meta.task}' output {o.path!r} is not a relative "
                        "path inside the project"
                    )
            if meta.size != len(payload):
                meta = dataclasses.replace(meta, size=len(payload))
            envelope = seal(
                KIND_ENTRY,
                meta.fingerprint,
                entry_head(_head_of(meta)) + meta_json(meta),
                payload,
                self._key,
                version=2,
            )
            sealed.append((meta, envelope, blobs))
            self._outcomes[meta.fingerprint] = False
        results: list[StoreResult] = []
        small = dc.small
        try:
            # perf: the existing entry is read inside the write transaction; that serialises
            # writers for as long as it takes, but makes check-then-set atomic across processes.
            # Blobs first and committed: the entries' check that their blobs are there reads
            # through our own (read-only) connection, which sees committed data only.
            if any(blobs for _, _, blobs in sealed):
                with dc.transact():
                    for _, _, blobs in sealed:
                        for digest, data in blobs.items():
                            self._write_blob(digest, data=data)
            with dc.transact():
                # perf: which entries are there already, in one query (no other writer can
                # commit while this transaction holds the write lock); those are read in
                # one more query and decided one by one (kept, replaced, repaired).
                present = dc.present([meta.fingerprint for meta, _, _ in sealed])
                new: dict[str, bytes] = {}  # small entries under fingerprints not there
                pointers: dict[str, bytes] = {}  # task -> its newest fingerprint (last wins)
                primed = bool(present)
                if primed:
                    self.prime(present)
                try:
                    for meta, envelope, _ in sealed:
                        fp = meta.fingerprint
                        if fp not in present and len(envelope) < small:
                            self._check_blobs(meta)
                            new[fp] = envelope  # the same fingerprint twice: the last wins
                            self._written += len(envelope)
                            results.append(StoreResult.STORED)
                        else:
                            new.pop(fp, None)  # a copy stored above: this one replaces it
                            results.append(self._store_one(dc, meta, envelope, fp in replace))
                            present.add(fp)  # written by set(): later copies update it
                        pointers[_pointer_key(meta.task)] = fp.encode("ascii")
                finally:
                    if primed:  # (else what the scheduler primed stays for its look-ups)
                        self.unprime()
                dc.set_small(new, tag=_TAG_ENTRY, fresh=True)
                dc.set_small(pointers, tag=_TAG_TASK, fresh=False)
            self._cull(keep=_batch_keys(sealed))
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            tasks = ", ".join(sorted({m.task for m, _, _ in sealed}))
            self._warn(f"could not store the results of {tasks}: {exc}")
            return [StoreResult.FAILED] * len(items)
        return results

    def _check_blobs(self, meta: EntryMeta) -> None:
        missing = self._missing_blobs(meta) if meta.outputs else []
        if missing:
            raise UsageError(
                f"task '{meta.task}' output blob {missing[0]} is neither given nor in the cache"
            )

    def _store_one(
        self, dc: diskcache.Cache, meta: EntryMeta, envelope: bytes, replace: bool
    ) -> StoreResult:
        fp = meta.fingerprint
        self._check_blobs(meta)
        result = StoreResult.STORED
        try:
            existing = self._read_entry(fp)
        except IntegrityError as exc:
            self._warn(f"cache entry {fp} was unusable ({exc}); replaced")
            existing = None
        if existing is not None and replace:
            dc.set(fp, envelope, tag=_TAG_ENTRY)
            self._written += len(envelope)
            result = StoreResult.REPLACED
        elif existing is not None and not self._missing_blobs(existing[0]):
            same = existing[0].product_digest == meta.product_digest
            result = StoreResult.KEPT_SAME if same else StoreResult.KEPT_DIFFERENT
        else:
            dc.set(fp, envelope, tag=_TAG_ENTRY)
            self._written += len(envelope)
        return result

    def _write_blob(self, digest: str, *, data: bytes = b"", envelope: bytes = b"") -> None:
        """Write a blob (its bytes or its envelope) unless a valid one is there (dedup)."""
        assert self._dc is not None and self._reader is not None
        if self._reader.contains(digest, _TAG_BLOB) and self._verify_blob(digest) is None:
            return
        envelope = envelope or seal(KIND_BLOB, digest, b"", data, self._key)
        self._dc.set(digest, envelope, tag=_TAG_BLOB)
        self._written += len(envelope)

    def _cull(self, keep: Collection[str] = ()) -> None:
        """Evict the least recently stored entries and blobs while the cache is over its
        size limit, never those in ``keep`` (what was just stored); say what went.

        diskcache's own culling is off (cull_limit=0): it asked for the volume on every
        set(), and it deletes ten rows at a time of any kind, so a cache of a few large
        entries lost all of them, the one just stored and the tasks' pointers included.
        perf: nothing was written since the last look, nothing to ask; else three cheap
        statements.
        """
        assert self._dc is not None and self._reader is not None
        if self._volume is not None and not self._written:
            return
        self._volume = self._reader.volume()
        self._written = 0
        if self._volume <= self._size_limit:
            return
        counts = {_TAG_ENTRY: 0, _TAG_BLOB: 0}
        freed = 0

        def evict(key: str, tag: str, size: int) -> None:
            nonlocal freed
            assert self._dc is not None
            self._dc.delete(key)
            counts[tag] += 1
            freed += size

        # Entries first, each with its output files (an output shared with a newer entry
        # goes too: that entry then misses once and is stored again). Then, if that was
        # not enough (output files without an entry), the oldest output files.
        for key, _, size in self._reader.oldest([_TAG_ENTRY]):
            if self._volume - freed <= self._size_limit:
                break
            if key in keep:
                continue
            got = self._entry_or_warn(key)
            evict(key, _TAG_ENTRY, size)
            for o in got[0].outputs if got is not None else ():
                if o.digest not in keep and self._reader.contains(o.digest, _TAG_BLOB):
                    evict(o.digest, _TAG_BLOB, o.size)
        if self._volume - freed > self._size_limit:
            for key, _, size in self._reader.oldest([_TAG_BLOB]):
                if self._volume - freed <= self._size_limit:
                    break
                if key not in keep:
                    evict(key, _TAG_BLOB, size)
        before, self._volume = self._volume, self._reader.volume()
        if counts[_TAG_ENTRY] or counts[_TAG_BLOB]:
            blobs = counts[_TAG_BLOB]
            self._warn(
                f"the cache is over its size limit ({human_size(self._size_limit)}): evicted"
                f" {_count(counts[_TAG_ENTRY], 'entry', 'entries')}"
                + (f" and {_count(blobs, 'output file', 'output files')}" if blobs else "")
                + f", the least recently stored ({human_size(max(0, before - self._volume))});"
                " raise cache-size in [tool.taskrun] to keep more"
            )
        if self._volume > self._size_limit:
            self._warn(
                f"the results just stored ({human_size(self._volume)} in all) are larger than"
                f" the cache size limit ({human_size(self._size_limit)}); they are kept until"
                " the next results are stored; raise cache-size in [tool.taskrun]"
            )

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` content-addressed (once) and return its digest."""
        self._writable("store a blob")
        digest = blob_digest(data)
        self._write_blob(digest, data=data)
        self._cull(keep={digest})
        return digest

    def get_blob(self, digest: str) -> bytes | None:
        """The verified bytes of a blob; None when absent or bad (bad ones are reported)."""
        _check_name(digest, "blob digest")
        if self._reader is None:
            return None
        try:
            raw = self._reader.read(digest)
        except IntegrityError as exc:
            self._discard("blob", digest, str(exc))
            return None
        if raw is None:
            return None
        problem, offset = self._blob_problem(digest, raw)
        if problem is not None:
            self._discard("blob", digest, problem)
            return None
        return raw[offset:]

    def has_blob(self, digest: str) -> bool:
        """True when a blob with this digest is stored (not verified)."""
        _check_name(digest, "blob digest")
        return self._reader is not None and self._reader.contains(digest, _TAG_BLOB)

    def has_entry(self, fingerprint: str) -> bool:
        """True when an entry is stored under ``fingerprint`` (not verified; for the remote)."""
        _check_name(fingerprint, "fingerprint")
        return self._reader is not None and self._reader.contains(fingerprint, _TAG_ENTRY)

    def blob_names(self) -> list[str]:
        """The digests of every stored blob (not verified)."""
        return [d for d in self._reader.keys(_TAG_BLOB) if is_digest(d)] if self._reader else []

    def latest(self, task: str) -> EntryMeta | None:
        """The verified entry ``task`` last used, or None: the one last stored for it, or
        hit since (a run records its hits' entries, :meth:`point`); for ``explain`` and
        the reasons of a miss.

        After gc it is the task's newest remaining entry; if diskcache evicted it, None.
        """
        if self._reader is None:
            return None
        # perf: one pointer read, never a scan; the scheduler asks this on every store.
        pointer = self._reader.read(_pointer_key(task))
        fp = pointer.decode("ascii", "replace") if pointer is not None else ""
        if not is_digest(fp):
            return None
        got = self._entry_or_warn(fp)
        return got[0] if got is not None and got[0].task == task else None

    @contextlib.contextmanager
    def lock(self, fingerprint: str) -> Iterator[None]:
        """Hold the per-fingerprint lock, waiting for it. A no-op unless mode is rw.

        flock is released by the kernel when its holder dies, so a killed process never
        blocks the next one.
        """
        held = self._acquire(fingerprint, blocking=True)
        assert held is not None
        with held:
            yield

    def try_lock(self, fingerprint: str) -> HeldLock | None:
        """Take the per-fingerprint lock if it is free, else None (mode rw; else a no-op lock).

        The caller must ``release()`` it (or use it as a context manager).
        """
        return self._acquire(fingerprint, blocking=False)

    def wait_lock(self, fingerprint: str) -> concurrent.futures.Future[HeldLock]:
        """The per-fingerprint lock, once free, from a thread that blocks for it (no polling).

        See :meth:`FingerprintLocks.wait`; :func:`taskrun.locks.abandon` gives it up.
        """
        _check_name(fingerprint, "fingerprint")
        if self._dc is None:
            done: concurrent.futures.Future[HeldLock] = concurrent.futures.Future()
            done.set_result(HeldLock(fingerprint, None))
            return done
        if self._locks is None:
            self._locks = FingerprintLocks(self._directory / "locks")
        return self._locks.wait(fingerprint)

    def _acquire(self, fingerprint: str, *, blocking: bool) -> HeldLock | None:
        _check_name(fingerprint, "fingerprint")
        if self._dc is None:
            return HeldLock(fingerprint, None)
        if self._locks is None:
            self._locks = FingerprintLocks(self._directory / "locks")
        return self._locks.acquire(fingerprint, blocking=blocking)

    def record_run(
        self,
        used: Iterable[str],
        *,
        hits: int | None = None,
        misses: int | None = None,
        completed: bool = True,
    ) -> None:
        """Record the fingerprints a completed run used (hits and stores) in ``last-run.json``.

        ``hits``/``misses`` default to what this object's lookups and stores saw for those
        fingerprints. A run that did not complete (interrupted, crashed) records nothing:
        ``last-run.json`` keeps describing the last completed run, which is what ``gc
        --keep-last-run`` and ``export`` rely on. Does nothing unless mode is rw; a write
        that fails (a full disk) is reported through ``on_warning``, never raised.
        """
        if self._dc is None or not completed:
            return
        names = sorted(set(used))
        for fp in names:
            _check_name(fp, "fingerprint")
        if hits is None:
            hits = sum(1 for fp in names if self._outcomes.get(fp))
        if misses is None:
            misses = len(names) - hits
        data = {
            "format": 1,
            "recorded": time.time(),
            "used": names,
            "hits": hits,
            "misses": misses,
            "completed": True,
        }
        try:
            # Durable: gc --keep-last-run trusts it. A cache directory shared by a team
            # (group-writable, setgid) must stay readable by the others: its bits.
            path = self._directory / _LAST_RUN
            atomic_write(
                path,
                json.dumps(data, indent=1).encode(),
                durable=True,
                mode=shared_mode(path.parent),
            )
        except OSError as exc:
            self._warn(f"could not record this run in {self._directory / _LAST_RUN}: {exc}")

    def last_run(self) -> LastRun | None:
        """What ``last-run.json`` records, or None; CacheError when it is unreadable."""
        path = self._directory / _LAST_RUN
        if self._mode == "off" or not path.is_file():
            return None
        try:
            data = json.loads(path.read_bytes())
            used = frozenset(data["used"])
            if data.get("completed", True) is not True:
                raise ValueError("it records a run that did not complete")
            if not all(is_digest(fp) for fp in used):
                raise ValueError("a used fingerprint is not 32 hex digits")
            return LastRun(used, int(data["hits"]), int(data["misses"]), float(data["recorded"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{path} is unreadable ({exc}); run again to rewrite it") from exc

    # ---- maintenance

    def info(self) -> CacheInfo:
        """Counts, size and the last run's hits and misses."""
        reader = self._reader
        try:
            last = self.last_run()
        except CacheError:
            last = None
        orphans = self._orphans() if reader else {}
        return CacheInfo(
            directory=self._directory,
            mode=self._mode,
            signed=self.signed,
            entries=reader.count(_TAG_ENTRY) if reader else 0,
            blobs=reader.count(_TAG_BLOB) if reader else 0,
            size_bytes=reader.volume() if reader else 0,
            size_limit=self._size_limit,
            last_run_hits=last.hits if last else None,
            last_run_misses=last.misses if last else None,
            orphan_files=len(orphans),
            orphan_bytes=sum(orphans.values()),
        )

    def entries(self) -> Iterator[EntryMeta]:
        """Every verified entry's meta (bad ones are reported and, in rw, removed)."""
        if self._reader is None:
            return
        for fp in self._reader.keys(_TAG_ENTRY):
            if is_digest(fp):
                got = self._entry_or_warn(fp)
                if got is not None:
                    yield got[0]

    def gc(
        self,
        *,
        max_size: int | None = None,
        max_age: float | None = None,
        keep_last_run: bool = False,
    ) -> GcReport:
        """Remove entries, then blobs no entry references, dangling pointers, free locks.

        An entry is removed if any given criterion says so: ``keep_last_run`` keeps only
        the entries named in ``last-run.json``; ``max_age`` (seconds) removes entries
        created longer ago; then ``max_size`` (bytes) removes the oldest until the cache
        is no larger. Bad entries are removed too (and reported).
        """
        if self._read_only_reason != _FULL:
            self._writable("collect garbage")  # read/off mode, read-only: say so first
        assert self._reader is not None
        before = self._reader.volume()
        metas = {m.fingerprint: m for m in self.entries()}
        doomed: set[str] = set()
        if keep_last_run:
            last = self.last_run()
            if last is None:
                raise UsageError(
                    f"no completed run is recorded in {self._directory}; "
                    "--keep-last-run would remove everything"
                )
            doomed |= metas.keys() - last.used
        if max_age is not None:
            cutoff = time.time() - max_age
            doomed |= {fp for fp, m in metas.items() if m.created < cutoff}

        def free_first() -> list[str]:
            # On a full disk: the value files of what goes anyway, before the database
            # is opened for writing.
            assert self._reader is not None
            wanted = {o.digest for fp, m in metas.items() if fp not in doomed for o in m.outputs}
            keys = [*doomed, *(d for d in self._reader.keys(_TAG_BLOB) if d not in wanted)]
            names = [self._reader.value_file(k) for k in keys]
            return [*self._orphans(), *(n for n in names if n is not None)]

        found = self._orphans()  # counted before: on a full disk free_first removes them
        try:
            dc = self._writable("collect garbage", free_first)
        except CacheError:
            if self._read_only_reason != _FULL:
                raise
            # Still no room for the database: what free_first unlinked is all gc can do.
            # Those entries now miss (their files are gone); the next gc with room
            # removes their rows.
            self._warn(
                "the disk is still full: removed value files only; the index "
                "will be tidied by the next gc"
            )
            left = self._orphans()
            return GcReport(
                removed=tuple(sorted(doomed)),
                removed_blobs=0,
                kept=len(metas) - len(doomed),
                freed_bytes=sum(size for name, size in found.items() if name not in left),
                removed_orphans=sum(1 for name in found if name not in left),
            )
        self._sweep_orphans()
        imports, import_bytes = self._sweep_imports()
        left = self._orphans()
        orphans = sum(1 for name in found if name not in left)
        orphan_bytes = sum(size for name, size in found.items() if name not in left)
        orphan_bytes += import_bytes
        for fp in doomed:
            dc.delete(fp)
            del metas[fp]
        removed_blobs = self._sweep_blobs(metas.values())
        if max_size is not None:
            # perf: one entry at a time, re-measuring; gc is rare and volume() is one query.
            for meta in sorted(metas.values(), key=lambda m: (m.created, m.fingerprint)):
                if self._reader.volume() <= max_size:
                    break
                dc.delete(meta.fingerprint)
                del metas[meta.fingerprint]
                doomed.add(meta.fingerprint)
                removed_blobs += self._sweep_blobs(metas.values())
        self._sweep_pointers(metas)
        self._sweep_locks()
        return GcReport(
            removed=tuple(sorted(doomed)),
            removed_blobs=removed_blobs,
            kept=len(metas),
            freed_bytes=max(0, before - self._reader.volume()) + orphan_bytes,
            removed_orphans=orphans,
            removed_imports=imports,
        )

    def _sweep_blobs(self, keep: Iterable[EntryMeta]) -> int:
        assert self._dc is not None and self._reader is not None
        wanted = {o.digest for m in keep for o in m.outputs}
        # A run storing right now writes its blobs before its entry; gc then may remove
        # them and cost that entry a miss later, never a wrong hit.
        orphans = [d for d in self._reader.keys(_TAG_BLOB) if d not in wanted]
        for digest in orphans:
            self._dc.delete(digest)
        return len(orphans)

    def _sweep_pointers(self, metas: Mapping[str, EntryMeta]) -> None:
        """Re-point each task whose latest entry is gone at its newest remaining one."""
        assert self._dc is not None and self._reader is not None
        newest = _newest_by_task(metas.values())
        for key in self._reader.keys(_TAG_TASK):
            raw = self._reader.read(key)
            if raw is not None and raw.decode("ascii", "replace") in metas:
                continue
            task = key.removeprefix("task:")
            if task in newest:
                self._dc.set(key, newest[task].fingerprint.encode("ascii"), tag=_TAG_TASK)
            else:
                self._dc.delete(key)

    def _sweep_locks(self) -> None:
        sweep_lock_files(self._directory / "locks")

    def clear(self, task: str | None = None) -> int:
        """Remove every entry (or ``task``'s), orphaned blobs too; return how many entries.

        Works on a full disk: the value files go first (making room for the database),
        and when even the database cannot be written and no other process has the cache
        open, the database itself is removed and made anew (it was to be emptied anyway).
        """
        if task is None and self._read_only_reason == _FULL:
            assert self._reader is not None
            count = self._reader.count(_TAG_ENTRY)
            try:
                dc = self._writable("clear it", lambda: value_files_on_disk(self._directory))
            except CacheError:
                if not self._recreate_database():
                    raise
                if self._dc is None:
                    # The database is gone and even a new one does not fit yet: the cache
                    # is empty, which is what was asked; the next writer creates it anew.
                    with contextlib.suppress(FileNotFoundError):
                        (self._directory / _LAST_RUN).unlink()
                    return count
                dc = self._dc
        else:
            dc = self._writable("clear it")
            assert self._reader is not None
            count = self._reader.count(_TAG_ENTRY) if task is None else 0
        assert self._reader is not None
        if task is None:
            dc.clear()
            with contextlib.suppress(FileNotFoundError):
                (self._directory / _LAST_RUN).unlink()
            self._sweep_orphans()
            self._sweep_locks()
            return count
        metas = {m.fingerprint: m for m in self.entries()}
        gone = [fp for fp, m in metas.items() if m.task == task]
        for fp in gone:
            dc.delete(fp)
            del metas[fp]
        dc.delete(_pointer_key(task))
        self._sweep_blobs(metas.values())
        return len(gone)

    def verify(self) -> VerifyReport:
        """Check every entry's and blob's digest and signature; remove bad ones (rw)."""
        if self._reader is None:
            return VerifyReport(0, 0, (), removed=False)
        problems: list[VerifyProblem] = []
        entry_keys = self._reader.keys(_TAG_ENTRY)
        blob_keys = self._reader.keys(_TAG_BLOB)
        for digest in blob_keys:
            problem = self._verify_blob(digest)
            if problem is not None:
                problems.append(VerifyProblem("blob", digest, problem))
        bad_blobs = {p.name for p in problems}
        for fp in entry_keys:
            try:
                got = self._read_entry(fp)
            except IntegrityError as exc:
                problems.append(VerifyProblem("entry", fp, str(exc)))
                continue
            if got is None:
                if self._reader.contains(fp, _TAG_ENTRY):
                    problems.append(VerifyProblem("entry", fp, "its value file is missing"))
                continue
            lost = self._missing_blobs(got[0]) + [
                o.digest for o in got[0].outputs if o.digest in bad_blobs
            ]
            if lost:
                problems.append(
                    VerifyProblem("entry", fp, f"output blob {lost[0]} is missing or bad")
                )
        if self._dc is not None:
            for p in problems:
                self._dc.delete(p.name)
        return VerifyReport(
            len(entry_keys),
            len(blob_keys),
            tuple(problems),
            removed=self._dc is not None and bool(problems),
        )

    def _verify_blob(self, digest: str) -> str | None:
        """What is wrong with the stored blob ``digest`` (streamed, never read whole)."""
        assert self._reader is not None
        try:
            stream = self._reader.open(digest)
            if stream is None:
                if self._reader.contains(digest, _TAG_BLOB):
                    return "its value file is missing"
                return None  # removed since it was listed
            with stream:
                opened = open_envelope(stream, kind=KIND_BLOB, name=digest, key=self._key)
        except IntegrityError as exc:
            return str(exc)
        if opened.meta or opened.digest != digest:
            return "content does not match its digest"
        return None

    # ---- raw envelopes, for archives

    def read_entry_envelope(self, fingerprint: str) -> tuple[EntryMeta, bytes] | None:
        """An entry's verified meta and raw envelope bytes; None when absent or bad."""
        _check_name(fingerprint, "fingerprint")
        if self._reader is None:
            return None
        try:
            raw = self._reader.read(fingerprint)
            if raw is None:
                return None
            return self.check_entry_envelope(fingerprint, raw), raw
        except IntegrityError as exc:
            self._discard("entry", fingerprint, str(exc))
            return None

    def read_blob_envelope(self, digest: str) -> bytes | None:
        """A blob's verified raw envelope bytes; None when absent or bad."""
        _check_name(digest, "blob digest")
        if self._reader is None:
            return None
        try:
            raw = self._reader.read(digest)
            if raw is not None:
                self.check_blob_envelope(digest, raw)
            return raw
        except IntegrityError as exc:
            self._discard("blob", digest, str(exc))
            return None

    def check_entry_envelope(self, fingerprint: str, raw: bytes | pathlib.Path) -> EntryMeta:
        """Verify an entry envelope (bytes, or a file streamed) as this cache would.

        Returns the meta or raises IntegrityError.
        """
        with _stream(raw) as stream:
            opened = open_envelope(stream, kind=KIND_ENTRY, name=fingerprint, key=self._key)
        return self._entry_meta(fingerprint, opened)

    def check_blob_envelope(self, digest: str, raw: bytes | pathlib.Path) -> None:
        """Verify a blob envelope (bytes, or a file streamed); raise IntegrityError if bad."""
        with _stream(raw) as stream:
            opened = open_envelope(stream, kind=KIND_BLOB, name=digest, key=self._key)
        if opened.meta or opened.digest != digest:
            raise IntegrityError("content does not match its digest")

    def adopt(
        self,
        entries: Mapping[str, bytes | pathlib.Path],
        blobs: Mapping[str, bytes | pathlib.Path],
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Write raw envelopes from elsewhere: all verified first, entries in one transaction.

        Each envelope is given as bytes or as the path of a file holding it (archive
        import: streamed, never held in memory whole). Returns (taken, present): entries
        written, and entries kept because a complete valid one was already here. Raises
        IntegrityError (writing nothing) if any envelope fails or an entry's blob is
        neither given nor present.
        """
        dc = self._writable("import into it")
        assert self._reader is not None
        for digest, raw in blobs.items():
            self.check_blob_envelope(digest, raw)
        metas = {fp: self.check_entry_envelope(fp, raw) for fp, raw in entries.items()}
        for meta in metas.values():
            for o in meta.outputs:
                if o.digest not in blobs and not self._reader.contains(o.digest, _TAG_BLOB):
                    raise IntegrityError(
                        f"entry {meta.fingerprint} needs blob {o.digest}, "
                        "which is neither given nor in the cache"
                    )
        for digest, raw in blobs.items():
            if isinstance(raw, pathlib.Path):
                if not (
                    self._reader.contains(digest, _TAG_BLOB) and self._verify_blob(digest) is None
                ):
                    with raw.open("rb") as f:
                        dc.set(digest, f, read=True, tag=_TAG_BLOB)
            else:
                self._write_blob(digest, envelope=raw)
        taken: list[str] = []
        present: list[str] = []
        with dc.transact():
            for fp in sorted(metas):
                try:
                    existing = self._read_entry(fp)
                except IntegrityError:
                    existing = None
                if existing is not None and not self._missing_blobs(existing[0]):
                    present.append(fp)
                    continue
                raw = entries[fp]
                if isinstance(raw, pathlib.Path):
                    with raw.open("rb") as f:
                        dc.set(fp, f, read=True, tag=_TAG_ENTRY)
                else:
                    dc.set(fp, raw, tag=_TAG_ENTRY)
                taken.append(fp)
            for task, m in _newest_by_task(metas[fp] for fp in taken).items():
                current = self.latest(task)
                if current is None or current.created <= m.created:
                    dc.set(_pointer_key(task), m.fingerprint.encode("ascii"), tag=_TAG_TASK)
        self._written += 1  # whatever was adopted: look at the volume (_cull)
        self._cull(keep={*taken, *(o.digest for fp in taken for o in metas[fp].outputs)})
        return tuple(taken), tuple(present)
