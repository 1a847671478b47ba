"""The package layout: moved modules keep their old import paths; imports flow one way."""

from __future__ import annotations

import ast
import importlib
import pickle
from pathlib import Path

import pytest

import taskrun

PACKAGE = Path(taskrun.__file__).parent


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("taskrun.project", "taskrun.api", "run"),
        ("taskrun.project", "taskrun.api", "prepare_run"),
        ("taskrun.project", "taskrun.cli_run", "run_from_cli"),
        ("taskrun.project", "taskrun.cli_run", "load_overrides"),
        ("taskrun.report", "taskrun.report_explain", "explain_lines"),
        ("taskrun.report", "taskrun.report_explain", "explain_json"),
        ("taskrun.report", "taskrun.report_explain", "change_text"),
        ("taskrun.files", "taskrun.files.paths", "File"),
        ("taskrun.files", "taskrun.files.hashing", "StatCache"),
        ("taskrun.files", "taskrun.files.outputs", "restore_outputs"),
    ],
)
def test_old_import_path_gives_the_moved_object(old: str, new: str, name: str) -> None:
    """A name moved to another module is still importable from where it was."""
    moved = getattr(importlib.import_module(new), name)
    assert getattr(importlib.import_module(old), name) is moved


def test_unknown_name_of_a_shim_module_is_an_attribute_error() -> None:
    """The lazy re-exports do not swallow typos."""
    for module in ("taskrun.project", "taskrun.report", "taskrun.files"):
        with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
            getattr(importlib.import_module(module), "nosuch")  # noqa: B009


def test_file_pickles_under_its_public_path() -> None:
    """File/Dir pickle as taskrun.files.File, so entries from before the split still load."""
    from taskrun.files import Dir, File

    data = pickle.dumps([File("a.txt"), Dir("src")])
    assert b"taskrun.files.paths" not in data
    assert pickle.loads(data) == [File("a.txt"), Dir("src")]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_but_the_cli_imports_the_cli() -> None:
    """Imports flow one way: no module outside cli*.py imports taskrun.cli or its glue."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name.startswith(("cli", "__main__")):
            continue
        cli = {n for n in _imports(path) if n.startswith("taskrun.cli")}
        if cli:
            offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(cli)}")
    assert offenders == []
