"""The command line through CliRunner (every command and mode) and, where only a real
process shows it, through subprocesses (exit codes, non-terminal output, a real terminal)."""

from __future__ import annotations

import json
import linecache
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import taskrun_process
from click.testing import Result

# The fixtures' types (see conftest.py); not imported, so the tests need no package.
RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]

PROJECT = '''
    import os
    from typing import Literal
    from taskrun import task, File

    def note(name):
        with open("runs.log", "a") as fh:
            fh.write(name + "\\n")

    def helper(x):
        return x * 2

    @task
    def numbers(n: int = 3) -> list[int]:
        """The first N integers."""
        note("numbers")
        print("making", n, "numbers")
        return list(range(n))

    @task(deps=[numbers], inputs=["data/in.txt"], outputs=["build/report.txt"], env=["GREETING"])
    def report(numbers: list[int], style: Literal["plain", "fancy"] = "plain") -> File:
        """Write the report."""
        note("report")
        os.makedirs("build", exist_ok=True)
        with open("data/in.txt") as fh:
            text = fh.read().strip()
        with open("build/report.txt", "w") as fh:
            fh.write(f"{style}: {text} {[helper(x) for x in numbers]}\\n")
        return File("build/report.txt")
'''

RAN = re.compile(r"^ran +(\S+) \([\d.]+s\): (.*)$", re.M)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def proj(tmp_path: Path, write_project: WriteProject) -> Path:
    """The two-task project above, with its input file."""
    return write_project(tmp_path / "proj", PROJECT, files={"data/in.txt": "hello\n"})


def ran(root: Path) -> list[str]:
    """Tasks that really executed since the log was last cleared."""
    log = root / "runs.log"
    return log.read_text().split() if log.exists() else []


def reset(root: Path) -> None:
    (root / "runs.log").unlink(missing_ok=True)


def reasons(output: str) -> dict[str, str]:
    """task -> the reason its `ran` line gives."""
    return dict(RAN.findall(output))


def edit(path: Path, old: str, new: str) -> None:
    """Edit a file of the project, as a user would between two runs."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    # A real `taskrun` is a new process per run. In this one, linecache holds the task file
    # as first read; the code walk re-checks it by size and mtime once per run, but an edit
    # of the same size within the clock's granularity would look unchanged: forget it.
    linecache.clearcache()


def cold(run_cli: RunCli, root: Path) -> None:
    result = run_cli(root, "run")
    assert result.exit_code == 0, result.output
    reset(root)


# -- run -----------------------------------------------------------------------------------
def test_run_cold_then_all_cached(run_cli: RunCli, proj: Path) -> None:
    """A second run hits every task, restores nothing needlessly, and says so."""
    first = run_cli(proj, "run")
    assert first.exit_code == 0, first.output
    assert "2 tasks: 0 cached, 2 ran, 0 failed" in first.output
    assert (proj / "build/report.txt").read_text() == "plain: hello [0, 2, 4]\n"
    reset(proj)
    second = run_cli(proj, "run")
    assert second.exit_code == 0, second.output
    assert second.output.splitlines()[:-1] == ["cached   2 tasks"]  # counted, not listed
    assert "2 tasks: 2 cached, 0 ran, 0 failed" in second.output
    assert ran(proj) == []
    verbose = run_cli(proj, "run", "-v")
    assert "cached   numbers" in verbose.output and "cached   report" in verbose.output


def test_task_output_is_shown_with_its_task_name(run_cli: RunCli, proj: Path) -> None:
    """What a task prints appears under its `ran` line, prefixed with its name."""
    result = run_cli(proj, "run")
    assert "numbers | making 3 numbers" in result.output


def test_reason_no_entry(run_cli: RunCli, proj: Path) -> None:
    """A task never run before says `no entry`."""
    result = run_cli(proj, "run")
    assert reasons(result.output) == {"numbers": "no entry", "report": "no entry"}


def test_reason_option_changed(run_cli: RunCli, proj: Path) -> None:
    """An option set on the command line: old and new value."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", "-o", "style=fancy")
    assert reasons(result.output) == {"report": "option 'style' changed: 'plain' -> 'fancy'"}
    assert ran(proj) == ["report"]


