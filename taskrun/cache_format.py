"""The cache's on-disk format: envelopes, and reading diskcache without unpickling.

Every entry and blob the cache stores is an envelope::

    offset size
    0      4    magic b"TRC1", or b"TRC2" for an entry whose meta starts with a hit head
    4      1    kind: b"E" entry, b"B" blob
    5      1    flags: bit 0 = signed
    6      1    reserved (0)
    7      4    meta length, big-endian
    11     8    payload length
    19     16   xxh3-128 of meta + payload
    35     32   HMAC-SHA256, only when signed
    ...         meta JSON (empty for blobs), then the payload

The HMAC covers a length-prefixed encoding of the kind, the name (the diskcache key the
envelope is stored under), the meta and the payload, so an envelope cannot be replayed
under another name. :func:`open_envelope` checks lengths, digest and signature, streaming,
before anyone parses the meta, let alone unpickles the payload; with a key set, an
unsigned envelope is refused. A blob's meta is empty, so its envelope digest is the
digest of its bytes: its content address (:func:`blob_digest`).

Format 2 (``TRC2``, entries only) puts what a cache hit reads before the meta JSON, in a
fixed binary *hit head* (:func:`entry_head`): the fingerprint, the compute time, the
number of output files, the task name and the product digest. A hit on an entry without
output files reads that and never parses the JSON. Entries in format 1 (``TRC1``, meta
JSON only, as earlier versions wrote them) are still read, the old way; blobs stay
``TRC1``.

:class:`StoreReader` reads values straight from diskcache's SQLite database, read-only,
because ``diskcache.Cache.get`` unpickles rows stored in its pickle mode (and a cache
directory restored from elsewhere could carry one), and because diskcache's constructor
writes to the database, which mode ``read`` must never do.

:func:`audit_store` checks a cache directory before diskcache opens it for writing.
diskcache trusts its database: it runs ``PRAGMA`` statements named in its Settings table,
deletes the files its rows name, and SQLite runs whatever triggers the schema holds. A
cache directory restored from elsewhere (a CI cache that untrusted jobs could write) must
therefore look exactly like one diskcache made before it is opened read-write; the
envelopes protect the values, this protects the machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import os
import pathlib
import re
import sqlite3
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import IO, Any, Final

import diskcache
import xxhash

from taskrun.errors import CacheError, IntegrityError

__all__ = [
    "KIND_BLOB",
    "KIND_ENTRY",
    "HitHead",
    "Opened",
    "StoreReader",
    "audit_store",
    "blob_digest",
    "entry_head",
    "is_digest",
    "open_envelope",
    "seal",
    "split_entry_meta",
]

KIND_ENTRY: Final = b"E"
KIND_BLOB: Final = b"B"
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_MAGIC = b"TRC1"
_MAGIC_V2 = b"TRC2"  # entries with a hit head before their meta JSON
_MAGICS = {_MAGIC: 1, _MAGIC_V2: 2}
# The hit head: fingerprint (16 raw bytes), compute time, output count, then the task
# name and the product digest, each as a big-endian u16 length and UTF-8.
_HIT_HEAD = struct.Struct(">16sdI")
_HIT_TEXT = struct.Struct(">H")
_FLAG_SIGNED = 0x01
_HEADER = struct.Struct(">4scBxIQ16s")
_SIG_LEN = 32
_SIG_DOMAIN = b"taskrun-cache-envelope\x00"
_MAX_META = 64 * 2**20  # a header claiming more is corrupt, not a reason to allocate it
_CHUNK = 2**20
_NOT_PRIMED: Final = object()
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val\Z")


def blob_digest(data: bytes) -> str:
    """The content address of a blob: xxh3-128 of its bytes, in hex."""
    return xxhash.xxh3_128_hexdigest(data)


def is_digest(name: object) -> bool:
    """True for 32 lowercase hex digits: a fingerprint or a blob digest."""
    return isinstance(name, str) and _HEX32.match(name) is not None


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: its meta bytes, digest, and where its payload starts."""

    meta: bytes
    digest: str  # hex of the envelope's xxh3-128
    payload_offset: int
    size: int
    version: int = 1  # 2: an entry whose meta starts with a hit head (entry_head)


