"""Small things a new user trips over (issue 17): each fixed, each pinned here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]
REPO = Path(__file__).resolve().parent.parent

SETTINGS = """
    from taskrun import task

    @task(retries=2, timeout=5.0, env=["HOME"], version="3")
    def numbers(ns: list[int] = [1, 2, 3], d: dict[str, int] = {"a": 1}) -> list[int]:
        return ns

    @task(cache=False)
    def now() -> str:
        return "x"
"""


def test_list_shows_the_settings(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """cache=False, retries, timeout, env and version are listed (text and JSON)."""
    root = write_project(tmp_path, SETTINGS)
    text = run_cli(root, "list").output
    assert "settings: version=3, env=HOME, retries=2, timeout=5.0" in text
    assert "settings: cache=false" in text
    doc = {t["name"]: t for t in json.loads(run_cli(root, "list", "--json").output)}
    assert doc["now"]["cache"] is False and doc["numbers"]["retries"] == 2
    assert doc["numbers"]["env"] == ["HOME"] and doc["numbers"]["version"] == "3"


def test_list_one_task(run_cli: RunCli, write_project: WriteProject, tmp_path: Path) -> None:
    """`taskrun list TASK` shows only that task; a misspelt one is exit 2 with a suggestion."""
    root = write_project(tmp_path, SETTINGS)
    result = run_cli(root, "list", "now")
    assert result.exit_code == 0 and result.output.startswith("now")
    assert "numbers" not in result.output
    wrong = run_cli(root, "list", "nmbers")
    assert wrong.exit_code == 2 and "did you mean 'numbers'?" in wrong.output


def test_list_defaults_in_their_own_types(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A list[int] default reads [1, 2, 3], not ["1", "2", "3"]; and parses back."""
    root = write_project(tmp_path, SETTINGS)
    text = run_cli(root, "list", "numbers").output
    assert "(default [1, 2, 3])" in text and '(default {"a": 1})' in text
    result = run_cli(root, "run", "numbers", "-o", "ns=[1, 2, 3]", "--dry-run")
    assert result.exit_code == 0, result.output


def test_clean_removes_the_directories_it_empties(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """Outputs under build/out/ go, and so do build/out and build; a user's empty dir stays."""
    root = write_project(
        tmp_path,
        """
        from taskrun import File, task

        @task(outputs=["build/out/**"])
        def make() -> list[File]:
            files = [File("build/out/a.txt"), File("build/out/deep/b.txt")]
            for f in files:
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("x")
            return files
    """,
    )
    (root / "keep-me").mkdir()
    assert run_cli(root, "run").exit_code == 0
    result = run_cli(root, "clean")
    assert result.exit_code == 0, result.output
    assert not (root / "build").exists()
    assert (root / "keep-me").is_dir()


def test_keep_going_is_not_suggested_for_dependents(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """After a failure, a dependent is skipped 'upstream failed'; only others get the hint."""
    root = write_project(
        tmp_path,
        """
        from taskrun import task

        @task
        def broken() -> int:
            raise RuntimeError("boom")

        @task(deps=[broken])
        def after(broken: int) -> int:
            return broken

        @task
        def gate() -> int:
            return 1

        @task(deps=[gate])
        def other(gate: int) -> int:
            return gate
    """,
    )
    result = run_cli(root, "run", "after", "other", "-j", "1", "--executor", "inline", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    skipped = {e["task"]: e["reason"] for e in events if e["event"] == "skipped"}
    assert skipped["after"] == "upstream 'broken' failed"
    assert skipped["gate"] == "stopped after 'broken' failed (use --keep-going to go on)"
    assert "--keep-going" not in skipped["after"]


def test_dir_option_change_names_the_file(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A Dir option whose content changed says which files changed, came or went."""
    root = write_project(
        tmp_path,
        """
        from taskrun import Dir, task

        @task
        def sources(root: Dir = Dir("src")) -> list[str]:
            return sorted(p.name for p in root.glob("*.txt"))
    """,
        files={"src/a.txt": "a", "src/b.txt": "b"},
    )
    assert run_cli(root, "run").exit_code == 0
    (root / "src/b.txt").write_text("changed")
    (root / "src/c.txt").write_text("new")
    (root / "src/a.txt").unlink()
    result = run_cli(root, "run")
    assert (
        "option 'root' changed: the content of 'src' changed"
        " (src/b.txt changed, src/c.txt added, src/a.txt removed)"
    ) in result.output


def test_option_named_like_a_task_suggests_deps(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """`def total(numbers: list[int])` without deps= points at deps=[numbers]."""
    root = write_project(
        tmp_path,
        """
        from taskrun import task

        @task
        def numbers() -> list[int]:
            return [1, 2]

        @task
        def total(numbers: list[int]) -> int:
            return sum(numbers)
    """,
    )
    result = run_cli(root, "run", "total")
    assert result.exit_code == 2
    assert "add deps=[numbers] to @task(...) of 'total'" in result.output


MISNAMED_DEP = """
from taskrun import task

@task
def sources() -> list[str]:
    return ["a.c", "b.c"]

@task(deps=[sources])
def count(srcs: list[str]) -> int:
    return len(srcs)
"""


def test_misnamed_dependency_parameter_suggests_the_fix(tmp_path: Path) -> None:
    """`@task(deps=[sources]) def count(srcs)`: the error says to rename it or map it."""
    (tmp_path / "tasks.py").write_text(MISNAMED_DEP)
    argv = [sys.executable, "-m", "taskrun", "run", "count"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "option 'srcs' of task 'count'" in done.stderr
    assert (
        "is required and has no value; pass -o count.srcs=VALUE (list[str]); or, if it"
        " should receive the product of task 'sources', rename the parameter to 'sources'"
        ' or write deps={"srcs": sources}'
    ) in done.stderr
    # The suggested fix works as written.
    fixed = MISNAMED_DEP.replace("deps=[sources]", 'deps={"srcs": sources}')
    (tmp_path / "tasks.py").write_text(fixed)
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_readme_quickstart_leaves_the_shell_where_it_was(tmp_path: Path) -> None:
    """The Quickstart's first command runs the example in a subshell: `pwd` is unchanged."""
    readme = (REPO / "README.md").read_text()
    first = re.search(
        r"```sh\n(python3 -m venv .venv && .venv/bin/pip install -q -e \. .*)\n", readme
    )
    assert first is not None
    # The install is what the test suite's own environment already did: skip it, and give
    # the example the taskrun that is installed here.
    command = first[1].replace("python3 -m venv .venv && .venv/bin/pip install -q -e . && ", "")
    shutil.copytree(
        REPO / "examples/pipeline",
        tmp_path / "examples/pipeline",
        ignore=shutil.ignore_patterns(".taskrun", "build"),
    )
    (tmp_path / ".venv/bin").mkdir(parents=True)
    taskrun = tmp_path / ".venv/bin/taskrun"
    taskrun.write_text(f'#!/bin/sh\nexec {sys.executable} -m taskrun "$@"\n')
    taskrun.chmod(0o755)
    out = subprocess.run(
        ["bash", "-c", f"{command} && pwd"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "CI": "true"},
    )
    assert out.returncode == 0, out.stderr
    assert "4 tasks: 4 cached" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path)


def test_dask_doc_says_shipping_can_be_forced() -> None:
    """docs/dask.md no longer says shipping cannot be forced from the command line."""
    text = (REPO / "docs/dask.md").read_text()
    assert "cannot be forced from the command line" not in text
    assert "--dask-ship-files always" in text
