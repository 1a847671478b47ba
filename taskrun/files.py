"""Files as content: File/Dir, content hashing with a stat cache, output capture and restore.

``File`` and ``Dir`` are :class:`pathlib.Path` subclasses for paths relative to the
project root. Tasks run with the project root as their working directory, so a relative
``File`` opens the right file wherever taskrun was started.

Files enter fingerprints by **content** (xxh3-128 of their bytes), never by time stamp or
absolute path. A local :class:`StatCache` (``<root>/.taskrun/stat-cache``, never part of
the shareable cache) remembers ``(size, mtime_ns, inode, ctime_ns) -> digest`` so an
unchanged file is not read again.

Declared outputs are captured after a task runs and restored on a cache hit; the glob
syntax and the overlap check live in :mod:`taskrun.globs` (re-exported here).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import pathlib
import re
import stat
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from taskrun.errors import (
    CacheError,
    FingerprintError,
    IntegrityError,
    TaskFailed,
    UsageError,
)
from taskrun.globs import (
    check_disjoint_outputs,
    check_outputs_avoid,
    compile_pattern,
    expand,
    expand_globs,
    split_relative,
    under,
)

__all__ = [
    "BlobMissingError",
    "CapturedFile",
    "Dir",
    "File",
    "OutputError",
    "RestoreReport",
    "StatCache",
    "UnsafeEntryError",
    "capture_outputs",
    "check_disjoint_outputs",
    "clean_outputs",
    "content_digest",
    "expand_globs",
    "current_external_roots",
    "external_key",
    "external_roots",
    "file_digest",
    "own_places",
    "paths_in",
    "project_relative",
    "restore_outputs",
    "tree_digest",
]

# perf: subclass the concrete flavour (PosixPath/WindowsPath); `pathlib.Path` itself can
# only be subclassed directly from Python 3.12 on.
_ConcretePath = type(pathlib.Path())


class File(_ConcretePath):  # type: ignore[valid-type,misc]
    """A file, by path relative to the project root; fingerprinted by content."""

    __slots__ = ()


class Dir(_ConcretePath):  # type: ignore[valid-type,misc]
    """A directory, by path relative to the project root; fingerprinted by its tree.

    ``iterdir``, ``glob`` and ``rglob`` yield :class:`File` for files and :class:`Dir` for
    directories, so ``sorted(Dir("src").glob("**/*.py"))`` is a ``list[File]``.
    """

    __slots__ = ()

    def iterdir(self) -> Iterator[File | Dir]:  # type: ignore[override]
        """The entries of this directory, typed as File or Dir."""
        return map(_typed, super().iterdir())

    def glob(self, pattern: str, *args: Any, **kwargs: Any) -> Iterator[File | Dir]:  # type: ignore[override]
        """Entries matching PATTERN (pathlib syntax), typed as File or Dir."""
        return map(_typed, super().glob(pattern, *args, **kwargs))

    def rglob(self, pattern: str, *args: Any, **kwargs: Any) -> Iterator[File | Dir]:  # type: ignore[override]
        """Entries matching PATTERN at any depth, typed as File or Dir."""
        return map(_typed, super().rglob(pattern, *args, **kwargs))


def paths_in(value: object) -> Iterator[File | Dir]:
    """The File and Dir values in ``value``: itself, or inside lists, tuples, sets, dict values.

    A product's File/Dir values are stored (and shipped) like declared outputs.
    """
    if isinstance(value, (File, Dir)):
        # Files under an external root are read, never stored, restored or shipped.
        if not (value.is_absolute() and external_key(value) is not None):
            yield value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from paths_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from paths_in(v)


def _typed(path: pathlib.Path) -> File | Dir:
    # is_dir follows symlinks: a link to a directory is used as one.
    return Dir(path) if path.is_dir() else File(path)


# --------------------------------------------------------------------------- errors
# Kept here (subclasses of the errors.py tree) so the scheduler can catch them precisely.


class OutputError(TaskFailed):
    """A task's declared outputs are missing or lead out of the project; nothing is recorded."""

    def __init__(self, task: str, message: str) -> None:
        super().__init__(task, message)
        if not task:  # capture_outputs called without a task name
            self.message = message