@dataclass(frozen=True, slots=True)
class HitHead:
    """What a cache hit needs of an entry, read without parsing its meta JSON."""

    fingerprint: str
    compute_time: float
    outputs: int  # how many output files the entry restores
    task: str
    product_digest: str


def entry_head(head: HitHead) -> bytes:
    """The binary hit head that starts a format-2 entry's meta (before its JSON)."""
    task = head.task.encode("utf-8")
    digest = head.product_digest.encode("utf-8")
    return b"".join(
        (
            _HIT_HEAD.pack(bytes.fromhex(head.fingerprint), head.compute_time, head.outputs),
            _HIT_TEXT.pack(len(task)),
            task,
            _HIT_TEXT.pack(len(digest)),
            digest,
        )
    )


def split_entry_meta(meta: bytes) -> tuple[HitHead, bytes]:
    """A format-2 entry meta's hit head and the JSON after it; IntegrityError if bad."""
    try:
        fp, compute_time, outputs = _HIT_HEAD.unpack_from(meta)
        at = _HIT_HEAD.size
        texts = []
        for _ in range(2):
            (n,) = _HIT_TEXT.unpack_from(meta, at)
            at += _HIT_TEXT.size
            if at + n > len(meta):
                raise ValueError("a text runs past the meta")
            texts.append(meta[at : at + n].decode("utf-8"))
            at += n
    except (struct.error, ValueError) as exc:
        raise IntegrityError(f"entry hit head is malformed ({exc})") from None
    # perf: task names are interned (the registry's are too): 20,000 hits share them.
    head = HitHead(fp.hex(), compute_time, outputs, sys.intern(texts[0]), texts[1])
    return head, meta[at:]


def _signer(key: bytes, kind: bytes, name: str, meta: bytes, payload_len: int) -> hmac.HMAC:
    encoded = name.encode("utf-8")
    signer = hmac.new(key, digestmod=hashlib.sha256)
    # Length-prefixed, so no two (name, meta, payload) splits sign the same bytes.
    signer.update(_SIG_DOMAIN + kind + struct.pack(">I", len(encoded)) + encoded)
    signer.update(struct.pack(">I", len(meta)) + meta + struct.pack(">Q", payload_len))
    return signer


def seal(
    kind: bytes, name: str, meta: bytes, payload: bytes, key: bytes | None, *, version: int = 1
) -> bytes:
    """The envelope of ``meta`` and ``payload`` stored under ``name``, signed if ``key``.

    ``version=2`` (entries only) marks ``meta`` as starting with a hit head.
    """
    digest = xxhash.xxh3_128(meta)
    digest.update(payload)
    flags, sig = 0, b""
    if key is not None:
        signer = _signer(key, kind, name, meta, len(payload))
        signer.update(payload)
        flags, sig = _FLAG_SIGNED, signer.digest()
    magic = _MAGIC_V2 if version == 2 and kind == KIND_ENTRY else _MAGIC
    header = _HEADER.pack(magic, kind, flags, len(meta), len(payload), digest.digest())
    return b"".join((header, sig, meta, payload))


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise IntegrityError(f"truncated ({what} is cut short)")
    return data


def open_envelope(
    source: IO[bytes] | bytes, *, kind: bytes, name: str, key: bytes | None
) -> Opened:
    """Check an envelope (a stream, or its bytes); raise IntegrityError saying what is wrong."""
    if isinstance(source, bytes):
        return _open_bytes(source, kind=kind, name=name, key=key)
    version, signed, meta_len, payload_len, digest = _check_header(
        _read_exact(source, _HEADER.size, "header"), kind, key
    )
    sig = _read_exact(source, _SIG_LEN, "signature") if signed else b""
    _check_meta_len(meta_len)
    meta = _read_exact(source, meta_len, "metadata")
    hasher = xxhash.xxh3_128(meta)
    signer = _signer(key, kind, name, meta, payload_len) if key is not None else None
    remaining = payload_len
    while remaining:
        chunk = source.read(min(remaining, _CHUNK))
        if not chunk:
            raise IntegrityError(f"truncated ({remaining} of {payload_len} payload bytes missing)")
        hasher.update(chunk)
        if signer is not None:
            signer.update(chunk)
        remaining -= len(chunk)
    if source.read(1):
        raise IntegrityError("trailing bytes after the payload")
    return _verified(meta, hasher.digest(), digest, signer, sig, payload_len, version)