def test_reasons_compare_with_the_entry_last_used(proj: Path) -> None:
    """After going back to an earlier value (a hit on an older entry), the next miss is
    compared with that entry, not with the newest one stored; a run that changes nothing
    rewrites no pointer."""

    def taskrun(*args: str) -> str:
        proc = taskrun_process(proj, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    taskrun("run", "numbers", "-o", "n=8")
    taskrun("run", "numbers", "-o", "n=3")
    assert "cached   numbers" in taskrun("run", "numbers", "-o", "n=8")  # back to 8: a hit
    explained = taskrun("explain", "numbers", "-o", "n=7")
    assert "  - option 'n' changed: 8 -> 7" in explained, explained
    assert reasons(taskrun("run", "numbers", "-o", "n=7")) == {
        "numbers": "option 'n' changed: 8 -> 7"
    }
    explained = taskrun("explain", "numbers", "-o", "n=3")
    assert "numbers: cached (another entry than the one it last used, which differs:)" in explained
    assert "  - option 'n' changed: 7 -> 3" in explained

    def pointer_written() -> float:
        import sqlite3

        db = sqlite3.connect(proj / ".taskrun" / "cache" / "cache.db")
        try:
            (when,) = db.execute(
                "SELECT store_time FROM Cache WHERE key = 'task:numbers'"
            ).fetchone()
        finally:
            db.close()
        return float(when)

    before = pointer_written()
    assert "cached   numbers" in taskrun("run", "numbers", "-o", "n=7")
    assert pointer_written() == before


def test_reason_inline_assignment(run_cli: RunCli, proj: Path) -> None:
    """`taskrun run report style=fancy` is the same as -o."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", "report", "report.style=fancy")
    assert reasons(result.output) == {"report": "option 'style' changed: 'plain' -> 'fancy'"}


def test_reason_helper_changed(run_cli: RunCli, proj: Path) -> None:
    """Editing a helper the task calls reruns it, naming the helper."""
    cold(run_cli, proj)
    edit(proj / "tasks.py", "return x * 2", "return x * 3")
    result = run_cli(proj, "run")
    assert reasons(result.output) == {"report": "code of helper 'helper' changed"}


def test_reason_task_code_changed(run_cli: RunCli, proj: Path) -> None:
    """Editing the task's own body names the task; a comment does not count."""
    cold(run_cli, proj)
    edit(proj / "tasks.py", "return list(range(n))", "return list(range(n))  # same")
    assert run_cli(proj, "run").exit_code == 0 and ran(proj) == []
    edit(proj / "tasks.py", "return list(range(n))  # same", "return [*range(n)]")
    result = run_cli(proj, "run")
    assert reasons(result.output)["numbers"] == "code of 'numbers' changed"


def test_reason_input_changed(run_cli: RunCli, proj: Path) -> None:
    """Editing a declared input file reruns its reader, naming the file."""
    cold(run_cli, proj)
    (proj / "data/in.txt").write_text("bye\n")
    result = run_cli(proj, "run")
    assert reasons(result.output) == {"report": "input 'data/in.txt' changed"}


def test_reason_upstream_changed(run_cli: RunCli, proj: Path) -> None:
    """A dependency whose product changed is named."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", "-o", "n=4")
    assert reasons(result.output) == {
        "numbers": "option 'n' changed: 3 -> 4",
        "report": "upstream 'numbers' changed",
    }


def test_reason_env_changed(run_cli: RunCli, proj: Path) -> None:
    """A declared environment variable that changed is named (its value is not shown)."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", env={"GREETING": "s3cret"})
    assert reasons(result.output) == {"report": "env 'GREETING' changed"}
    assert "s3cret" not in result.output


