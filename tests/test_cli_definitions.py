"""The command line up to execution: `taskrun list`, task-file discovery, and exit-2 errors."""

import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import taskrun_process
from click.testing import Result

# The task file of PRODUCT.md, verbatim.
PRODUCT_TASKS = '''\
# tasks.py
from typing import Literal
from taskrun import task, define_type, File, Dir, sh

PositiveInt = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")
Percent = define_type("Percent", float, lambda v: 0 <= v <= 100)

@task
def sources(root: Dir = Dir("src")) -> list[File]:
    """All Python sources under ROOT."""
    return sorted(root.glob("**/*.py"))

@task(deps=[sources], outputs=["build/report.txt"])
def report(sources: list[File], top: PositiveInt = 10,
           style: Literal["plain", "md"] = "plain") -> File:
    """Write a report of the TOP largest sources."""
    ...
    return File("build/report.txt")

@task(deps=[report], env=["CC"], version="2")
def publish(report: File, dry: bool = False) -> str:
    sh("echo publishing", check=True)
    return "ok"
'''


@pytest.fixture
def product(tmp_path: Path, write_project: Any) -> Path:
    """A project with the PRODUCT.md task file and a small src/ tree."""
    return write_project(tmp_path / "proj", PRODUCT_TASKS, files={"src/pkg/mod.py": "x = 1\n"})


def assert_clean_error(result: Result, *words: str, code: int = 2) -> str:
    """Exit ``code``, one 'taskrun: error:' message on stderr, no traceback; returns it."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stderr.startswith("taskrun: error: ")
    for word in words:
        assert word in result.stderr
    return result.stderr


# -- list --------------------------------------------------------------------------------


def test_list_shows_tasks_options_and_dependencies(product: Path, run_cli: Any) -> None:
    """Every task with its summary, deps, and options with type, default and doc."""
    result = run_cli(product, "list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sources  All Python sources under ROOT." in out
    assert "report  Write a report of the TOP largest sources." in out
    assert "needs: sources" in out and "needs: report" in out
    assert "-o sources.root=<Dir>  (default src)" in out
    assert "-o report.top=<PositiveInt>  (default 10)  an integer above 0" in out
    assert "-o report.style=<{plain|md}>  (default plain)  one of 'plain', 'md'" in out
    assert "-o publish.dry=<bool>  (default false)" in out
    assert "returns: list[File]" in out
    assert out.index("sources") < out.index("report") < out.index("publish")


def test_list_json(product: Path, run_cli: Any) -> None:
    """--json gives the same facts, machine-readable."""
    result = run_cli(product, "list", "--json")
    assert result.exit_code == 0, result.output
    doc = {t["name"]: t for t in json.loads(result.stdout)}
    assert list(doc) == ["sources", "report", "publish"]
    assert doc["report"]["deps"] == ["sources"]
    assert doc["report"]["outputs"] == ["build/report.txt"]
    assert doc["report"]["options"] == [
        {
            "name": "top",
            "type": "PositiveInt",
            "required": False,
            "default": "10",
            "doc": "an integer above 0",
        },
        {
            "name": "style",
            "type": "{plain|md}",
            "required": False,
            "default": "plain",
            "doc": "one of 'plain', 'md'",
        },
    ]
    assert doc["sources"]["product"] == "list[File]"
    assert doc["publish"]["defined_at"].endswith("tasks.py:20")


def test_list_shows_required_options(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """An option without a default is listed as required."""
    write_project(
        tmp_path, "from taskrun import task\n\n@task\ndef deploy(target: str) -> None: ...\n"
    )
    result = run_cli(tmp_path, "list")
    assert "-o deploy.target=<str>  (required)" in result.stdout


# -- finding the task file ---------------------------------------------------------------


def test_task_file_is_found_in_the_nearest_parent(product: Path, run_cli: Any) -> None:
    """Started in a subdirectory, taskrun uses the nearest parent's tasks.py."""
    result = run_cli(product / "src" / "pkg", "list")
    assert result.exit_code == 0, result.output
    assert "report" in result.stdout