class UnsafeEntryError(IntegrityError):
    """A cache entry names a path outside the project (`..`, absolute, a symlink out)."""


class BlobMissingError(CacheError):
    """A blob a cache entry needs is not in the cache; treat the entry as a miss."""

    def __init__(self, message: str, *, digest: str, path: str) -> None:
        super().__init__(message)
        self.digest = digest
        self.path = path


# --------------------------------------------------------------------------- paths


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- external roots
# Folders outside the project that `[tool.taskrun] external` declares, by name. Set while a
# project is invoked and run (external_roots); files under them are tracked by content and
# keyed by NAME + relative path, never by where this machine mounts them.
_NO_ROOTS: Mapping[str, str] = types.MappingProxyType({})
_EXTERNAL: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "taskrun_external_roots", default=_NO_ROOTS
)
EXTERNAL_PREFIX = "@"  # inputs=["@data/raw/*.csv"]: the external root named `data`


@contextlib.contextmanager
def external_roots(roots: Mapping[str, str | os.PathLike[str]]) -> Iterator[None]:
    """Declare the external roots (name -> absolute directory) for the ``with`` block."""
    token = _EXTERNAL.set({n: os.path.normpath(os.fspath(p)) for n, p in roots.items()})
    try:
        yield
    finally:
        _EXTERNAL.reset(token)


def current_external_roots() -> dict[str, str]:
    """The external roots declared now (name -> folder)."""
    return dict(_EXTERNAL.get())


def external_key(path: os.PathLike[str] | str) -> str | None:
    """``@NAME/relative/path`` for an absolute PATH under a declared external root, else None."""
    text = os.path.normpath(os.fspath(path))
    for name, base in _EXTERNAL.get().items():
        if text == base or text.startswith(base.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(text, base)
            return f"{EXTERNAL_PREFIX}{name}" + ("" if rel == "." else "/" + PurePosixPath(
                pathlib.PurePath(rel).as_posix()).as_posix())
    return None


def external_base(key: str) -> tuple[str, str] | None:
    """``@NAME/rest`` -> (the declared directory of NAME, ``rest``); None if NAME is unknown."""
    name, _, rest = key[len(EXTERNAL_PREFIX):].partition("/")
    base = _EXTERNAL.get().get(name)
    return None if base is None else (base, rest)


def _declare_hint(path: str) -> str:
    folder = os.path.dirname(path) if not os.path.isdir(path) else path
    name = re.sub(r"\W", "_", os.path.basename(folder.rstrip(os.sep)) or "data")
    return (
        f"; to use files outside the project, declare their folder in pyproject.toml:"
        f' [tool.taskrun] external = {{ {name} = "{folder}" }}'
    )


def project_relative(
    path: os.PathLike[str] | str, root: Path, *, external_ok: bool = False
) -> PurePosixPath:
    """PATH relative to the project ROOT, as a normalized posix path.

    A relative path stays relative (``a/./b`` -> ``a/b``); an absolute path inside ROOT is
    made relative. A path outside ROOT (absolute, or escaping it with ``..``) is a
    :class:`UsageError` that says how to declare it external, unless EXTERNAL_OK or it lies
    under a declared external root (:func:`external_roots`): then its normalized absolute
    path is returned.
    """
    raw = os.fspath(path)
    root_abs = os.path.abspath(root)
    joined = os.path.normpath(os.path.join(root_abs, raw))
    rel = os.path.relpath(joined, root_abs)
    if rel.split(os.sep, 1)[0] == ".." and os.path.isabs(raw):
        # Lexically outside; the same place may still be inside through a symlinked root
        # (/tmp -> /private/tmp), so compare real paths before refusing.
        real_rel = os.path.relpath(os.path.realpath(joined), os.path.realpath(root_abs))
        if real_rel.split(os.sep, 1)[0] != "..":
            rel = real_rel
    if rel.split(os.sep, 1)[0] != "..":
        return PurePosixPath(pathlib.PurePath(rel).as_posix())
    if external_ok or external_key(joined) is not None:
        return PurePosixPath(pathlib.PurePath(joined).as_posix())
    raise UsageError(
        f"path '{raw}' is outside the project root '{root_abs}'; use a path inside the "
        "project (relative to its root)" + _declare_hint(joined)
    )


def own_places(
    root: Path,
    cache_dir: os.PathLike[str] | str | None,
    *,
    check: Mapping[str, tuple[Sequence[str], str]] | None = None,
) -> tuple[str, ...]:
    """taskrun's own directories inside the project ROOT (relative posix): ``.taskrun``
    and the cache directory when it lies inside the project. Never captured as outputs,
    restored over or cleaned.

    CHECK maps task name -> (output globs, where defined): a task whose output globs can
    name a file in one of them is a :class:`~taskrun.errors.DefinitionError` naming the
    glob and the directory.
    """
    places = {".taskrun": "taskrun's state directory"}
    if cache_dir is not None:
        try:
            rel = project_relative(cache_dir, root).as_posix()
        except UsageError:
            rel = None  # outside the project: no output can name it
        if rel is not None:
            places[rel if rel != "." else ""] = "the cache directory"
    if check:
        check_outputs_avoid({t: v for t, v in check.items() if v[0]}, places)
    return tuple(places)


# --------------------------------------------------------------------------- hashing

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
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:
            # A read-only checkout must still build: the stat cache only saves re-reads.
            self._dirty = True
            tmp.unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True, slots=True)
