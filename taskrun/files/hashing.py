"""Content hashing: file and tree digests (xxh3-128), and the local stat cache.

Files enter fingerprints by **content** (xxh3-128 of their bytes), never by time stamp or
absolute path. A local :class:`StatCache` (``<root>/.taskrun/stat-cache``, never part of
the shareable cache) remembers ``(size, mtime_ns, inode, ctime_ns) -> digest`` so an
unchanged file is not read again.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import xxhash

from taskrun.atomic import atomic_write
from taskrun.errors import FingerprintError

__all__ = ["StatCache", "content_digest", "file_digest", "tree_digest"]


_CHUNK = 1 << 20  # perf: 1 MiB reads; xxh3 streams at memory speed, syscalls dominate below
_TREE_HEADER = b"taskrun-tree\x00v1\x00"
_FINE_WINDOW_NS = 100_000_000  # 0.1 s: well above a kernel's coarse timestamp tick
_COARSE_WINDOW_NS = 2_000_000_000  # 2 s: file systems with 1 s or 2 s (FAT) time stamps
_now_ns = time.time_ns  # the clock the racy-mtime rule reads (tests move it)


def _hash_file(path: str) -> str:
    """xxh3-128 hex digest of the bytes of the file at PATH (read in 1 MiB chunks)."""
    with open(path, "rb", buffering=0) as f:
        data = f.read(_CHUNK)
        # perf: a small file costs open + two reads; the second read proves EOF.
        tail = f.read(_CHUNK) if data else b""
        if not tail:
            return xxhash.xxh3_128_hexdigest(data)
        h = xxhash.xxh3_128(data)
        h.update(tail)
        # perf: one reused buffer; a fresh 1 MiB bytes per chunk costs page faults.
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
        return h.hexdigest()


def _settled(st: os.stat_result, hashed_at_ns: int) -> bool:
    """Whether a digest taken at HASHED_AT_NS may be trusted while the stat stays the same.

    The racy-mtime problem (git's "racy git"): time stamps have a granularity, so a file
    hashed and then modified again within the same tick keeps the same mtime (and often
    size), and a cache keyed by stat would keep serving the old digest. Like git, an entry
    is trusted only if the file's newest time stamp is clearly older than the moment the
    hash was taken: anything written after that moment gets a stamp inside the window
    and is hashed again next time. Files with whole-second stamps are assumed to live on
    a coarse file system (1 s, or 2 s for FAT) and get a wider window. A file server whose
    clock runs behind ours by more than the window defeats this, as it does git.
    """
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    window = _COARSE_WINDOW_NS if st.st_mtime_ns % 1_000_000_000 == 0 else _FINE_WINDOW_NS
    return newest < hashed_at_ns - window


_Sig = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


class StatCache:
    """A local map ``absolute path -> (size, mtime_ns, inode, ctime_ns, digest)``.

    Format: one JSON file, loaded whole into a dict when opened and written whole by
    :meth:`flush` to a temporary file renamed over the old one. Why not sqlite: a warm
    walk must not pay a query per file, and once loading and saving are bulk operations
    sqlite adds nothing but an import and locking; a renamed file is never seen
    half-written, two processes flushing at once leave the last one's view (a lost entry
    only costs a re-hash), and a damaged or foreign file is ignored. Why JSON rather
    than marshal or pickle: stable across Python versions and safe to parse, and about
    15 ms to load for 10,000 entries. ``ctime`` is in the key because ``os.utime`` can
    forge an mtime but not a ctime. Entries too recent to trust are never stored (see
    :func:`_settled`); entries of files that no longer exist are dropped on flush.
    """

    FORMAT = "taskrun-stat-cache"
    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, tuple[_Sig, str]] = self._load(path) if path else {}
        self._seen: set[str] = set()  # keys looked up since opening
        self._dirty = False
        self._lock = threading.Lock()

    @classmethod
    def for_project(cls, root: Path) -> StatCache:
        """The stat cache of the project at ROOT (``<root>/.taskrun/stat-cache``)."""
        return cls(Path(root) / ".taskrun" / "stat-cache")

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    @classmethod
    def _load(cls, path: Path) -> dict[str, tuple[_Sig, str]]:
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(raw, dict)
            or raw.get("format") != cls.FORMAT
            or raw.get("version") != cls.VERSION
            or not isinstance(raw.get("entries"), dict)
        ):
            return {}
        # Malformed values are dropped; a value of the wrong type can only fail to match.
        return {
            k: ((v[0], v[1], v[2], v[3]), v[4])
            for k, v in raw["entries"].items()
            if type(v) is list and len(v) == 5 and type(v[4]) is str
        }

    def digest(self, path: Path | str) -> str:
        """xxh3-128 hex digest of the file at PATH, read only if its stat changed."""
        key = os.path.abspath(path)
        hashed_at = _now_ns()  # before the stat: errs towards "racy"
        try:
            st = os.stat(key)
        except OSError as exc:
            self._forget(key)
            raise FingerprintError(f"cannot hash '{path}': {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            raise FingerprintError(f"cannot hash '{path}' as a file: it is a directory (use Dir)")
        return self._digest_stat(key, st, hashed_at)

    def _digest_stat(self, key: str, st: os.stat_result, hashed_at: int) -> str:
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        self._seen.add(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == sig:
            return entry[1]
        digest = _hash_file(key)
        if _settled(st, hashed_at):
            self._entries[key] = (sig, digest)
            self._dirty = True
        elif entry is not None:
            self._forget(key)
        return digest

    def _forget(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._dirty = True

    def flush(self) -> None:
        """Write the cache to its file if it changed (atomically; a failure is ignored)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            entries = dict(self._entries)  # an atomic copy, even with hashing threads
            seen = set(self._seen)
            self._dirty = False
        for key in [k for k in entries if k not in seen and not os.path.lexists(k)]:
            del entries[key]  # perf: only entries this run did not look at cost an lstat
        payload = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "entries": {k: [*sig, d] for k, (sig, d) in entries.items()},
        }
        data = json.dumps(payload, separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, durable=False)  # a lost file costs re-hashing
        except OSError:
            # A read-only checkout must still build: the stat cache only saves re-reads.
            self._dirty = True


