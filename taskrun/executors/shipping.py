"""Files for workers that do not share the project directory: sent with the call, and back.

A worker on another machine (a Dask cluster without a shared file system) cannot read
the project. For such a worker the driver *ships* what a task is known to read, and the
worker runs the call in a scratch directory holding those files:

1. Driver: :meth:`ProjectFiles.collect` lists the files of a call: its declared input
   files (``Call.inputs``), the File and Dir values among its arguments (options and
   upstream products; a Dir contributes its files), and the project's own Python modules
   (every ``*.py`` under the root, except in hidden directories, virtual environments,
   ``site-packages``, ``node_modules`` and the call's own declared outputs). Each is
   content-addressed (xxh3-128), so a backend sends a file once however many calls use it.
   Past :data:`SHIP_LIMIT` bytes in all, the call is refused with :class:`ShipError`.
2. Worker: :func:`run_shipped` writes the files into a fresh temporary directory, runs the
   call there (working directory and ``sys.path[0]``), collects the files matching the
   call's output globs plus the File/Dir values in its product, and deletes the directory.
3. Driver: :func:`write_back` puts those files into the project root (validated like a
   cache restore, each written to a temporary file and renamed), before the scheduler
   captures and stores the outputs as after a local run.

Files a task reads without declaring them are not shipped: they need a shared file system.
This module knows nothing of Dask: the backend chooses how the bytes travel.
"""

from __future__ import annotations

import functools
import linecache
import os
import pickle
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import xxhash

from taskrun.errors import TaskrunError
from taskrun.executors.base import Call, Outcome
from taskrun.executors.trampoline import Capture, run_pickled_then
from taskrun.files import paths_in

__all__ = [
    "SHIP_LIMIT",
    "Parcels",
    "ProjectFiles",
    "ShipError",
    "ShippedFile",
    "collect_outputs",
    "materialise",
    "run_shipped",
    "unpack",
    "write_back",
]

SHIP_LIMIT = 256 << 20  # bytes a call may ship, each way (inputs out, outputs back)
# Directories whose Python files are not the project's own modules (besides hidden ones).
_NOT_MODULES = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
_ENV_MARKERS = ("pyvenv.cfg", "conda-meta")  # a directory holding one is an environment
# perf: a file or pack of files up to this size travels inside the call's own message;
# bigger ones are sent ahead once and shared by every call that needs them.
_INLINE = 256 << 10
_HELD = 1 << 30  # bytes of sent files kept on the cluster for later calls
_KEEP_DATA = _INLINE  # perf: files up to this size keep their bytes in memory between calls
_KEPT_TOTAL = 64 << 20  # ... up to this much in all
_FINE_WINDOW_NS = 100_000_000  # see _settled
_COARSE_WINDOW_NS = 2_000_000_000

# One shipped file on the wire: (relative posix path, permission bits, bytes).
Wire = tuple[str, int, bytes]


class ShipError(Exception):
    """A call's files cannot be shipped or brought back; the call fails with this message."""


@dataclass(frozen=True, slots=True)
class ShippedFile:
    """One file a call ships: where it goes, what it holds (by digest), where it comes from."""

    path: str  # relative posix path under the project root
    mode: int  # permission bits
    size: int
    digest: str  # xxh3-128 of the bytes
    module: bool  # one of the project's Python modules (the same for every call)
    source: str  # absolute path on the driver


# -- the driver: what a call ships ----------------------------------------------------------