class CapturedFile:
    """One output file as stored: relative posix path, content digest, mode bits, bytes."""

    path: str
    digest: str
    mode: int
    data: bytes


def capture_outputs(
    patterns: Sequence[str],
    root: Path,
    *,
    extra: Iterable[Path] = (),
    task: str = "",
    exclude: Sequence[str] = (".taskrun",),
) -> list[CapturedFile]:
    """The files a task produced: those matching its output PATTERNS plus EXTRA.

    EXTRA holds File/Dir products (a Dir contributes its files). A literal pattern (no
    glob characters) or an EXTRA path that names nothing, or a file whose real path lies
    outside ROOT (a symlink out), raises :class:`OutputError` naming TASK.
    """
    root_abs = os.path.abspath(root)
    root_real = os.path.realpath(root_abs)
    found: set[str] = set()
    missing: list[str] = []
    for text in patterns:
        pattern = compile_pattern(text, "output")
        files, exists = expand(pattern, root_abs)
        if pattern.literal and not exists:
            missing.append(f"declared output '{text}' was not produced")
        found.update(files)
    for path in extra:
        try:
            product = project_relative(path, Path(root_abs)).as_posix()
        except UsageError as exc:
            raise OutputError(task, f"product {exc}") from None
        files, exists = expand(compile_pattern(product, "product"), root_abs)
        if not exists:
            missing.append(f"product '{path}' does not exist")
        found.update(files)
    if missing:
        raise OutputError(task, "; ".join(missing))
    captured = []
    for rel in sorted(found):
        if under(rel, exclude):
            continue  # taskrun's own files (the cache, its state): never an output
        full = os.path.join(root_abs, rel)
        real = os.path.realpath(full)
        if not _inside(real, root_real):
            raise OutputError(
                task,
                f"output '{rel}' leads outside the project (to '{real}'); "
                "outputs must be files inside the project root",
            )
        try:
            with open(full, "rb") as f:
                data = f.read()
            mode = os.stat(full).st_mode & 0o7777
        except OSError as exc:
            raise OutputError(task, f"output '{rel}' cannot be read: {exc.strerror}") from exc
        captured.append(CapturedFile(rel, xxhash.xxh3_128_hexdigest(data), mode, data))
    return captured