def file_digest(path: Path | str, *, stat_cache: StatCache | None = None) -> str:
    """xxh3-128 hex digest of the bytes of the file at PATH."""
    if stat_cache is not None:
        return stat_cache.digest(path)
    try:
        return _hash_file(os.fspath(path))
    except IsADirectoryError as exc:
        raise FingerprintError(
            f"cannot hash '{path}' as a file: it is a directory (use Dir)"
        ) from exc
    except OSError as exc:
        raise FingerprintError(f"cannot hash '{path}': {exc.strerror}") from exc


def tree_digest(path: Path | str, *, stat_cache: StatCache | None = None) -> str:
    """xxh3-128 hex digest of the directory tree at PATH.

    Covers, in sorted order, each entry's relative posix path and: for a file its content
    digest and executable bit; for a symlink its target text (never followed, so a tree
    cannot reach outside itself); for other special files only their presence. Empty
    directories do not count (they are not restored either). Independent of where the
    tree lives, of creation order and of time stamps.
    """
    top = os.path.abspath(path)
    if not os.path.isdir(top):
        what = "no such directory" if not os.path.exists(top) else "it is not a directory"
        raise FingerprintError(f"cannot hash '{path}' as a directory: {what}")
    hashed_at = _now_ns()
    records: list[tuple[str, bytes, bytes]] = []
    stack = [(top, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    rel = prefix + entry.name
                    # perf: d_type answers is_dir/is_symlink without a syscall; each file
                    # costs one lstat (the stat cache key) and, when cold, one read.
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, rel + "/"))
                    elif entry.is_symlink():
                        records.append((rel, b"l", os.fsencode(os.readlink(entry.path))))
                    else:
                        st = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode):
                            records.append((rel, b"o", b""))
                            continue
                        if stat_cache is not None:
                            digest = stat_cache._digest_stat(entry.path, st, hashed_at)
                        else:
                            digest = _hash_file(entry.path)
                        kind = b"x" if st.st_mode & 0o111 else b"f"
                        records.append((rel, kind, bytes.fromhex(digest)))
        except OSError as exc:
            raise FingerprintError(f"cannot hash '{path}': {exc}") from exc
    records.sort()
    h = xxhash.xxh3_128(_TREE_HEADER)
    for rel, kind, payload in records:
        name = os.fsencode(rel)
        h.update(b"".join((kind, _u32(len(name)), name, _u32(len(payload)), payload)))
    return h.hexdigest()


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def content_digest(path: Path | str, *, stat_cache: StatCache | None = None) -> str:
    """The content digest of PATH: :func:`tree_digest` for a directory, else :func:`file_digest`."""
    if os.path.isdir(path):
        return tree_digest(path, stat_cache=stat_cache)
    return file_digest(path, stat_cache=stat_cache)
