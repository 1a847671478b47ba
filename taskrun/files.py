"""Files as content: the File and Dir path types.

``File`` and ``Dir`` are :class:`pathlib.Path` subclasses for paths relative to the
project root. Tasks run with the project root as their working directory, so a relative
``File`` opens the right file wherever taskrun was started.
"""

from __future__ import annotations

import pathlib

__all__ = ["Dir", "File"]

# perf: subclass the concrete flavour (PosixPath/WindowsPath); `pathlib.Path` itself can
# only be subclassed directly from Python 3.12 on.
_ConcretePath = type(pathlib.Path())


class File(_ConcretePath):  # type: ignore[valid-type,misc]
    """A file, by path relative to the project root; fingerprinted by content."""

    __slots__ = ()


class Dir(_ConcretePath):  # type: ignore[valid-type,misc]
    """A directory, by path relative to the project root; fingerprinted by its tree."""

    __slots__ = ()