def _open_bytes(raw: bytes, *, kind: bytes, name: str, key: bytes | None) -> Opened:
    """:func:`open_envelope` of bytes at hand: the same checks and messages, one hash over
    the meta and payload in place (perf: a warm run opens one envelope per task)."""
    if len(raw) < _HEADER.size:
        raise IntegrityError("truncated (header is cut short)")
    version, signed, meta_len, payload_len, digest = _check_header(raw, kind, key)
    at = _HEADER.size
    sig = b""
    if signed:
        sig = raw[at : at + _SIG_LEN]
        if len(sig) != _SIG_LEN:
            raise IntegrityError("truncated (signature is cut short)")
        at += _SIG_LEN
    _check_meta_len(meta_len)
    meta = raw[at : at + meta_len]
    if len(meta) != meta_len:
        raise IntegrityError("truncated (metadata is cut short)")
    available = len(raw) - at - meta_len
    if available < payload_len:
        missing = payload_len - available
        raise IntegrityError(f"truncated ({missing} of {payload_len} payload bytes missing)")
    if available > payload_len:
        raise IntegrityError("trailing bytes after the payload")
    signer = None
    if key is not None:
        signer = _signer(key, kind, name, meta, payload_len)
        signer.update(memoryview(raw)[at + meta_len :])
    # The digest covers the meta and then the payload: one pass over both, as they lie.
    got = xxhash.xxh3_128_digest(memoryview(raw)[at:])
    return _verified(meta, got, digest, signer, sig, payload_len, version)


def _check_header(head: bytes, kind: bytes, key: bytes | None) -> tuple[int, bool, int, int, bytes]:
    """(version, signed, meta length, payload length, digest) of a valid envelope header."""
    magic, got_kind, flags, meta_len, payload_len, digest = _HEADER.unpack_from(head)
    version = _MAGICS.get(magic)
    if version is None:
        raise IntegrityError("not a taskrun cache envelope (bad magic)")
    if got_kind != kind:
        raise IntegrityError(f"wrong kind {got_kind!r}, expected {kind!r}")
    if version == 2 and kind != KIND_ENTRY:
        raise IntegrityError(f"format 2 is for entries, not kind {kind!r}")
    if flags & ~_FLAG_SIGNED:
        raise IntegrityError(f"unknown flags {flags:#x}")
    signed = bool(flags & _FLAG_SIGNED)
    if key is not None and not signed:
        raise IntegrityError("unsigned, but a signing key is set")
    return version, signed, meta_len, payload_len, digest


def _check_meta_len(meta_len: int) -> None:
    if meta_len > _MAX_META:
        raise IntegrityError(f"implausible metadata length {meta_len}")


def _verified(
    meta: bytes,
    got: bytes,
    digest: bytes,
    signer: hmac.HMAC | None,
    sig: bytes,
    payload_len: int,
    version: int,
) -> Opened:
    if not hmac.compare_digest(got, digest):
        raise IntegrityError("digest mismatch (corrupt)")
    if signer is not None and not hmac.compare_digest(signer.digest(), sig):
        raise IntegrityError("bad signature (signed with another key, or tampered with)")
    offset = _HEADER.size + len(sig) + len(meta)
    return Opened(meta, digest.hex(), offset, offset + payload_len, version)


# --------------------------------------------------------------------------- reading