def test_reason_forced(run_cli: RunCli, proj: Path) -> None:
    """--force reruns a task that would hit, saying `forced`."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", "--force", "numbers")
    assert reasons(result.output)["numbers"] == "forced"
    all_forced = run_cli(proj, "run", "--force-all")
    assert reasons(all_forced.output) == {"numbers": "forced", "report": "forced"}


def test_force_unknown_task_is_a_usage_error(run_cli: RunCli, proj: Path) -> None:
    """--force with a misspelt task: exit 2 with a suggestion."""
    result = run_cli(proj, "run", "--force", "numbrs")
    assert result.exit_code == 2
    assert "did you mean 'numbers'?" in result.output


def test_quiet_and_verbose(run_cli: RunCli, proj: Path) -> None:
    """-q keeps the summary only; -v adds start lines and cached tasks."""
    quiet = run_cli(proj, "run", "-q")
    assert len(quiet.output.splitlines()) == 1 and "2 tasks:" in quiet.output
    assert run_cli(proj, "run", "-qq").output == ""
    verbose = run_cli(proj, "run", "-v", "--force", "report")
    assert "start    report: forced" in verbose.output


def test_run_json_events_and_summary(run_cli: RunCli, proj: Path) -> None:
    """--json: one object per line, run-started first, the summary last."""
    result = run_cli(proj, "run", "--json")
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert docs[0]["event"] == "run-started" and docs[0]["tasks"] == ["numbers", "report"]
    assert docs[-1]["event"] == "summary" and docs[-1]["ok"] is True
    ran_events = [d for d in docs if d["event"] == "ran"]
    assert [d["reasons"] for d in ran_events] == [["no entry"], ["no entry"]]
    assert ran_events[0]["output"] == "making 3 numbers\n"


def test_failing_task_exit_1_with_output_and_traceback(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject
) -> None:
    """A task that raises: exit 1, its output and its traceback at the end."""
    root = write_project(
        tmp_path,
        """
        from taskrun import task

        @task
        def boom() -> int:
            print("about to fail")
            raise ValueError("no good")
    """,
    )
    result = run_cli(root, "run")
    assert result.exit_code == 1
    assert "failed   boom: ValueError: no good" in result.output
    tail = result.output[result.output.index("--- boom failed") :]
    assert "[boom] about to fail" in tail
    assert 'raise ValueError("no good")' in tail
    assert "taskrun/" not in tail  # trimmed to the user's frames


def test_keep_going_runs_independent_tasks(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject
) -> None:
    """--keep-going: the other branch still runs; the failure's dependents are skipped."""
    root = write_project(
        tmp_path,
        """
        from taskrun import task

        @task
        def bad() -> int:
            raise RuntimeError("x")

        @task(deps=[bad])
        def after(bad: int) -> int:
            return bad

        @task
        def good() -> int:
            return 1
    """,
    )
    result = run_cli(root, "run", "--keep-going", "--executor", "inline")
    assert result.exit_code == 1
    assert "ran      good" in result.output
    assert "skipped  after: upstream 'bad' failed" in result.output


# -- dry run -------------------------------------------------------------------------------
def test_dry_run_says_hit_or_run_and_why_and_runs_nothing(run_cli: RunCli, proj: Path) -> None:
    """--dry-run after a change: the hit, the miss with its reason, no execution."""
    cold(run_cli, proj)
    (proj / "data/in.txt").write_text("changed\n")
    result = run_cli(proj, "run", "--dry-run")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "cached   numbers",
        "run      report: input 'data/in.txt' changed",
        "dry run: 2 tasks: 1 cached, 1 would run (nothing was run)",
    ]
    assert ran(proj) == []


def test_dry_run_cold_writes_nothing(run_cli: RunCli, proj: Path) -> None:
    """A dry run on a fresh project creates no cache directory."""
    result = run_cli(proj, "run", "--dry-run")
    assert "run      numbers: no entry" in result.output
    assert "run      report: upstream 'numbers' will run" in result.output
    assert not (proj / ".taskrun").exists()


def test_dry_run_json(run_cli: RunCli, proj: Path) -> None:
    """--dry-run --json: planned objects, then the plan summary."""
    cold(run_cli, proj)
    result = run_cli(proj, "run", "--dry-run", "--json", "-o", "n=5")
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert [(d["task"], d["action"]) for d in docs[:-1]] == [("numbers", "run"), ("report", "run")]
    assert docs[0]["reasons"] == ["option 'n' changed: 3 -> 5"]
    assert docs[-1] == {"event": "plan-summary", "total": 2, "cached": 0, "run": 2}
    assert ran(proj) == []