class ProjectFiles:
    """The files of one project root as the driver ships them, with what it learnt kept.

    Remembers directory listings and file digests by their stat, so a call whose files
    did not change costs one ``stat`` per file and per directory, not a read. Thread-safe.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._lock = threading.Lock()
        # directory -> (its signature, sub-directories, Python files); see _modules()
        self._dirs: dict[str, tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]]] = {}
        self._prefix = os.path.join(self.root, "")
        # file -> (its stat signature, the file as shipped)
        self._files: dict[str, tuple[tuple[int, ...], ShippedFile]] = {}
        self._data: OrderedDict[str, bytes] = OrderedDict()  # digest -> bytes, small files
        self._kept = 0

    def collect(
        self,
        inputs: Sequence[str],
        kwargs: Mapping[str, object],
        outputs: Sequence[str],
        *,
        limit: int = SHIP_LIMIT,
    ) -> list[ShippedFile]:
        """The files a call with these declared inputs, arguments and outputs ships.

        Raises :class:`ShipError` when they add up to more than ``limit`` bytes or one
        cannot be read.
        """
        from taskrun.globs import compile_pattern

        patterns = [compile_pattern(text, "output") for text in outputs]
        with self._lock:
            wanted: dict[str, bool] = {}  # relative path -> is a module
            for rel in self._modules():
                if not patterns or not any(p.matches(rel) for p in patterns):
                    wanted[rel] = True
            for rel in [*inputs, *self._argument_files(kwargs)]:
                wanted[rel] = False
            found: list[tuple[str, bool, str, os.stat_result]] = []
            for rel, module in sorted(wanted.items()):
                source = self._prefix + rel
                try:
                    st = os.stat(source)
                except OSError:
                    continue  # gone since it was listed (or a dangling link): nothing to send
                if stat.S_ISREG(st.st_mode):
                    found.append((rel, module, source, st))
            total = sum(st.st_size for *_, st in found)
            if total > limit:
                sizes = [(rel, st.st_size) for rel, _, _, st in found]
                raise ShipError(_too_much("the files the task needs", total, limit, sizes))
            return [self._shipped(rel, module, source, st) for rel, module, source, st in found]

    def _shipped(self, rel: str, module: bool, source: str, st: os.stat_result) -> ShippedFile:
        """The file at ``source`` as shipped; perf: the same object while its stat holds."""
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_mode)
        known = self._files.get(source)
        if known is not None and known[0] == sig and known[1].module == module:
            return known[1]
        digest, trusted = self._digest(source, st)
        file = ShippedFile(rel, st.st_mode & 0o777, st.st_size, digest, module, source)
        if trusted:
            self._files[source] = (sig, file)
        return file

    def read(self, file: ShippedFile) -> bytes:
        """The bytes of ``file``, as collected; :class:`ShipError` if it changed since."""
        with self._lock:
            data = self._data.get(file.digest)
            if data is not None:
                self._data.move_to_end(file.digest)
                return data
        data = _read(file.source, file.path)
        if xxhash.xxh3_128_hexdigest(data) != file.digest:
            raise ShipError(
                f"'{file.path}' changed while it was being sent to the workers; run again"
            )
        return data

    def _digest(self, source: str, st: os.stat_result) -> tuple[str, bool]:
        """The digest of the file at ``source``, and whether it may be remembered (see _settled)."""
        read_at = time.time_ns()
        data = _read(source, os.path.relpath(source, self.root))
        digest = xxhash.xxh3_128_hexdigest(data)
        if len(data) <= _KEEP_DATA and digest not in self._data:
            self._data[digest] = data
            self._kept += len(data)
            while self._kept > _KEPT_TOTAL:
                self._kept -= len(self._data.popitem(last=False)[1])
        return digest, _settled(st, read_at)

    def _modules(self) -> Iterator[str]:
        """Relative posix paths of the project's own Python files.

        perf: a directory is listed again only when its modification time changed (an
        entry was added, removed or renamed), so an unchanged tree costs a stat per
        directory.
        """
        stack = [(self.root, "")]
        while stack:
            directory, prefix = stack.pop()
            try:
                st = os.stat(directory)
            except OSError:
                continue
            sig = (st.st_mtime_ns, st.st_ino)
            known = self._dirs.get(directory)
            if known is None or known[0] != sig:
                listed_at = time.time_ns()
                subdirs, files = _list(directory)
                known = (sig, subdirs, files)
                if _settled(st, listed_at):
                    self._dirs[directory] = known
                else:
                    self._dirs.pop(directory, None)
            _, subdirs, files = known
            for name in files:
                yield prefix + name
            for name in subdirs:
                stack.append((os.path.join(directory, name), f"{prefix}{name}/"))

    def _argument_files(self, kwargs: Mapping[str, object]) -> Iterator[str]:
        """Relative paths of the files the File/Dir values among ``kwargs`` name."""
        from taskrun.errors import UsageError
        from taskrun.files import project_relative
        from taskrun.globs import walk_files

        for path in paths_in(list(kwargs.values())):
            try:
                rel = project_relative(path, Path(self.root)).as_posix()
            except UsageError:
                continue  # outside the project: the worker must have it where it is
            full = os.path.join(self.root, rel)
            if os.path.isdir(full):
                for name in walk_files(full, skip=False):
                    yield f"{rel}/{name}" if rel != "." else name
            elif os.path.exists(full):
                yield rel


class Parcels:
    """What calls ship, as parcels: each big file, and each big pack of small ones, sent once.

    A parcel is a dict that travels with the call (a backend may nest handles in it):
    ``outputs`` (the call's output globs), ``limit`` (bytes the outputs may add up to),
    ``packs`` (pickled lists of small files, the project's modules in one and the call's
    other files in another) and ``files`` (path, mode, digest) of the big files, whose bytes
    are ``blobs[digest]``; :func:`unpack` gives back the files. What is bigger than
    ``inline`` goes through ``send(data) -> handle`` (Dask: ``scatter``) once and is kept by
    content, for later calls, while ``alive(handle)`` holds (its data did not die with a
    worker), up to ``keep`` bytes (the oldest are let go first). Thread-safe.
    """

    def __init__(
        self,
        send: Callable[[bytes], Any],
        alive: Callable[[Any], bool],
        *,
        inline: int = _INLINE,
        keep: int = _HELD,
    ) -> None:
        self._send = send
        self._alive = alive
        self.inline = inline
        self.keep = keep
        self._lock = threading.Lock()
        self._projects: dict[str, ProjectFiles] = {}
        self._handles: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # key -> (handle, size)
        self._held = 0

    def build(self, call: Call, *, limit: int | None = None) -> dict[str, Any]:
        """The parcel of ``call``; :class:`ShipError` past ``limit`` (default SHIP_LIMIT)."""
        limit = SHIP_LIMIT if limit is None else limit
        with self._lock:
            project = self._projects.get(call.cwd)
            if project is None:
                project = self._projects[call.cwd] = ProjectFiles(call.cwd)
        files = project.collect(call.inputs, call.kwargs, call.outputs, limit=limit)
        big = [f for f in files if f.size > self.inline]
        small = [f for f in files if f.size <= self.inline]
        modules = [f for f in small if f.module]
        others = [f for f in small if not f.module]
        with self._lock:
            blobs = {
                f.digest: self._handle(f.digest, functools.partial(project.read, f)) for f in big
            }
            packs = [self._pack(project, group) for group in (modules, others) if group]
        return {
            "outputs": list(call.outputs),
            "limit": limit,
            "packs": packs,
            "files": [(f.path, f.mode, f.digest) for f in big],
            "blobs": blobs,
        }

    def _pack(self, project: ProjectFiles, group: list[ShippedFile]) -> Any:
        def make() -> bytes:
            wires = [(f.path, f.mode, project.read(f)) for f in group]
            return pickle.dumps(wires, protocol=pickle.HIGHEST_PROTOCOL)

        if sum(f.size for f in group) <= self.inline:
            return make()
        manifest = repr([(f.path, f.mode, f.digest) for f in group]).encode()
        return self._handle("pack-" + xxhash.xxh3_128_hexdigest(manifest), make)

    def _handle(self, key: str, make: Callable[[], bytes]) -> Any:
        """The handle of the bytes ``make()`` gives under ``key``, sent now if not before."""
        known = self._handles.get(key)
        if known is not None and self._alive(known[0]):
            self._handles.move_to_end(key)
            return known[0]
        if known is not None:
            del self._handles[key]
            self._held -= known[1]
        data = make()
        handle = self._send(data)
        self._handles[key] = (handle, len(data))
        self._held += len(data)
        while self._held > self.keep and len(self._handles) > 1:
            # Calls in flight hold their own handles: letting go only stops the reuse.
            self._held -= self._handles.popitem(last=False)[1][1]
        return handle


def unpack(parcel: Mapping[str, Any]) -> list[Wire]:
    """The files of a parcel made by :meth:`Parcels.build` (its handles resolved to bytes)."""
    found: list[Wire] = []
    for pack in parcel["packs"]:
        found.extend(pickle.loads(pack))
    blobs = parcel["blobs"]
    for rel, mode, digest in parcel["files"]:
        found.append((rel, mode, blobs[digest]))
    return found


def _list(directory: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sub-directories to walk and the Python files of ``directory``."""
    subdirs: list[str] = []
    files: list[str] = []
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return (), ()
    if any(e.name in _ENV_MARKERS for e in entries):
        return (), ()  # a virtual environment or conda env: installed packages, not ours
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and entry.name not in _NOT_MODULES:
                    subdirs.append(entry.name)
            elif entry.name.endswith(".py") and entry.is_file():
                files.append(entry.name)
        except OSError:
            continue
    return tuple(sorted(subdirs)), tuple(sorted(files))


def _settled(st: os.stat_result, at_ns: int) -> bool:
    """Whether what was read at ``at_ns`` can be trusted while the stat stays the same.

    A file (or directory) changed again within its time stamp's granularity keeps its
    stat; like git's racy-timestamp rule (see taskrun.files.StatCache), only entries whose
    newest time stamp is clearly older than the read are remembered.
    """
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    window = _COARSE_WINDOW_NS if st.st_mtime_ns % 1_000_000_000 == 0 else _FINE_WINDOW_NS
    return newest < at_ns - window


def _read(path: str, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ShipError(f"cannot read '{name}' to send it to the workers: {exc.strerror}") from None


def _too_much(what: str, total: int, limit: int, sizes: Sequence[tuple[str, int]]) -> str:
    largest = sorted(sizes, key=lambda item: (-item[1], item[0]))[:3]
    named = ", ".join(f"{rel} ({_mib(size)})" for rel, size in largest)
    return (
        f"{what} add up to {_mib(total)}, more than the {_mib(limit)} taskrun sends to or"
        f" from a worker that does not share the project directory (largest: {named});"
        " put the project on a file system the workers share (see docs/dask.md)"
    )


def _mib(size: int) -> str:
    if size < 1 << 10:
        return f"{size} bytes"
    if size < 1 << 20:
        return f"{size / (1 << 10):.1f} KiB"
    if size < 1 << 30:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size / (1 << 30):.1f} GiB"


# -- the worker: run in a scratch copy ------------------------------------------------------


def run_shipped(
    payload: bytes,
    root: str,
    files: Iterable[Wire],
    outputs: Sequence[str],
    *,
    scratch_in: str | None = None,
    capture: Capture = "fd",
    capture_path: str | None = None,
    limit: int = SHIP_LIMIT,
) -> tuple[bytes, list[Wire]]:
    """Run an encoded call in a fresh directory holding ``files``; its result and outputs.

    ``root`` is the driver's project root: File and Dir values in the product that point
    into the scratch directory by absolute path are given back under ``root``, as a local
    run would have returned them. The output files are those matching ``outputs`` and the
    File/Dir values of the product (a literal output not produced is left for the driver
    to report). The scratch directory (made in ``scratch_in``) is deleted afterwards, the
    working directory and ``sys.path`` are put back, and the project's modules forgotten.
    Raises :class:`ShipError` only when the files cannot be written; what the task does
    is in the result bytes.
    """
    files = list(files)
    scratch = materialise(files, scratch_in)
    try:
        previous: str | None = os.getcwd()
    except OSError:  # a working directory deleted under us
        previous = None
    collected: list[Wire] = []

    def then(outcome: Outcome) -> Outcome:
        # Frames of the scratch copy's modules are shown as the project's files.
        shown = outcome.traceback.replace(os.path.join(scratch, ""), os.path.join(root, ""))
        outcome = replace(outcome, traceback=shown)
        if not outcome.ok:
            return outcome  # a failed task sends nothing back, as locally nothing is stored
        collected.extend(collect_outputs(scratch, outputs, outcome.value, limit=limit))
        return replace(outcome, value=_rehome(outcome.value, scratch, root))

    # Code pickled by value keeps the project's file names (the task file): tracebacks read
    # their source lines from the shipped copies, under those names.
    sources = {
        os.path.join(root, *rel.split("/")): data for rel, _, data in files if rel.endswith(".py")
    }
    saved = {name: linecache.cache[name] for name in sources if name in linecache.cache}
    for name, data in sources.items():
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        linecache.cache[name] = (len(data), None, lines, name)  # mtime None: kept as it is
    try:
        result = run_pickled_then(
            payload,
            scratch,
            then,
            capture=capture,
            capture_path=capture_path,
            forget_project_modules=True,
        )
    finally:
        os.chdir(previous if previous is not None else tempfile.gettempdir())
        while scratch in sys.path:
            sys.path.remove(scratch)
        for key in [k for k in sys.path_importer_cache if str(k).startswith(scratch)]:
            del sys.path_importer_cache[key]
        for name in sources:
            linecache.cache.pop(name, None)
        linecache.cache.update(saved)
        shutil.rmtree(scratch, ignore_errors=True)
    return result, collected


def materialise(files: Iterable[Wire], parent: str | None = None) -> str:
    """A new temporary directory (in ``parent``) holding ``files``; its path."""
    from taskrun.globs import split_relative

    # The real path: the task's os.getcwd() gives it, and _rehome compares with it.
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="taskrun-call-", dir=parent))
    try:
        for rel, mode, data in files:
            parts, problem = split_relative(rel)
            if problem:
                raise ShipError(f"refused to write the shipped file '{rel}': {problem}")
            target = os.path.join(scratch, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode & 0o777)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ShipError(f"cannot write the task's files on the worker: {exc}") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch


def collect_outputs(
    scratch: str, outputs: Sequence[str], product: object, *, limit: int = SHIP_LIMIT
) -> list[Wire]:
    """The files under ``scratch`` matching ``outputs`` or named by File/Dir in ``product``.

    Files whose real path leads out of ``scratch`` are left out (the driver's capture
    step reports them missing). Raises :class:`ShipError` past ``limit`` bytes in all.
    """
    from taskrun.errors import UsageError
    from taskrun.files import project_relative
    from taskrun.globs import compile_pattern, expand

    found: set[str] = set()
    for text in outputs:
        found.update(expand(compile_pattern(text, "output"), scratch)[0])
    for path in paths_in(product):
        try:
            rel = project_relative(path, Path(scratch)).as_posix()
            found.update(expand(compile_pattern(rel, "product"), scratch)[0])
        except (UsageError, TaskrunError):
            continue  # outside the project, or the root itself: the driver says so
    real_root = os.path.join(os.path.realpath(scratch), "")
    collected: list[Wire] = []
    for rel in sorted(found):
        full = os.path.join(scratch, rel)
        if not os.path.realpath(full).startswith(real_root):
            continue
        try:
            with open(full, "rb") as f:
                data = f.read()
            mode = os.stat(full).st_mode & 0o777
        except OSError as exc:
            raise ShipError(
                f"output '{rel}' cannot be read on the worker: {exc.strerror}"
            ) from None
        collected.append((rel, mode, data))
    total = sum(len(data) for _, _, data in collected)
    if total > limit:
        sizes = [(rel, len(data)) for rel, _, data in collected]
        raise ShipError(_too_much("the task's output files", total, limit, sizes))
    return collected


