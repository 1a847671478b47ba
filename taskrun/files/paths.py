"""Paths: File and Dir, the project-relative rule, external roots, taskrun's own places.

``File`` and ``Dir`` are :class:`pathlib.Path` subclasses for paths relative to the
project root. Tasks run with the project root as their working directory, so a relative
``File`` opens the right file wherever taskrun was started.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
import re
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from taskrun.errors import UsageError
from taskrun.globs import check_outputs_avoid

__all__ = [
    "EXTERNAL_PREFIX",
    "Dir",
    "File",
    "current_external_roots",
    "external_base",
    "external_key",
    "external_roots",
    "own_places",
    "paths_in",
    "project_relative",
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

    def iterdir(self) -> Iterator[File | Dir]:
        """The entries of this directory, typed as File or Dir."""
        return map(_typed, super().iterdir())

    def glob(self, pattern: str, *args: Any, **kwargs: Any) -> Iterator[File | Dir]:
        """Entries matching PATTERN (pathlib syntax), typed as File or Dir."""
        return map(_typed, super().glob(pattern, *args, **kwargs))

    def rglob(self, pattern: str, *args: Any, **kwargs: Any) -> Iterator[File | Dir]:
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
            return f"{EXTERNAL_PREFIX}{name}" + (
                ""
                if rel == "."
                else "/" + PurePosixPath(pathlib.PurePath(rel).as_posix()).as_posix()
            )
    return None


def external_base(key: str) -> tuple[str, str] | None:
    """``@NAME/rest`` -> (the declared directory of NAME, ``rest``); None if NAME is unknown."""
    name, _, rest = key[len(EXTERNAL_PREFIX) :].partition("/")
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
