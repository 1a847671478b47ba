"""Files outside the project: declared in [tool.taskrun] external, tracked by content,
keyed by the root's name (not where it is mounted), never stored, restored or cleaned."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]

TASKS = """
    from taskrun import File, task

    @task(inputs=["@data/raw/*.csv"])
    def rows() -> int:
        return 0

    @task
    def size(source: File = File("data.csv")) -> int:
        return len(source.read_text())
"""


def events(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def states(result: Result) -> dict[str, str]:
    return {e["task"]: e["event"] for e in events(result) if e["event"] in ("ran", "cached")}


def project(write_project: WriteProject, where: Path, data: Path) -> Path:
    return write_project(
        where,
        TASKS,
        f"""
        [tool.taskrun]
        external = {{ data = "{data}" }}
    """,
    )


def shared_data(folder: Path) -> Path:
    (folder / "raw").mkdir(parents=True)
    (folder / "raw/a.csv").write_text("1,2\\n")
    (folder / "big.csv").write_text("x" * 100)
    return folder


def test_an_undeclared_path_names_the_fix(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """-o source=/elsewhere/x.csv without a declaration: exit 2, with the line to add."""
    data = shared_data(tmp_path / "shared")
    root = write_project(tmp_path / "p", TASKS)
    result = run_cli(root, "run", "size", "-o", f"source={data / 'big.csv'}")
    assert result.exit_code == 2
    assert f'[tool.taskrun] external = {{ shared = "{data}" }}' in result.output


def test_a_declared_file_option_is_tracked_by_content(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A File option under a declared root: runs, hits, reruns when its content changes."""
    data = shared_data(tmp_path / "shared")
    root = project(write_project, tmp_path / "p", data)
    source = f"source={data / 'big.csv'}"
    first = run_cli(root, "run", "size", "-o", source, "--json")
    assert first.exit_code == 0, first.output
    assert states(first) == {"size": "ran"}
    assert states(run_cli(root, "run", "size", "-o", source, "--json")) == {"size": "cached"}
    (data / "big.csv").write_text("y" * 100)
    again = run_cli(root, "run", "size", "-o", source, "--json")
    assert states(again) == {"size": "ran"}
    reasons = next(e for e in events(again) if e["event"] == "ran")["reasons"]
    assert reasons == ["option 'source' changed: the content of '@data/big.csv' changed"]


def test_entries_are_shared_across_mount_points(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """Two checkouts with the same data mounted at different paths hit each other's entries."""
    first_data = shared_data(tmp_path / "mnt1/shared")
    second_data = tmp_path / "elsewhere/data"
    shutil.copytree(first_data, second_data)
    cache = tmp_path / "cache"
    one = project(write_project, tmp_path / "machine1/proj", first_data)
    two = project(write_project, tmp_path / "machine2/proj", second_data)
    common = ["--cache-dir", str(cache), "--json"]
    result = run_cli(one, "run", "rows", "size", "-o", f"source={first_data / 'big.csv'}", *common)
    assert result.exit_code == 0, result.output
    assert states(result) == {"rows": "ran", "size": "ran"}
    other = run_cli(two, "run", "rows", "size", "-o", f"source={second_data / 'big.csv'}", *common)
    assert other.exit_code == 0, other.output
    assert states(other) == {"rows": "cached", "size": "cached"}


def test_external_inputs_rerun_on_change(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """inputs=["@data/raw/*.csv"]: a new or edited file there reruns the task, by its name."""
    data = shared_data(tmp_path / "shared")
    root = project(write_project, tmp_path / "p", data)
    assert states(run_cli(root, "run", "rows", "--json")) == {"rows": "ran"}
    assert states(run_cli(root, "run", "rows", "--json")) == {"rows": "cached"}
    (data / "raw/b.csv").write_text("3,4\\n")
    again = run_cli(root, "run", "rows", "--json")
    reasons = next(e for e in events(again) if e["event"] == "ran")["reasons"]
    assert reasons == ["input '@data/raw/b.csv' added"]


def test_undeclared_external_inputs_say_how_to_declare(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """inputs=["@data/..."] without the declaration: exit 2 naming the setting."""
    root = write_project(tmp_path / "p", TASKS)
    result = run_cli(root, "run", "rows")
    assert result.exit_code == 2
    assert "nothing was run" in result.output
    assert "inputs pattern '@data/raw/*.csv' of task 'rows'" in result.output
    assert '[tool.taskrun] external = { data = "/path/to/folder" }' in result.output


def test_external_files_are_never_stored_restored_or_cleaned(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A product naming an external File: the file is not captured, restored or cleaned."""
    data = shared_data(tmp_path / "shared")
    root = write_project(
        tmp_path / "p",
        f"""
        from taskrun import File, task

        @task
        def pick() -> File:
            return File("{data / "big.csv"}")
    """,
        f"""
        [tool.taskrun]
        external = {{ data = "{data}" }}
    """,
    )
    first = run_cli(root, "run", "--json")
    assert first.exit_code == 0, first.output
    (data / "big.csv").unlink()
    second = run_cli(root, "run", "--json")
    assert second.exit_code == 0, second.output
    cached = [e for e in events(second) if e["event"] == "cached"]
    assert cached and cached[0]["restored"] == 0
    assert not (data / "big.csv").exists()  # not restored
    assert run_cli(root, "clean").exit_code == 0
    assert (data / "raw/a.csv").exists()


def test_bad_declarations_are_config_errors(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A relative folder, or one inside the project, is refused with the key named."""
    root = write_project(
        tmp_path / "p",
        TASKS,
        """
        [tool.taskrun]
        external = { data = "relative/dir" }
    """,
    )
    result = run_cli(root, "list")
    assert result.exit_code == 2 and "must be an absolute path" in result.output
