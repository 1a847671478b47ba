"""Import a task file into a fresh registry, turning every failure into a DefinitionError.

The module is executed under a private name and then removed from ``sys.modules``. That is
deliberate: cloudpickle pickles functions of modules it cannot import *by value*, which is
what the process and Dask executors need (a worker cannot import ``tasks.py`` by name).

Loading and running leave the process as they found it: the project's own modules (a
``helpers.py`` next to ``tasks.py``) are imported with the root first on ``sys.path``, then
taken out of ``sys.modules`` and kept by the registry; :func:`project_context` puts them
back (with the root on ``sys.path`` and as working directory) only while the project's
tasks are fingerprinted or run. So two projects with a same-named helper module load and
run correctly in one process, and ``sys.path`` does not grow with every project.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

from taskrun.errors import DefinitionError, TaskrunError
from taskrun.files import external_roots
from taskrun.modules import project_module_names
from taskrun.registry import DefinitionErrors, Registry
from taskrun.types import register_module_alias

__all__ = ["load_task_file", "project_context"]


def load_task_file(path: Path) -> Registry:
    """Execute ``path`` with a fresh active registry and return that registry."""
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"taskrun_taskfile_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"{path}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    registry = Registry()
    root = str(path.parent)
    # The project's own modules (helpers next to tasks.py) must be importable while the
    # file is executed; project_context makes them importable again while tasks run.
    saved_path = list(sys.path)
    before = set(sys.modules)
    sys.path.insert(0, root)
    # Dataclasses and typing look the module up while it executes.
    sys.modules[name] = module
    # Messages name the task file's classes as the user wrote them (tasks.Point).
    register_module_alias(name, path.stem)
    errors: list[str] = []
    try:
        with registry.activate(), registry.collecting_errors() as errors:
            spec.loader.exec_module(module)
    except DefinitionErrors as exc:
        errors = [*errors, *exc.errors]
    except TaskrunError as exc:
        errors = [*errors, exc.message]
    except SyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}"
        line = (exc.text or "").rstrip()
        pointer = f"\n    {line}" if line else ""
        raise DefinitionError(f"{where}: syntax error: {exc.msg}{pointer}") from None
    except Exception as exc:  # noqa: BLE001 - the task file is user code; any error names its line
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)
        ] or traceback.extract_tb(exc.__traceback__)[-1:]
        last = frames[-1] if frames else None
        where = f"{last.filename}:{last.lineno}" if last else str(path)
        errors = [
            *errors,
            f"{where}: importing the task file raised {type(exc).__name__}: {exc};"
            " fix the task file",
        ]
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = saved_path
        registry.project_modules = {
            n: sys.modules.pop(n) for n in _modules_under(path.parent, set(sys.modules) - before)
        }
    if errors:
        # Every definition error of the file at once (each names its task and line).
        raise DefinitionErrors(errors, source=str(path))
    registry.module = module
    return registry


def _modules_under(root: Path | str, names: set[str]) -> list[str]:
    """Those of ``names`` (in ``sys.modules``) that are the project's own Python files."""
    return project_module_names(root, names)


@contextlib.contextmanager
def project_context(
    root: Path,
    modules: Mapping[str, ModuleType] | None = None,
    external: Mapping[str, Path | str] | None = None,
) -> Iterator[None]:
    """Run with ROOT as working directory, first on ``sys.path``, its MODULES imported
    and its EXTERNAL roots (``[tool.taskrun] external``) declared.

    Everything is put back afterwards: the working directory, ``sys.path``, and
    ``sys.modules`` (the project's modules, and any other module under ROOT a task
    imported, are taken out again; a same-named module they displaced comes back).
    """
    modules = dict(modules or {})
    try:
        cwd: str | None = os.getcwd()
    except FileNotFoundError:  # the old working directory was deleted
        cwd = None
    saved_path = list(sys.path)
    before = set(sys.modules)
    displaced = {n: sys.modules[n] for n in modules if n in sys.modules}
    os.chdir(root)
    sys.path.insert(0, str(root))
    sys.modules.update(modules)
    try:
        with external_roots(external or {}):
            yield
    finally:
        if cwd is not None:
            with contextlib.suppress(OSError):  # gone meanwhile: nowhere to go back to
                os.chdir(cwd)
        sys.path[:] = saved_path
        for n in _modules_under(root, set(sys.modules) - before):
            del sys.modules[n]
        for n in modules:
            sys.modules.pop(n, None)
        sys.modules.update(displaced)
