"""Which imported modules are the project's own: the one rule the loader and the workers share.

A module is the project's when its file lies under the project root, except what lives in
a virtualenv inside the project, in taskrun's own checkout (when taskrun itself is the
project), or in a ``site-packages``/``dist-packages`` directory: those are installed
packages, and forgetting them (C extensions above all) breaks them. Only ``os`` and
``sys`` are imported here, so worker processes can use it without loading taskrun.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["project_module_names"]

_TASKRUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_module_names(
    root: str | os.PathLike[str], names: Iterable[str], *, pure_python: bool = False
) -> list[str]:
    """Those of NAMES (keys of ``sys.modules``) that are the project's own modules under
    ROOT; with PURE_PYTHON only ``.py`` files (a compiled module cannot be imported again)."""
    prefix = os.path.join(os.path.abspath(root), "")
    keep = tuple(
        os.path.join(os.path.abspath(p), "")
        for p in {sys.prefix, sys.exec_prefix, sys.base_prefix, _TASKRUN_DIR}
    )
    found = []
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file or (pure_python and not file.endswith(".py")):
            continue
        file = os.path.abspath(file)
        if not file.startswith(prefix) or file.startswith(keep):
            continue
        if f"{os.sep}site-packages{os.sep}" in file or f"{os.sep}dist-packages{os.sep}" in file:
            continue
        found.append(name)
    return found