def _rehome(value: Any, scratch: str, root: str) -> Any:
    """``value`` with File/Dir paths inside ``scratch`` moved to the same place under ``root``."""
    from taskrun.files import Dir, File

    if isinstance(value, (File, Dir)):
        text = os.fspath(value)
        if os.path.isabs(text):
            rel = os.path.relpath(text, scratch)
            if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
                return type(value)(os.path.normpath(os.path.join(root, rel)))
        return value
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        items = [_rehome(v, scratch, root) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return kind(items)
    if kind is dict:
        moved = {k: _rehome(v, scratch, root) for k, v in value.items()}
        return value if all(moved[k] is value[k] for k in value) else moved
    return value


# -- the driver: outputs back into the project ----------------------------------------------


def write_back(files: Sequence[Wire], root: str) -> None:
    """Write the output files a worker sent back into the project at ``root``.

    Validated as a cache restore is (no absolute path, no ``..``, no parent directory
    that is a symlink leading out of the project) before anything is written; each file
    goes to a temporary file beside its target, renamed into place; files already holding
    the same bytes are left alone. Raises :class:`ShipError`.
    """
    if not files:
        return
    from taskrun.files import restore_outputs

    records: list[tuple[str, str, int]] = []
    blobs: dict[str, bytes] = {}
    for rel, mode, data in files:
        digest = xxhash.xxh3_128_hexdigest(data)
        records.append((rel, digest, mode))
        blobs[digest] = data
    try:
        restore_outputs(records, Path(root), blobs.get)
    except TaskrunError as exc:
        raise ShipError(
            f"cannot write the output files the worker sent back into the project: {exc}"
        ) from None
