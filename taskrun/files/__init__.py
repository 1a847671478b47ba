"""Files as content: File/Dir, content hashing with a stat cache, output capture and restore.

The package holds three modules, imported here so ``taskrun.files`` keeps every name it
always had:

- :mod:`taskrun.files.paths` -- ``File``/``Dir``, the project-relative rule, external
  roots and taskrun's own directories;
- :mod:`taskrun.files.hashing` -- file and tree digests and the local :class:`StatCache`;
- :mod:`taskrun.files.outputs` -- capture of declared outputs, restore on a hit, ``clean``.

The glob syntax and the overlap check live in :mod:`taskrun.globs` (re-exported here).
"""

from __future__ import annotations

from typing import Any

from taskrun.files.hashing import StatCache, content_digest, file_digest, tree_digest
from taskrun.files.outputs import (
    BlobMissingError,
    CapturedFile,
    OutputError,
    RestoreReport,
    UnsafeEntryError,
    capture_outputs,
    clean_outputs,
    restore_outputs,
)
from taskrun.files.paths import (
    EXTERNAL_PREFIX,
    Dir,
    File,
    current_external_roots,
    external_base,
    external_key,
    external_roots,
    own_places,
    paths_in,
    project_relative,
)
from taskrun.globs import check_disjoint_outputs, expand_globs

__all__ = [
    "EXTERNAL_PREFIX",
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
    "current_external_roots",
    "expand_globs",
    "external_base",
    "external_key",
    "external_roots",
    "file_digest",
    "own_places",
    "paths_in",
    "project_relative",
    "restore_outputs",
    "tree_digest",
]

# Pickles (cached products, values shipped to workers) name a class by its module: keep
# the public path, so entries written before and after the split load either way.
for _cls in (
    BlobMissingError,
    CapturedFile,
    Dir,
    File,
    OutputError,
    RestoreReport,
    StatCache,
    UnsafeEntryError,
):
    _cls.__module__ = __name__
del _cls


def __getattr__(name: str) -> Any:
    # perf: `sh` lives in taskrun.shell; loading it lazily keeps subprocess and selectors
    # out of `import taskrun`.
    if name in ("sh", "ShResult"):
        from taskrun import shell

        return getattr(shell, name)
    raise AttributeError(f"module 'taskrun.files' has no attribute {name!r}")
