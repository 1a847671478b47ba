"""Import a task file into a fresh registry, turning every failure into a DefinitionError.

The module is executed under a private name and then removed from ``sys.modules``. That is
deliberate: cloudpickle pickles functions of modules it cannot import *by value*, which is
what the process and Dask executors need (a worker cannot import ``tasks.py`` by name).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path

from taskrun.errors import DefinitionError, TaskrunError
from taskrun.registry import DefinitionErrors, Registry
from taskrun.types import register_module_alias

__all__ = ["load_task_file"]


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
    # The project's own modules (helpers next to tasks.py) must be importable, while the
    # file is executed and later, when a task imports one inside its body; so the root
    # stays on sys.path.
    if root not in sys.path:
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
    except Exception as exc:
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
    if errors:
        # Every definition error of the file at once (each names its task and line).
        raise DefinitionErrors(errors, source=str(path))
    registry.module = module
    return registry