class StoreReader:
    """Read-only access to a diskcache database, without ever unpickling anything."""

    def __init__(self, directory: pathlib.Path, *, live: bool) -> None:
        self._directory = directory
        self._db = directory / "cache.db"
        self._live = live
        self._conn: sqlite3.Connection | None = None
        self._immutable = False
        self._lock = threading.Lock()
        # Rows read ahead by prime(), each used by the next open() of its key only.
        self._primed: dict[str, Any] = {}

    def _connect(self, *, immutable: bool) -> sqlite3.Connection:
        flag = "mode=ro&immutable=1" if immutable else "mode=ro"
        return sqlite3.connect(
            f"{self._db.as_uri()}?{flag}",
            uri=True,
            timeout=60,
            isolation_level=None,
            check_same_thread=False,
        )

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            if self._conn is None:
                if not self._db.is_file():
                    return []
                wal = self._db.with_name(self._db.name + "-wal")
                # A read-only connection to a WAL database rewrites -shm (and creates -wal
                # and -shm when they are missing); `immutable` touches nothing, at the price
                # of not seeing a writer that starts later (only when no writer has the
                # database open now: then there is no -wal).
                immutable = not self._live and not wal.exists()
                self._conn = self._connect(immutable=immutable)
                self._immutable = immutable
            for attempt in (1, 2):
                try:
                    return self._conn.execute(sql, args).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        return []
                    error: sqlite3.Error = exc
                except sqlite3.DatabaseError as exc:
                    error = exc
                if attempt == 1 and self._immutable:
                    # A writer arrived and changed the file under our immutable view: look
                    # again the ordinary way (which may then touch -shm; a writer is there).
                    self._conn.close()
                    self._conn = self._connect(immutable=False)
                    self._immutable = False
                    continue
                if attempt == 1 and not self._live and "disk I/O error" in str(error):
                    # A read-only connection to a WAL database needs room for -shm; on a
                    # full disk read the main file as it is. What a -wal still holds is
                    # not seen: an older view, every value still verified when read.
                    self._conn.close()
                    self._conn = self._connect(immutable=True)
                    self._immutable = True
                    continue
                break
            raise CacheError(f"cannot read the cache database {self._db}: {error}") from error

    def open(self, key: str) -> IO[bytes] | None:
        """A stream over the stored bytes of ``key``; None when absent (see :meth:`get`)."""
        found = self.get(key)
        return io.BytesIO(found) if isinstance(found, bytes) else found

    def get(self, key: str) -> bytes | IO[bytes] | None:
        """The stored bytes of ``key`` when the database holds them, else a stream over
        the file that does; None when absent.

        A value kept in a file is opened only if it is a regular file (no symlink, FIFO
        or device, reached through no symlinked directory) of exactly the size the index
        records; anything else is an IntegrityError, so a crafted cache directory cannot
        make a reader hang on a FIFO or read ``/dev/zero`` until memory runs out.
        """
        row: Any = self._primed.pop(key, _NOT_PRIMED) if self._primed else _NOT_PRIMED
        if row is _NOT_PRIMED:
            rows = self._query(
                "SELECT mode, filename, value, size FROM Cache WHERE key = ? AND raw = 1", (key,)
            )
            row = rows[0] if rows else None
        if row is None:
            return None
        mode, filename, value, size = row
        if mode == diskcache.core.MODE_RAW and isinstance(value, bytes):
            return value
        if mode == diskcache.core.MODE_BINARY and isinstance(filename, str):
            if not _VALUE_FILE.match(filename) or not isinstance(size, int):
                raise IntegrityError(f"stored under an unexpected file name {filename!r}")
            return open_value_file(self._directory, filename, size)
        raise IntegrityError(f"stored in diskcache mode {mode} (not plain bytes); not read")

    def prime(self, keys: Collection[str]) -> None:
        """Read the rows of ``keys`` in one query (per 500); the next open() of each uses it.

        perf: one query per ready wave instead of one per task. A primed row serves one
        open() only, and unprime() drops the rest, so no later look-up (after taking a
        lock, after waiting for another process) sees an old answer.
        """
        keys = list(keys)
        found: dict[str, Any] = dict.fromkeys(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, *row in self._query(
                "SELECT key, mode, filename, value, size FROM Cache"
                f" WHERE raw = 1 AND key IN ({marks})",
                tuple(chunk),
            ):
                found[key] = tuple(row)
        self._primed.update(found)

    def unprime(self) -> None:
        self._primed.clear()

    def values(self, keys: Collection[str]) -> dict[str, bytes]:
        """The values of ``keys`` kept in the database itself (small ones), per 500 keys."""
        keys = list(keys)
        found: dict[str, bytes] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT key, value FROM Cache WHERE raw = 1 AND mode = {diskcache.core.MODE_RAW}"
                f" AND key IN ({marks})",
                tuple(chunk),
            )
            found.update(
                (key, value)
                for key, value in rows
                if isinstance(key, str) and isinstance(value, bytes)
            )
        return found

    def read(self, key: str) -> bytes | None:
        stream = self.open(key)
        if stream is None:
            return None
        with stream:
            return stream.read()

    def value_file(self, key: str) -> str | None:
        """The value file name of ``key`` when its value is kept in a file, else None."""
        rows = self._query("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,))
        name = rows[0][0] if rows else None
        return name if isinstance(name, str) and _VALUE_FILE.match(name) else None

    def value_files(self) -> set[str]:
        """The value file names (``xx/yy/<hex>.val``) the index refers to."""
        rows = self._query("SELECT filename FROM Cache WHERE filename IS NOT NULL")
        return {f for (f,) in rows if isinstance(f, str)}

    def keys(self, tag: str) -> list[str]:
        rows = self._query("SELECT key FROM Cache WHERE raw = 1 AND tag = ?", (tag,))
        return sorted(k for (k,) in rows if isinstance(k, str))

    def contains(self, key: str, tag: str) -> bool:
        return bool(
            self._query("SELECT 1 FROM Cache WHERE key = ? AND raw = 1 AND tag = ?", (key, tag))
        )

    def count(self, tag: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM Cache WHERE raw = 1 AND tag = ?", (tag,))
        return int(rows[0][0]) if rows else 0

    def volume(self) -> int:
        """Bytes used, as diskcache counts them for its size limit (the database file
        shrinks as rows go: auto_vacuum is on, see _PINNED_SETTINGS in cache.py)."""
        pages = self._query("PRAGMA page_count")
        page_size = self._query("PRAGMA page_size")
        files = self._query("SELECT value FROM Settings WHERE key = 'size'")
        if not pages:
            return 0
        return int(pages[0][0]) * int(page_size[0][0]) + (int(files[0][0]) if files else 0)

    def oldest(self, tags: Collection[str]) -> list[tuple[str, str, int]]:
        """``(key, tag, bytes)`` of the rows with these tags, least recently stored first."""
        marks = ",".join("?" * len(tags))
        rows = self._query(
            "SELECT key, tag, COALESCE(size, 0) + COALESCE(length(value), 0) FROM Cache"
            f" WHERE raw = 1 AND tag IN ({marks}) ORDER BY store_time, rowid",
            tuple(tags),
        )
        return [(k, t, int(n)) for k, t, n in rows if isinstance(k, str)]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_DIRECTORY


def open_value_file(directory: pathlib.Path, filename: str, size: int) -> IO[bytes] | None:
    """Open the value file ``xx/yy/<hex>.val`` under ``directory`` if it is safe to read.

    Each directory on the way and the file are opened with ``O_NOFOLLOW`` (a symlink is
    refused, not followed) and the file with ``O_NONBLOCK`` (opening a FIFO returns at
    once); then the file must be regular and exactly ``size`` bytes. None when it is
    missing (evicted or removed between the query and the open); IntegrityError otherwise.
    """
    fds: list[int] = []
    try:
        # The cache directory itself may be reached through a symlink (the user's choice).
        fds.append(os.open(directory, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY))
        parts = filename.split("/")
        for i, part in enumerate(parts):
            flags = _OPEN_FLAGS if i == len(parts) - 1 else _DIR_FLAGS
            fds.append(os.open(part, flags, dir_fd=fds[-1]))
    except FileNotFoundError:
        _close_all(fds)
        return None
    except OSError as exc:
        _close_all(fds)
        # ELOOP: a symlink; ENOTDIR: a file where a directory should be; ENXIO: a socket.
        raise IntegrityError(
            f"value file {filename} cannot be opened safely "
            f"({exc.strerror}); it is not a plain file"
        ) from None
    fd = fds.pop()
    _close_all(fds)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise IntegrityError(
            f"value file {filename} is not a regular file (mode {stat.filemode(st.st_mode)})"
        )
    if st.st_size != size:
        os.close(fd)
        raise IntegrityError(
            f"value file {filename} has {st.st_size} bytes; the index records {size}"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def value_files_on_disk(directory: pathlib.Path) -> dict[str, int]:
    """Every ``xx/yy/<hex>.val`` file under ``directory`` (symlinks included), with its size.

    Nothing is followed: a symlinked ``xx`` or ``yy`` directory is not walked into.
    """
    found: dict[str, int] = {}
    for sub in _value_dirs(directory):
        if sub.parent == directory or sub.is_symlink() or not sub.is_dir():
            continue
        try:
            entries = list(os.scandir(sub))
        except OSError:
            continue
        for entry in entries:
            name = f"{sub.parent.name}/{sub.name}/{entry.name}"
            if _VALUE_FILE.match(name):
                try:
                    found[name] = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return found


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --------------------------------------------------------------------------- auditing

_PRAGMA_VALUE = re.compile(r"[A-Za-z]{1,16}\Z")
_HEX2 = re.compile(r"[0-9a-f]{2}\Z")


def _normal_sql(sql: object) -> str:
    return " ".join(str(sql).split())


@functools.cache
def _reference_schema() -> frozenset[tuple[str, str, str]]:
    """The tables and triggers diskcache creates, as (type, name, sql), from a scratch cache."""
    # perf: about 10 ms, once per process, and only when an existing cache is opened rw;
    # asking diskcache itself keeps this right whatever diskcache version is installed.
    with tempfile.TemporaryDirectory(prefix="taskrun-schema-") as tmp:
        dc = diskcache.Cache(tmp, tag_index=True, eviction_policy="least-recently-stored")
        try:
            rows = dc._sql(
                "SELECT type, name, sql FROM sqlite_master"
                " WHERE type IN ('table', 'trigger', 'view')"
            ).fetchall()
        finally:
            dc.close()
    return frozenset((t, n, _normal_sql(q)) for t, n, q in rows)


def _setting_problem(key: object, value: object) -> str | None:
    known = diskcache.core.DEFAULT_SETTINGS.keys() | diskcache.core.METADATA.keys()
    if key not in known:
        return f"unknown setting {key!r}"
    assert isinstance(key, str)
    if key == "eviction_policy":
        return None if value in diskcache.core.EVICTION_POLICY else f"eviction policy {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"setting {key} has a value of type {type(value).__name__}"
    if isinstance(value, str) and not _PRAGMA_VALUE.match(value):
        return f"setting {key} = {value!r}"
    return None


def audit_store(directory: pathlib.Path) -> list[str]:
    """What makes ``directory`` unsafe to open with diskcache for writing (empty: safe).

    Checks, without writing: the schema (tables and triggers exactly as diskcache makes
    them, no views), the Settings table (known keys, plain values), every value file
    name (``xx/yy/<hex>.val``, nothing that climbs out), and that ``locks`` and the value
    directories are real directories, not symlinks to elsewhere.
    """
    problems: list[str] = []
    for sub in [directory / "locks", *_value_dirs(directory)]:
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            problems.append(f"{sub.name} is not a plain directory")
    db = directory / "cache.db"
    if db.is_symlink():
        problems.append("cache.db is a symlink")
    if problems or not db.is_file():
        return problems
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as exc:
        return [f"cannot open cache.db: {exc}"]
    try:
        # Read the schema text only; nothing in it runs while we look.
        schema = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'trigger', 'view')"
        ).fetchall()
        if not schema:
            return problems
        reference = _reference_schema()
        for kind, name, sql in schema:
            if (kind, name, _normal_sql(sql)) not in reference:
                problems.append(f"unexpected {kind} {name!r} in the schema")
        if problems:
            return problems
        for key, value in conn.execute("SELECT key, value FROM Settings"):
            problem = _setting_problem(key, value)
            if problem:
                problems.append(problem)
        for (filename,) in conn.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL"):
            if not isinstance(filename, str) or not _VALUE_FILE.match(filename):
                problems.append(f"a row names the file {filename!r}")
                break
    except sqlite3.Error as exc:
        problems.append(f"cannot read cache.db: {exc}")
    finally:
        conn.close()
    return problems


def _value_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
    """diskcache's two-level value directories (``xx`` and ``xx/yy``)."""
    found: list[pathlib.Path] = []
    if not directory.is_dir():
        return found
    for top in directory.iterdir():
        if not _HEX2.match(top.name):
            continue
        found.append(top)
        if top.is_dir() and not top.is_symlink():
            found.extend(p for p in top.iterdir() if _HEX2.match(p.name))
    return found