# -- explain -------------------------------------------------------------------------------
def test_explain_shows_each_change_with_old_and_new(run_cli: RunCli, proj: Path) -> None:
    """explain: per task, hit or run, and each changed component old -> new."""
    cold(run_cli, proj)
    (proj / "data/in.txt").write_text("changed\n")
    result = run_cli(proj, "explain", "report", "-o", "style=fancy")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "numbers: cached"
    assert lines[1] == "report: would run"
    assert lines[2] == "  - option 'style' changed: 'plain' -> 'fancy'"
    assert re.fullmatch(r"  - input 'data/in.txt' changed: [0-9a-f]{12} -> [0-9a-f]{12}", lines[3])
    assert lines[-1].startswith("2 tasks: 1 cached, 1 would run")
    assert ran(proj) == []


def test_explain_upstream_that_will_run(run_cli: RunCli, proj: Path) -> None:
    """A dependent of a task that will run: its upstream product is not known yet."""
    cold(run_cli, proj)
    result = run_cli(proj, "explain", "-o", "n=9")
    assert "  - option 'n' changed: 3 -> 9" in result.output
    assert "upstream 'numbers' runs first, so its product is not known yet" in result.output


def test_explain_cold(run_cli: RunCli, proj: Path) -> None:
    """Nothing recorded yet: every task says so; no cache is created."""
    result = run_cli(proj, "explain")
    assert "numbers: would run\n  - no entry: nothing recorded for this task yet" in result.output
    assert not (proj / ".taskrun").exists()


def test_explain_json(run_cli: RunCli, proj: Path) -> None:
    """explain --json: changes as kind, name, old, new."""
    cold(run_cli, proj)
    (proj / "data/in.txt").write_text("changed\n")
    doc = json.loads(run_cli(proj, "explain", "--json").output)
    report = doc["tasks"][1]
    assert report["task"] == "report" and report["action"] == "run"
    change = report["changes"][0]
    assert (change["kind"], change["name"]) == ("input", "data/in.txt")
    assert all(re.fullmatch("[0-9a-f]{32}", change[k]) for k in ("old", "new"))
    assert change["old"] != change["new"]
    assert doc["cached"] == 1 and doc["run"] == 1


def test_explain_bad_option_is_exit_2(run_cli: RunCli, proj: Path) -> None:
    """explain validates options like run does."""
    result = run_cli(proj, "explain", "-o", "style=bold")
    assert result.exit_code == 2
    assert "option 'style' of task 'report'" in result.output


# -- list and graph ------------------------------------------------------------------------
def test_list_text(run_cli: RunCli, proj: Path) -> None:
    """list: each task with summary, needs, options with type and default, files."""
    result = run_cli(proj, "list")
    assert result.exit_code == 0
    out = result.output
    assert "numbers  The first N integers." in out
    assert "-o numbers.n=<int>  (default 3)" in out
    assert "needs: numbers" in out
    assert "inputs: data/in.txt" in out and "outputs: build/report.txt" in out
    assert "\x1b" not in out


def test_list_json(run_cli: RunCli, proj: Path) -> None:
    """list --json: machine-readable tasks."""
    doc = json.loads(run_cli(proj, "list", "--json").output)
    assert [t["name"] for t in doc] == ["numbers", "report"]
    assert doc[1]["deps"] == ["numbers"]
    style = doc[1]["options"][0]
    assert style["name"] == "style" and style["default"] == "plain" and not style["required"]
    assert doc[1]["outputs"] == ["build/report.txt"]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("dot", '"numbers" -> "report";'),
        ("mermaid", "t0 --> t1"),
    ],
)
def test_graph_text_formats(run_cli: RunCli, proj: Path, fmt: str, expected: str) -> None:
    """graph renders dot and mermaid."""
    result = run_cli(proj, "graph", "--format", fmt)
    assert result.exit_code == 0 and expected in result.output