def test_nearer_task_file_wins(product: Path, run_cli: Any) -> None:
    """A tasks.py in a subdirectory shadows the one above it."""
    (product / "src" / "tasks.py").write_text(
        "from taskrun import task\n\n@task\ndef inner() -> None: ...\n"
    )
    result = run_cli(product / "src" / "pkg", "list")
    assert "inner" in result.stdout and "report" not in result.stdout


def test_f_names_the_task_file(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """-f FILE uses that file (relative to -C), whatever its name."""
    write_project(tmp_path, "from taskrun import task\n\n@task\ndef default_one() -> None: ...\n")
    (tmp_path / "other.py").write_text(
        "from taskrun import task\n\n@task\ndef chosen() -> None: ...\n"
    )
    result = run_cli(tmp_path, "-f", "other.py", "list")
    assert result.exit_code == 0, result.output
    assert "chosen" in result.stdout and "default_one" not in result.stdout


def test_missing_task_file_is_a_clean_exit_2(tmp_path: Path, run_cli: Any) -> None:
    """No tasks.py here or above: exit 2 saying how to fix it."""
    if any((p / "tasks.py").exists() for p in tmp_path.parents):
        pytest.skip("a parent of the temporary directory has a tasks.py")
    assert_clean_error(run_cli(tmp_path, "list"), "no tasks.py in", "-f FILE")


def test_f_naming_a_missing_file(tmp_path: Path, run_cli: Any) -> None:
    """-f to a file that does not exist is a clean exit 2."""
    assert_clean_error(run_cli(tmp_path, "-f", "nope.py", "list"), "'nope.py' does not exist")


def test_c_naming_a_missing_directory(tmp_path: Path, run_cli: Any) -> None:
    """-C to a directory that does not exist is a clean exit 2."""
    assert_clean_error(run_cli(tmp_path / "nowhere", "list"), "no such directory")


# -- exit 2 before anything runs ---------------------------------------------------------


def test_syntax_error_in_the_task_file(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """A syntax error names file:line, without a traceback."""
    write_project(tmp_path, "from taskrun import task\n\n@task\ndef broken(:\n    pass\n")
    message = assert_clean_error(run_cli(tmp_path, "list"), "syntax error")
    assert f"{(tmp_path / 'tasks.py').resolve()}:4" in message


def test_definition_error(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """A definition error names task, file:line and the fix."""
    write_project(tmp_path, "from taskrun import task\n\n@task\ndef report(top=0) -> None: ...\n")
    message = assert_clean_error(run_cli(tmp_path, "list"), "task 'report'", "'top: int = 0'")
    assert f"{(tmp_path / 'tasks.py').resolve()}:3" in message


def test_definition_error_also_stops_run(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """`run` loads the same task file and fails the same way."""
    write_project(
        tmp_path, "from taskrun import task\n\n@task(retries=-1)\ndef job() -> None: ...\n"
    )
    assert_clean_error(run_cli(tmp_path, "run", "job"), "retries=")


def test_exception_while_importing_the_task_file(
    tmp_path: Path, write_project: Any, run_cli: Any
) -> None:
    """Any error raised by the task file is exit 2 naming the line."""
    write_project(tmp_path, "import json\n\nx = json.loads('{')\n")
    message = assert_clean_error(run_cli(tmp_path, "list"), "JSONDecodeError")
    assert f"{(tmp_path / 'tasks.py').resolve()}:3" in message


def test_invocation_error(product: Path, run_cli: Any) -> None:
    """`run report -o top=0` fails validation: exit 2, nothing run."""
    message = assert_clean_error(
        run_cli(product, "run", "report", "-o", "top=0"),
        "option 'top' of task 'report'",
        "0 is not an integer above 0 (PositiveInt)",
        "nothing was run",
    )
    assert not (product / ".taskrun").exists()
    assert not (product / "build").exists()
    assert message.count("\n  - ") == 1


def test_every_invocation_problem_in_one_message(product: Path, run_cli: Any) -> None:
    """Several mistakes on one command line are all reported together."""
    result = run_cli(
        product, "run", "reprot", "publish", "-o", "top=0", "-o", "stlye=md", "dry=perhaps"
    )
    message = assert_clean_error(
        result, "4 problems", "did you mean 'report'", "did you mean 'style'", "'perhaps'"
    )
    assert message.count("\n  - ") == 4


def test_config_error_is_a_clean_exit_2(product: Path, run_cli: Any) -> None:
    """A bad [tool.taskrun] setting stops every command with a clean message."""
    (product / "pyproject.toml").write_text('[tool.taskrun]\nexecutor = "threads"\n')
    assert_clean_error(run_cli(product, "list"), "'executor'", "did you mean 'thread'")


def test_config_option_values_are_validated(product: Path, run_cli: Any) -> None:
    """A bad value in [tool.taskrun.options] is an invocation error."""
    (product / "pyproject.toml").write_text("[tool.taskrun.options.report]\ntop = -1\n")
    assert_clean_error(
        run_cli(product, "run", "report"), "-1 is not an integer above 0", "from pyproject.toml"
    )


# -- real processes ----------------------------------------------------------------------


def test_list_in_a_real_process(product: Path) -> None:
    """`python -m taskrun list` in the project directory works end to end."""
    proc = taskrun_process(product, "list")
    assert proc.returncode == 0, proc.stderr
    assert "report  Write a report of the TOP largest sources." in proc.stdout


def test_invocation_error_in_a_real_process(product: Path) -> None:
    """A real process exits 2 with the message on stderr and no traceback."""
    proc = taskrun_process(product / "src", "run", "report", "-o", "report.style=html")
    assert proc.returncode == 2
    assert proc.stderr.startswith("taskrun: error: ")
    assert "'html' is not one of 'plain', 'md'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


BROKEN_THEN_SAME_NAME = """\
from taskrun import task


@task
def a(x=3):
    return x


@task
def b() -> int:
    return 1


@task(name="a")
def d() -> int:
    return 2
"""


def test_a_failed_definition_keeps_its_name_for_the_duplicate_check(tmp_path: Path) -> None:
    """A task whose definition failed still holds its name: both errors show in one run."""
    (tmp_path / "tasks.py").write_text(BROKEN_THEN_SAME_NAME)
    proc = taskrun_process(tmp_path, "list")
    assert proc.returncode == 2
    path = (tmp_path / "tasks.py").resolve()
    assert proc.stderr.startswith("taskrun: error: 2 definition errors in ")
    assert f"task 'a' ({path}:4): option 'x' has no type annotation" in proc.stderr
    assert f"task 'a' is defined twice: first at {path}:4, again at {path}:14" in proc.stderr


def test_a_failed_definition_after_a_good_one_of_its_name(tmp_path: Path) -> None:
    """A broken second definition of a taken name reports its own error and the duplicate."""
    source = BROKEN_THEN_SAME_NAME.replace("def a(x=3)", "def a(x: int = 3)")
    source += '\n\n@task(name="b")\ndef c(y=1):\n    return y\n'
    (tmp_path / "tasks.py").write_text(source)
    proc = taskrun_process(tmp_path, "list")
    assert proc.returncode == 2
    path = (tmp_path / "tasks.py").resolve()
    assert proc.stderr.startswith("taskrun: error: 3 definition errors in ")
    assert f"task 'a' is defined twice: first at {path}:4, again at {path}:14" in proc.stderr
    assert f"task 'b' ({path}:19): option 'y' has no type annotation" in proc.stderr
    assert f"task 'b' is defined twice: first at {path}:9, again at {path}:19" in proc.stderr
