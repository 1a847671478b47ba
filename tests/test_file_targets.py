"""File targets (`taskrun run build/report.txt`) and outputs templated by option values."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from taskrun.errors import DefinitionError
from taskrun.loader import load_task_file

RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]

TASKS = """
    import json
    from taskrun import File, task

    @task(outputs=["build/report.txt"])
    def report(top: int = 3) -> File:
        out = File("build/report.txt")
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"top {top}\\n")
        return out

    @task(outputs=["results/p_{p}.json"])
    def sweep(p: float = 0.5, label: str = "x") -> File:
        out = File(f"results/p_{p}.json")
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"p": p, "label": label}))
        return out

    @task
    def other() -> int:
        return 1
"""


def events(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def ran(result: Result) -> set[str]:
    return {e["task"] for e in events(result) if e["event"] == "ran"}


def test_a_declared_file_is_a_target(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """`taskrun run build/report.txt` runs the task whose outputs= declare that file."""
    root = write_project(tmp_path, TASKS)
    result = run_cli(root, "run", "build/report.txt", "--json")
    assert result.exit_code == 0, result.output
    assert ran(result) == {"report"}
    assert (root / "build/report.txt").read_text() == "top 3\n"
    dotted = run_cli(root, "run", "./build/report.txt", "-o", "top=4", "--json")
    assert dotted.exit_code == 0, dotted.output
    assert (root / "build/report.txt").read_text() == "top 4\n"


def test_an_undeclared_file_is_not_a_target(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A path no task declares: exit 2, saying it is neither a task nor a declared output."""
    root = write_project(tmp_path, TASKS)
    result = run_cli(root, "run", "build/other.txt")
    assert result.exit_code == 2
    assert "target 'build/other.txt'" in result.output
    assert "is neither a task nor a file a task declares in outputs=" in result.output


def test_a_templated_file_target_sets_the_option(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """`taskrun run results/p_0.3.json` runs sweep with p=0.3, as the file name spells."""
    root = write_project(tmp_path, TASKS)
    result = run_cli(root, "run", "results/p_0.3.json", "--json")
    assert result.exit_code == 0, result.output
    assert ran(result) == {"sweep"}
    assert json.loads((root / "results/p_0.3.json").read_text())["p"] == 0.3


def test_templated_outputs_keep_each_entry_to_its_own_files(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A sweep stores only the file of its own value; a hit restores one file, not all."""
    root = write_project(tmp_path, TASKS)
    for p in ("0.1", "0.2", "0.3"):
        assert run_cli(root, "run", "sweep", "-o", f"p={p}").exit_code == 0
    for p in ("0.1", "0.2", "0.3"):
        (root / f"results/p_{p}.json").unlink()
    again = run_cli(root, "run", "sweep", "-o", "p=0.2", "--json")
    cached = [e for e in events(again) if e["event"] == "cached"]
    assert cached and cached[0]["restored"] == 1
    assert sorted(p.name for p in (root / "results").iterdir()) == ["p_0.2.json"]


def test_clean_removes_every_value_of_a_templated_output(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """`taskrun clean sweep` removes the files of every value, not only the default's."""
    root = write_project(tmp_path, TASKS)
    for p in ("0.1", "0.2"):
        assert run_cli(root, "run", "sweep", "-o", f"p={p}").exit_code == 0
    result = run_cli(root, "clean", "sweep")
    assert result.exit_code == 0, result.output
    assert not (root / "results").exists()


def test_a_template_field_must_be_an_option(write_project: WriteProject, tmp_path: Path) -> None:
    """outputs=["out/{q}.txt"] without an option q is a definition error naming the options."""
    root = write_project(
        tmp_path,
        """
        from taskrun import File, task

        @task(outputs=["out/{pp}.txt"])
        def sweep(p: int = 1) -> File:
            return File(f"out/{p}.txt")
    """,
    )
    with pytest.raises(DefinitionError) as info:
        load_task_file(root / "tasks.py")
    message = str(info.value)
    assert "uses {pp}, which is not an option of the task (did you mean 'p'?)" in message


def test_a_value_that_leaves_the_folder_is_refused(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A value with '/' would name a file elsewhere: an invocation problem, nothing runs."""
    root = write_project(tmp_path, TASKS)
    result = run_cli(root, "run", "sweep", "-o", "label=x", "-o", "p=0.5")
    assert result.exit_code == 0
    bad = write_project(
        tmp_path / "bad",
        """
        from taskrun import File, task

        @task(outputs=["out/{name}.txt"])
        def make(name: str = "a") -> File:
            return File(f"out/{name}.txt")
    """,
    )
    result = run_cli(bad, "run", "-o", "name=../../etc/x")
    assert result.exit_code == 2
    assert "output pattern 'out/{name}.txt' of task 'make'" in result.output
    assert not (bad / "out").exists()


def test_overlapping_templates_are_a_definition_error(
    write_project: WriteProject, tmp_path: Path
) -> None:
    """Two tasks whose templated outputs can name the same file are refused at definition."""
    root = write_project(
        tmp_path,
        """
        from taskrun import File, task

        @task(outputs=["out/{a}.txt"])
        def one(a: str = "x") -> File:
            return File(f"out/{a}.txt")

        @task(outputs=["out/b.txt"])
        def two() -> File:
            return File("out/b.txt")
    """,
    )
    with pytest.raises(DefinitionError, match="can name the same file"):
        load_task_file(root / "tasks.py")