# --------------------------------------------------------------------------- restore


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What :func:`restore_outputs` did: files written (or re-moded) and files left alone."""

    restored: int
    unchanged: int
    paths: tuple[str, ...]  # the restored ones


_HEX32 = re.compile(r"[0-9a-f]{32}")


def restore_outputs(
    records: Sequence[tuple[str, str, int]],
    root: Path,
    get_blob: Callable[[str], bytes | None],
    *,
    stat_cache: StatCache | None = None,
    exclude: Sequence[str] = (".taskrun",),
) -> RestoreReport:
    """Put the files RECORDS describe (relative path, digest, mode) back under ROOT.

    Every record is validated before anything is written: no absolute path, no ``..``,
    no parent directory that is a symlink leading out of ROOT (:class:`UnsafeEntryError`).
    A file already holding the same content and mode is left untouched. The others are
    fetched with GET_BLOB (``None``: :class:`BlobMissingError`), verified against their
    digest (:class:`IntegrityError`) and written to a temporary file beside the target;
    only when every blob is in hand are they renamed into place. Only permission bits
    (0o777) are restored: a setuid bit from a shared cache is never honoured. Nothing is
    restored inside EXCLUDE (taskrun's own directories, the cache among them).
    """
    root_abs = os.path.abspath(root)
    root_real = os.path.realpath(root_abs)
    plan = _validate_records(records, root_abs, root_real)
    inside = [rel for rel, _, _ in plan if under(rel, exclude)]
    if inside:
        raise UnsafeEntryError(
            f"cache entry names output '{inside[0]}', inside taskrun's own directory "
            f"(the cache or .taskrun); nothing was restored"
        )
    hashed_at = _now_ns()
    to_write: list[tuple[str, str, int]] = []
    to_chmod: list[tuple[str, int]] = []
    unchanged = 0
    for rel, digest, mode in plan:
        full = os.path.join(root_abs, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            to_write.append((rel, digest, mode))
            continue
        if not stat.S_ISREG(st.st_mode):  # a symlink is replaced, never written through
            to_write.append((rel, digest, mode))
            continue
        if stat_cache is not None:
            current = stat_cache._digest_stat(full, st, hashed_at)
        else:
            current = _hash_file(full)
        if current != digest:
            to_write.append((rel, digest, mode))
        elif st.st_mode & 0o777 != mode:
            to_chmod.append((rel, mode))
        else:
            unchanged += 1

    pending: list[tuple[str, str]] = []  # (temporary, target)
    made_dirs: list[str] = []
    done = False
    try:
        for rel, digest, mode in to_write:
            data = get_blob(digest)
            if data is None:
                raise BlobMissingError(
                    f"cache blob {digest} for output '{rel}' is missing; the entry cannot "
                    "be restored",
                    digest=digest,
                    path=rel,
                )
            if xxhash.xxh3_128_hexdigest(data) != digest:
                raise IntegrityError(
                    f"cache blob for output '{rel}' does not match its digest {digest}; "
                    "the entry is corrupt"
                )
            target = os.path.join(root_abs, rel)
            _make_parents(root_abs, rel, made_dirs)
            pending.append((_write_temp(target, data, mode), target))
        for tmp, target in pending:
            os.replace(tmp, target)
        pending.clear()
        for rel, mode in to_chmod:
            os.chmod(os.path.join(root_abs, rel), mode)
        done = True
    except OSError as exc:
        raise CacheError(f"cannot restore outputs under '{root_abs}': {exc}") from exc
    finally:
        if not done:  # leave the tree as it was: no temporary files, no new directories
            for tmp, _ in pending:
                _unlink_quiet(tmp)
            for d in reversed(made_dirs):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
    written = tuple(rel for rel, _, _ in to_write) + tuple(rel for rel, _ in to_chmod)
    return RestoreReport(len(written), unchanged, tuple(sorted(written)))


def _validate_records(
    records: Sequence[tuple[str, str, int]], root_abs: str, root_real: str
) -> list[tuple[str, str, int]]:
    """The records as (normalized path, digest, mode & 0o777), or an error before any write."""
    plan: dict[str, tuple[str, int]] = {}
    for rel, digest, mode in records:
        parts, problem = split_relative(rel) if isinstance(rel, str) else ((), "not text")
        if problem:
            raise UnsafeEntryError(
                f"cache entry names output '{rel}', which is refused: {problem}; nothing "
                "was restored (the entry is treated as corrupt)"
            )
        if not isinstance(digest, str) or not _HEX32.fullmatch(digest):
            raise IntegrityError(f"cache entry has a malformed digest for output '{rel}'")
        if type(mode) is not int:
            raise IntegrityError(f"cache entry has a malformed mode for output '{rel}'")
        norm = "/".join(parts)
        item = (digest, mode & 0o777)
        if plan.setdefault(norm, item) != item:
            raise IntegrityError(f"cache entry lists output '{norm}' twice with different content")
    for norm in plan:
        segments = norm.split("/")
        parents = ["/".join(segments[: k + 1]) for k in range(len(segments) - 1)]
        if any(parent in plan for parent in parents):
            raise IntegrityError(f"cache entry lists '{norm}' below another listed file")
        for parent in parents:
            current = os.path.join(root_abs, parent)
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                break  # from here on created by the restore, as plain directories
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(current)
                if not _inside(real, root_real):
                    raise UnsafeEntryError(
                        f"cache entry output '{norm}' would be written through the symlink "
                        f"'{parent}', which leads outside the project (to '{real}'); nothing "
                        "was restored"
                    )
                st = os.stat(real) if os.path.exists(real) else st
            if not stat.S_ISDIR(st.st_mode):
                raise CacheError(
                    f"cannot restore '{norm}': '{parent}' is not a directory; remove it (or "
                    "run `taskrun clean`) and retry"
                )
        full = os.path.join(root_abs, norm)
        if os.path.isdir(full) and not os.path.islink(full):
            raise CacheError(f"cannot restore '{norm}': a directory is in the way")
    return [(norm, digest, mode) for norm, (digest, mode) in plan.items()]


def _make_parents(root_abs: str, rel: str, made: list[str]) -> None:
    current = root_abs
    for part in rel.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
            made.append(current)
        except FileExistsError:
            pass


def _write_temp(target: str, data: bytes, mode: int) -> str:
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.taskrun-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data)
            # perf: no fsync: a file torn by a crash fails its digest on the next hit and
            # is restored again; fsync per file would dominate restoring many small files.
            os.fchmod(f.fileno(), mode)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return tmp


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- clean


def clean_outputs(
    patterns_by_task: Mapping[str, Sequence[str]],
    root: Path,
    *,
    dry_run: bool,
    exclude: Sequence[str] = (".taskrun",),
) -> list[PurePosixPath]:
    """Remove the files matching each task's output globs; return them (sorted).

    With DRY_RUN nothing is removed. A pattern naming a directory also removes the
    directories left empty beneath it (and the directory itself), like ``rm -r``; and
    every directory a removed file leaves empty goes too, up to (not including) ROOT.
    Symlinks are removed, never followed.
    """
    root_abs = os.path.abspath(root)
    found: set[str] = set()
    dirs: list[str] = []
    for task, patterns in patterns_by_task.items():
        for text in patterns:
            pattern = compile_pattern(text, f"task '{task}': output")
            found.update(p for p in expand(pattern, root_abs)[0] if not under(p, exclude))
            full = os.path.join(root_abs, *pattern.parts)
            if pattern.literal and os.path.isdir(full) and not os.path.islink(full):
                dirs.append(full)
    if not dry_run:
        emptied: set[str] = set()
        for rel in sorted(found):
            try:
                os.unlink(os.path.join(root_abs, rel))
            except FileNotFoundError:
                pass
            emptied.update(str(p) for p in PurePosixPath(rel).parents if str(p) != ".")
        # Deepest first, so a parent is tried after its children; only directories that
        # held a removed file, so an empty directory of the user's own is left alone.
        for rel in sorted(emptied, key=lambda d: (-d.count("/"), d)):
            try:
                os.rmdir(os.path.join(root_abs, rel))
            except OSError:
                pass  # not empty: something not declared lives there
        for top in dirs:
            for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass  # not empty: something not declared lives there
    return [PurePosixPath(p) for p in sorted(found)]


def __getattr__(name: str) -> Any:
    # perf: `sh` lives in taskrun.shell; loading it lazily keeps subprocess and selectors
    # out of `import taskrun`.
    if name in ("sh", "ShResult"):
        from taskrun import shell

        return getattr(shell, name)
    raise AttributeError(f"module 'taskrun.files' has no attribute {name!r}")