def test_graph_json_of_a_target(run_cli: RunCli, proj: Path) -> None:
    """graph TARGET keeps only what the target needs."""
    doc = json.loads(run_cli(proj, "graph", "numbers", "--format", "json").output)
    assert doc == {"nodes": [{"name": "numbers", "deps": []}], "edges": []}


def test_graph_unknown_target(run_cli: RunCli, proj: Path) -> None:
    """A misspelt target: exit 2 with a suggestion."""
    result = run_cli(proj, "graph", "reprt")
    assert result.exit_code == 2 and "did you mean 'report'?" in result.output


# -- clean ---------------------------------------------------------------------------------
def test_clean_dry_run_keeps_files(run_cli: RunCli, proj: Path) -> None:
    """clean --dry-run lists the declared outputs and removes nothing."""
    cold(run_cli, proj)
    result = run_cli(proj, "clean", "--dry-run")
    assert "would remove build/report.txt" in result.output
    assert (proj / "build/report.txt").exists()


def test_clean_then_run_restores_without_running(run_cli: RunCli, proj: Path) -> None:
    """clean removes declared outputs only; the next run restores them from the cache."""
    cold(run_cli, proj)
    (proj / "build/notes.txt").write_text("mine")
    result = run_cli(proj, "clean", "report")
    assert result.output.splitlines() == [
        "removed build/report.txt",
        "removed 1 file declared as outputs of 1 task(s)",
    ]
    assert not (proj / "build/report.txt").exists() and (proj / "build/notes.txt").exists()
    again = run_cli(proj, "run")
    assert "cached   report, restored 1 file(s)" in again.output
    assert ran(proj) == []
    assert (proj / "build/report.txt").read_text() == "plain: hello [0, 2, 4]\n"


def test_clean_nothing_and_unknown(run_cli: RunCli, proj: Path) -> None:
    """Nothing to clean is said; a misspelt task is exit 2."""
    assert run_cli(proj, "clean", "numbers").output == "nothing to clean\n"
    result = run_cli(proj, "clean", "reprt")
    assert result.exit_code == 2 and "did you mean 'report'?" in result.output


