"""Declared outputs: capture after a task ran, restore on a cache hit, and ``clean``.

The glob syntax and the overlap check live in :mod:`taskrun.globs`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import xxhash

from taskrun.atomic import publish, temp_beside
from taskrun.errors import CacheError, IntegrityError, TaskFailed, UsageError
from taskrun.files import hashing
from taskrun.files.hashing import StatCache
from taskrun.files.paths import _inside, project_relative
from taskrun.globs import compile_pattern, expand, split_relative, under

__all__ = [
    "BlobMissingError",
    "CapturedFile",
    "OutputError",
    "RestoreReport",
    "UnsafeEntryError",
    "capture_outputs",
    "clean_outputs",
    "restore_outputs",
]

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
    hashed_at = hashing._now_ns()
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
            current = hashing._hash_file(full)
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
            publish(tmp, target, durable=False)
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
                with contextlib.suppress(OSError):
                    os.rmdir(d)
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
    # Staged: every file of the entry is written before any is renamed into place.
    fd, tmp = temp_beside(target, mode=mode)
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data)
            # perf: no fsync: a file torn by a crash fails its digest on the next hit and
            # is restored again; fsync per file would dominate restoring many small files.
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return tmp


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root_abs, rel))
            emptied.update(str(p) for p in PurePosixPath(rel).parents if str(p) != ".")
        # Deepest first, so a parent is tried after its children; only directories that
        # held a removed file, so an empty directory of the user's own is left alone.
        for rel in sorted(emptied, key=lambda d: (-d.count("/"), d)):
            with contextlib.suppress(OSError):  # not empty: something not declared lives there
                os.rmdir(os.path.join(root_abs, rel))
        for top in dirs:
            for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):  # not empty: something not declared lives there
                    os.rmdir(directory)
    return [PurePosixPath(p) for p in sorted(found)]