# -- where, settings -----------------------------------------------------------------------
def test_task_file_found_in_a_parent_directory(
    run_cli: RunCli, proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started in a subdirectory, taskrun finds tasks.py above and runs in its root."""
    monkeypatch.chdir(proj / "data")
    result = run_cli(None, "run", "numbers")
    assert result.exit_code == 0, result.output
    assert ran(proj) == ["numbers"]


def test_file_option(run_cli: RunCli, tmp_path: Path, write_project: WriteProject) -> None:
    """-f names another task file; its directory is the project root."""
    source = "from taskrun import task\n@task\ndef one() -> int:\n    return 1\n"
    root = write_project(tmp_path, source)
    (root / "tasks.py").rename(root / "other.py")
    result = run_cli(root, "-f", "other.py", "run")
    assert result.exit_code == 0 and "1 task: 0 cached, 1 ran" in result.output
    missing = run_cli(root, "-f", "nope.py", "run")
    assert missing.exit_code == 2 and "nope.py" in missing.output


def test_no_task_file_and_bad_directory(run_cli: RunCli, tmp_path: Path) -> None:
    """No tasks.py anywhere, or -C to nowhere: exit 2 with what to do."""
    result = run_cli(tmp_path, "list")
    assert result.exit_code == 2 and "no tasks.py" in result.output
    gone = run_cli(tmp_path / "nowhere", "list")
    assert gone.exit_code == 2


SETTINGS = """
    [tool.taskrun]
    jobs = 3
    executor = "inline"
    cache-dir = "elsewhere/cache"
    cache-size = "5MB"
    default = ["numbers"]

    [tool.taskrun.options]
    n = 5
"""


def started(output: str) -> dict[str, object]:
    return next(d for d in map(json.loads, output.splitlines()) if d["event"] == "run-started")


def test_pyproject_settings_apply(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[tool.taskrun]: jobs, executor, cache dir and size, default target, option values."""
    import taskrun.cli_run as cli_run

    sizes: list[object] = []
    real = cli_run.open_cache

    def spy(*args: object, **kw: object) -> object:
        sizes.append(kw.get("size_limit"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cli_run, "open_cache", spy)
    root = write_project(tmp_path, PROJECT, SETTINGS, files={"data/in.txt": "x\n"})
    result = run_cli(root, "run", "--json")
    assert result.exit_code == 0, result.output
    start = started(result.output)
    assert (start["jobs"], start["executor"], start["targets"]) == (3, "inline", ["numbers"])
    assert "making 5 numbers" in result.output
    assert (root / "elsewhere/cache").is_dir() and not (root / ".taskrun/cache").exists()
    assert sizes == [5_000_000]


def test_command_line_wins_over_pyproject(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject
) -> None:
    """-j, --executor, --cache-dir, -o and targets beat [tool.taskrun]."""
    root = write_project(tmp_path, PROJECT, SETTINGS, files={"data/in.txt": "x\n"})
    result = run_cli(
        root,
        "run",
        "--json",
        "-j",
        "1",
        "--executor",
        "thread",
        "--cache-dir",
        "mine",
        "-o",
        "n=2",
        "report",
    )
    assert result.exit_code == 0, result.output
    start = started(result.output)
    assert (start["jobs"], start["executor"], start["targets"]) == (1, "thread", ["report"])
    assert "making 2 numbers" in result.output
    assert (root / "mine").is_dir() and not (root / "elsewhere").exists()


def test_bad_pyproject_setting_is_exit_2(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject
) -> None:
    """A misspelt setting: exit 2 naming it, with a suggestion."""
    root = write_project(tmp_path, PROJECT, "[tool.taskrun]\njobz = 2\n")
    result = run_cli(root, "run")
    assert result.exit_code == 2
    assert "'jobz'" in result.output and "did you mean 'jobs'?" in result.output


# -- errors become exit codes --------------------------------------------------------------
def test_invocation_error_lists_every_problem_and_runs_nothing(run_cli: RunCli, proj: Path) -> None:
    """Two bad option values: both reported, exit 2, no task ran."""
    result = run_cli(proj, "run", "-o", "n=many", "-o", "style=bold")
    assert result.exit_code == 2
    assert "option 'n' of task 'numbers'" in result.output
    assert "option 'style' of task 'report'" in result.output
    assert ran(proj) == []


def test_definition_error_is_exit_2(
    run_cli: RunCli, tmp_path: Path, write_project: WriteProject
) -> None:
    """An option without a type: exit 2, pointing at the task file."""
    source = "from taskrun import task\n@task\ndef t(x=1) -> int:\n    return x\n"
    root = write_project(tmp_path, source)
    result = run_cli(root, "run")
    assert result.exit_code == 2
    assert "tasks.py" in result.output and "Traceback" not in result.output


def test_unknown_target_is_exit_2(run_cli: RunCli, proj: Path) -> None:
    """A misspelt target: exit 2, did you mean."""
    result = run_cli(proj, "run", "reprt")
    assert result.exit_code == 2 and "did you mean 'report'?" in result.output


def test_version(run_cli: RunCli) -> None:
    """--version prints the package version."""
    from taskrun import __version__

    result = run_cli(None, "--version")
    assert result.exit_code == 0 and __version__ in result.output


# -- completion ----------------------------------------------------------------------------
def test_completion_script(run_cli: RunCli) -> None:
    """_TASKRUN_COMPLETE=bash_source prints a bash completion script."""
    result = run_cli(None, env={"_TASKRUN_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_taskrun_completion" in result.output and "complete " in result.output


def test_completion_of_task_names_and_options(run_cli: RunCli, proj: Path) -> None:
    """Targets complete to task names; -o to OPTION= and TASK.OPTION=."""
    env = {
        "_TASKRUN_COMPLETE": "bash_complete",
        "COMP_WORDS": f"taskrun -C {proj} run r",
        "COMP_CWORD": "4",
    }
    result = run_cli(None, env=env)
    assert result.output.split() == ["plain,report"]
    env.update(COMP_WORDS=f"taskrun -C {proj} run -o rep", COMP_CWORD="5")
    assert run_cli(None, env=env).output.split() == ["plain,report.style="]


# -- real processes ------------------------------------------------------------------------
COLORFUL = """
    from taskrun import task, sh

    @task
    def paint() -> str:
        print("\\x1b[31mred\\x1b[0m 10%\\r100%")
        sh("printf 'tab\\\\there\\\\n'")
        return "done"
"""


def taskrun(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "", **(env or {})},
        timeout=120,
    )


@pytest.mark.slow
def test_non_terminal_output_has_no_control_characters(
    tmp_path: Path, write_project: WriteProject
) -> None:
    """Piped, every command prints plain lines, even for a task that prints colours; exit 0."""
    root = write_project(tmp_path, COLORFUL)
    outputs = []
    for args in (["run"], ["run", "-v"], ["run", "--dry-run"], ["list"], ["explain"], ["graph"]):
        result = taskrun(root, *args)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    text = "".join(outputs)
    assert "ran      paint" in text and "paint | 100%" in text and "paint | tab" in text
    assert not CONTROL.search(text.replace("\n", "").replace("\t", ""))


@pytest.mark.slow
def test_usage_errors_exit_2_in_a_real_process(tmp_path: Path, write_project: WriteProject) -> None:
    """Exit 2 with a one-line message on stderr, no traceback."""
    root = write_project(tmp_path, COLORFUL)
    result = taskrun(root, "run", "pain")
    assert result.returncode == 2
    assert result.stderr.startswith("taskrun: error:") and "Traceback" not in result.stderr
    assert taskrun(root, "run", "--jobs", "0").returncode == 2


def run_in_terminal(root: Path, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run taskrun with a pseudo-terminal as stdout; return its exit code and what it drew."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        stdout=follower,
        stderr=follower,
        env={**os.environ, **env},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode()


SLOWISH = """
    import time
    from taskrun import task

    @task
    def wait(n: int = 1) -> int:
        time.sleep(0.4)
        return n
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_live_view_on_a_real_terminal(tmp_path: Path, write_project: WriteProject) -> None:
    """On a terminal: the task in flight is drawn and erased in place, then the summary."""
    root = write_project(tmp_path, SLOWISH)
    code, drawn = run_in_terminal(root, "run", env={"CI": "", "TERM": "xterm"})
    assert code == 0
    assert "[0/1] 1 running" in drawn
    assert "\x1b[2A\r\x1b[J" in drawn  # the two live lines erased
    assert "1 task: 0 cached, 1 ran, 0 failed" in drawn


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_ci_forces_plain_output_on_a_terminal(tmp_path: Path, write_project: WriteProject) -> None:
    """CI=true: plain lines even when stdout is a terminal."""
    root = write_project(tmp_path, SLOWISH)
    code, drawn = run_in_terminal(root, "run", env={"CI": "true", "TERM": "xterm"})
    assert code == 0
    assert "\x1b" not in drawn and "ran      wait" in drawn


@pytest.mark.parametrize(("flag", "expected"), [("auto", None), ("always", True), ("never", False)])
def test_dask_ship_files_reaches_the_executor(
    run_cli: RunCli,
    write_project: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    expected: bool | None,
) -> None:
    """--dask-ship-files and --dask-address become the Dask executor's options."""
    import taskrun.executors as executors

    seen: dict[str, Any] = {}

    def fake(name: str, jobs: int, **options: Any) -> executors.Executor:
        seen.update(name=name, **options)
        return executors.MockExecutor(jobs)

    monkeypatch.setattr(executors, "make_executor", fake)
    proj = write_project(
        tmp_path,
        """
        from taskrun import task

        @task
        def one() -> int:
            return 1
    """,
    )
    result = run_cli(
        proj,
        "run",
        "--executor",
        "dask",
        "--dask-address",
        "tcp://127.0.0.1:1",
        "--dask-ship-files",
        flag,
    )
    assert result.exit_code == 0, result.output
    assert seen == {"name": "dask", "address": "tcp://127.0.0.1:1", "ship_files": expected}
