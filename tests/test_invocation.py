"""Invocation: option values from the command line, the API, the config file and defaults."""

import dataclasses
from pathlib import Path
from typing import Any, Literal

import pytest

from taskrun.errors import InvocationError
from taskrun.files import Dir, File
from taskrun.invocation import Invocation, invoke, parse_assignment
from taskrun.registry import Registry, define_type, task


@pytest.fixture
def tasks(registry: Registry) -> Registry:
    """The PRODUCT.md task file plus a second task that also has an option 'top'."""
    positive = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")

    @task
    def sources(root: Dir = Dir("src")) -> list[File]:
        raise AssertionError("invocation must not run tasks")

    @task(deps=[sources], outputs=["build/report.txt"])
    def report(
        sources: list[File],
        top: positive = 10,  # type: ignore[valid-type]
        style: Literal["plain", "md"] = "plain",
    ) -> File:
        raise AssertionError("invocation must not run tasks")

    @task(deps=[sources])
    def summary(sources: list[File], top: int = 5) -> str:
        raise AssertionError("invocation must not run tasks")

    @task(deps=[report], env=["CC"], version="2")
    def publish(report: File, dry: bool = False) -> str:
        raise AssertionError("invocation must not run tasks")

    return registry


def run_invoke(
    registry: Registry, root: Path, targets: Any = (), *cli: str, **kw: Any
) -> Invocation:
    """invoke() with command-line strings as extra positional arguments."""
    return invoke(registry, list(targets), root=root, assignments=list(cli), **kw)


def problems_of(
    registry: Registry, root: Path, targets: Any = (), *cli: str, **kw: Any
) -> list[str]:
    """The problems (as text) of an invocation that must fail."""
    with pytest.raises(InvocationError) as info:
        run_invoke(registry, root, targets, *cli, **kw)
    return [str(p) for p in info.value.problems]


# -- values and where they come from ----------------------------------------------------


def test_command_line_strings_become_typed_values(tasks: Registry, tmp_path: Path) -> None:
    """'-o report.top=5 -o style=md' gives 5 and 'md', from the command line."""
    inv = run_invoke(tasks, tmp_path, ["report"], "report.top=5", "style=md")
    assert dict(inv.options["report"]) == {"top": 5, "style": "md"}
    assert dict(inv.sources["report"]) == {"top": "command line", "style": "command line"}
    assert dict(inv.options["sources"]) == {"root": Dir("src")}
    assert inv.sources["sources"]["root"] == "default"


def test_targets_bring_their_upstream_in_order(tasks: Registry, tmp_path: Path) -> None:
    """The invocation holds the subgraph of the targets, topologically ordered."""
    inv = run_invoke(tasks, tmp_path, ["publish"])
    assert inv.targets == ("publish",)
    assert inv.order == ("sources", "report", "publish")
    assert inv.spec("report").name == "report"


def test_targets_may_be_task_functions(tasks: Registry, tmp_path: Path) -> None:
    """The Python API accepts task objects as targets."""
    inv = invoke(tasks, [tasks.get("summary").fn], root=tmp_path)
    assert inv.targets == ("summary",)


def test_no_target_means_every_sink(tasks: Registry, tmp_path: Path) -> None:
    """Without targets or a configured default, every task nothing depends on runs."""
    assert run_invoke(tasks, tmp_path).targets == ("summary", "publish")


def test_configured_default_targets(tasks: Registry, tmp_path: Path) -> None:
    """[tool.taskrun] default applies when no target is given."""
    inv = run_invoke(tasks, tmp_path, default_targets=["summary"])
    assert inv.targets == ("summary",)


def test_unqualified_option_spreads_over_every_planned_task(
    tasks: Registry, tmp_path: Path
) -> None:
    """'top=7' sets top on report and summary when both are planned."""
    inv = run_invoke(tasks, tmp_path, ["report", "summary"], "top=7")
    assert inv.options["report"]["top"] == 7 and inv.options["summary"]["top"] == 7


def test_unqualified_option_skips_tasks_outside_the_run(tasks: Registry, tmp_path: Path) -> None:
    """A task that is not planned neither gets the value nor appears."""
    inv = run_invoke(tasks, tmp_path, ["report"], "top=7")
    assert inv.options["report"]["top"] == 7
    assert "summary" not in inv.options


@pytest.mark.parametrize("cli", [("report.top=3", "top=7"), ("top=7", "report.top=3")])
def test_qualified_beats_unqualified_in_any_order(
    tasks: Registry, tmp_path: Path, cli: tuple[str, str]
) -> None:
    """TASK.OPTION wins over OPTION for that task, wherever it is written."""
    inv = run_invoke(tasks, tmp_path, ["report", "summary"], *cli)
    assert inv.options["report"]["top"] == 3 and inv.options["summary"]["top"] == 7


def test_the_last_of_repeated_values_wins(tasks: Registry, tmp_path: Path) -> None:
    """'-o top=1 -o top=2' sets 2, as on any command line."""
    inv = run_invoke(
        tasks, tmp_path, ["report"], "top=1", "report.style=md", "top=2", "report.style=plain"
    )
    assert dict(inv.options["report"]) == {"top": 2, "style": "plain"}


def test_command_line_beats_config_beats_default(tasks: Registry, tmp_path: Path) -> None:
    """Precedence: -o, then [tool.taskrun.options], then the default."""
    config = {"top": 4, "report": {"style": "md"}}
    inv = run_invoke(tasks, tmp_path, ["report", "summary"], "summary.top=9", config=config)
    assert dict(inv.options["report"]) == {"top": 4, "style": "md"}
    assert dict(inv.sources["report"]) == {"top": "pyproject.toml", "style": "pyproject.toml"}
    assert inv.options["summary"]["top"] == 9
    assert inv.sources["summary"]["top"] == "command line"
    plain = run_invoke(tasks, tmp_path, ["report"])
    assert dict(plain.options["report"]) == {"top": 10, "style": "plain"}


def test_config_table_for_a_task_beats_config_plain_value(tasks: Registry, tmp_path: Path) -> None:
    """[tool.taskrun.options.report] top beats [tool.taskrun.options] top."""
    config = {"top": 4, "report": {"top": 2}}
    inv = run_invoke(tasks, tmp_path, ["report", "summary"], config=config)
    assert inv.options["report"]["top"] == 2 and inv.options["summary"]["top"] == 4


def test_api_options_sit_between_command_line_and_config(tasks: Registry, tmp_path: Path) -> None:
    """options= beats the config file and loses to -o."""
    config = {"report": {"top": 4, "style": "md"}}
    inv = run_invoke(
        tasks,
        tmp_path,
        ["report"],
        "report.style=plain",
        options={"report": {"top": 6, "style": "md"}},
        config=config,
    )
    assert dict(inv.options["report"]) == {"top": 6, "style": "plain"}


def test_api_strings_are_parsed_like_the_command_line(tasks: Registry, tmp_path: Path) -> None:
    """options= takes Python values, and a string that is not one is parsed as text."""
    inv = run_invoke(tasks, tmp_path, ["report"], options={"report": {"top": "5"}})
    assert inv.options["report"]["top"] == 5


def test_api_values_are_checked(tasks: Registry, tmp_path: Path) -> None:
    """A value of the wrong type (and a string that does not parse) is a problem."""
    problems = problems_of(tasks, tmp_path, ["report"], options={"report": {"top": 2.5}})
    assert len(problems) == 1 and "2.5" in problems[0] and "top" in problems[0]
    problems = problems_of(tasks, tmp_path, ["report"], options={"top": "five"})
    assert len(problems) == 1 and "'five'" in problems[0]


def test_api_accepts_the_command_line_forms(tasks: Registry, tmp_path: Path) -> None:
    """{"task.opt": v}, {"opt": v} and {task: {opt: v}}; qualified beats unqualified."""
    inv = run_invoke(tasks, tmp_path, ["report"], options={"report.style": "md", "top": 3})
    assert dict(inv.options["report"]) == {"top": 3, "style": "md"}
    inv = run_invoke(
        tasks,
        tmp_path,
        ["report"],
        options={"top": 3, "report.top": 7, tasks.get("report").fn: {"style": "md"}},
    )
    assert dict(inv.options["report"]) == {"top": 7, "style": "md"}


def test_api_unknown_names_say_what_is_meant(tasks: Registry, tmp_path: Path) -> None:
    """A misspelled option or task in options= is named, with a suggestion."""
    problems = problems_of(tasks, tmp_path, ["report"], options={"tpo": 3, "reprot.top": 1})
    assert any("'tpo'" in p and "did you mean 'top'" in p for p in problems)
    assert any("'reprot'" in p and "did you mean 'report'" in p for p in problems)


def test_config_strings_are_parsed_like_text(registry: Registry, tmp_path: Path) -> None:
    """A TOML string goes through the type's text form (custom parse, bytes, none)."""
    kib = define_type("KiB", int, lambda v: v >= 0, parse=lambda s: int(s.rstrip("k")) * 1024)

    @task
    def t(size: kib = 0, blob: bytes = b"", label: str | None = "x") -> None: ...  # type: ignore[valid-type]

    inv = run_invoke(
        registry, tmp_path, ["t"], config={"size": "2k", "blob": "hex:ff", "label": "none"}
    )
    assert dict(inv.options["t"]) == {"size": 2048, "blob": b"\xff", "label": None}


def test_config_for_a_task_outside_the_run_is_ignored(tasks: Registry, tmp_path: Path) -> None:
    """The file serves every run: a value for an unplanned task is not a problem."""
    inv = run_invoke(tasks, tmp_path, ["summary"], config={"publish": {"dry": True}})
    assert "publish" not in inv.options


# -- problems -----------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tasks: Registry, tmp_path: Path) -> None:
    """Several bad values give one InvocationError listing all of them."""
    with pytest.raises(InvocationError) as info:
        run_invoke(
            tasks, tmp_path, ["publish"], "top=0", "style=html", "dry=perhaps", "sources.root="
        )
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 4
    assert "4 problems with this invocation; nothing was run" in info.value.message
    assert any(
        "option 'top' of task 'report'" in p and "0 is not an integer above 0" in p
        for p in problems
    )
    assert any(
        "option 'style'" in p and "'html' is not one of 'plain', 'md'" in p for p in problems
    )
    assert any("option 'dry' of task 'publish'" in p and "'perhaps'" in p for p in problems)
    assert any("option 'root' of task 'sources'" in p and "empty" in p for p in problems)
    for p in problems:
        assert "test_invocation.py:" in p  # where the task was defined
        assert "from command line" in p


def test_unknown_target_suggests_a_task(tasks: Registry, tmp_path: Path) -> None:
    """A misspelled target gets did-you-mean and where to look."""
    problems = problems_of(tasks, tmp_path, ["reprot"])
    assert problems == [
        "target 'reprot': is not a task (did you mean 'report'?); `taskrun list` shows the tasks"
    ]


def test_unknown_default_target_says_it_came_from_the_config(
    tasks: Registry, tmp_path: Path
) -> None:
    """A bad [tool.taskrun] default is reported as such."""
    (problem,) = problems_of(tasks, tmp_path, default_targets=["summry"])
    assert "(from [tool.taskrun] default)" in problem and "did you mean 'summary'" in problem


def test_unknown_task_in_an_assignment(tasks: Registry, tmp_path: Path) -> None:
    """-o reprot.top=1 suggests 'report'."""
    problems = problems_of(tasks, tmp_path, ["report"], "reprot.top=1")
    assert problems == [
        "-o 'reprot.top': there is no task 'reprot' (did you mean 'report'?);"
        " `taskrun list` shows the tasks"
    ]


def test_unknown_option_of_a_task(tasks: Registry, tmp_path: Path) -> None:
    """-o report.tpo=1 suggests 'top' and lists the task's options."""
    (problem,) = problems_of(tasks, tmp_path, ["report"], "report.tpo=1")
    assert "task 'report' has no option 'tpo' (did you mean 'top'?)" in problem
    assert "its options are: top, style" in problem


def test_unknown_unqualified_option(tasks: Registry, tmp_path: Path) -> None:
    """-o stlye=md suggests 'style' and how to qualify."""
    (problem,) = problems_of(tasks, tmp_path, ["report"], "stlye=md")
    assert "no task in this run has an option 'stlye' (did you mean 'style'?)" in problem
    assert "TASK.OPTION=VALUE" in problem


def test_option_of_a_task_outside_the_run(tasks: Registry, tmp_path: Path) -> None:
    """A qualified value for an unplanned task is refused with the fix."""
    (problem,) = problems_of(tasks, tmp_path, ["summary"], "publish.dry=true")
    assert "task 'publish' is not part of this run; add it as a target" in problem


def test_assignment_without_equals(tasks: Registry, tmp_path: Path) -> None:
    """'-o top' is not an assignment."""
    (problem,) = problems_of(tasks, tmp_path, ["report"], "top")
    assert "'top' is not OPTION=VALUE or TASK.OPTION=VALUE" in problem


def test_unknown_option_in_the_config(tasks: Registry, tmp_path: Path) -> None:
    """A config value no task could take is a problem, with did-you-mean."""
    (problem,) = problems_of(tasks, tmp_path, ["report"], config={"tpo": 3})
    assert "[tool.taskrun.options] 'tpo'" in problem and "did you mean 'top'" in problem


def test_required_option_without_value(registry: Registry, tmp_path: Path) -> None:
    """A required option with no value anywhere says how to pass one."""

    @task
    def deploy(target: str, region: str = "eu") -> None: ...

    (problem,) = problems_of(registry, tmp_path, ["deploy"])
    assert "option 'target' of task 'deploy'" in problem
    assert "is required and has no value; pass -o deploy.target=VALUE (str)" in problem
    inv = run_invoke(registry, tmp_path, ["deploy"], "target=prod")
    assert inv.options["deploy"]["target"] == "prod"


def test_parent_predicate_is_checked_before_own(registry: Registry, tmp_path: Path) -> None:
    """A value failing the parent type's predicate reports the parent, not the child."""
    positive = define_type("Positive", int, lambda v: v > 0, doc="above zero")
    even = define_type("EvenPositive", positive, lambda v: v % 2 == 0, doc="an even number")

    @task
    def t(n: even = 2) -> None: ...  # type: ignore[valid-type]

    (problem,) = problems_of(registry, tmp_path, ["t"], "n=-3")
    assert "-3 is not above zero (Positive)" in problem
    (problem,) = problems_of(registry, tmp_path, ["t"], "n=3")
    assert "3 is not an even number (EvenPositive)" in problem


def test_nothing_is_run_when_a_problem_is_found(tasks: Registry, tmp_path: Path) -> None:
    """Validation never calls a task function (they all raise here)."""
    problems_of(tasks, tmp_path, ["publish"], "top=0")
    assert run_invoke(tasks, tmp_path, ["publish"]).order == ("sources", "report", "publish")


# -- the result --------------------------------------------------------------------------


def test_invocation_is_frozen(tasks: Registry, tmp_path: Path) -> None:
    """Neither the invocation nor its mappings can be changed."""
    inv = run_invoke(tasks, tmp_path, ["report"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        inv.targets = ("summary",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        inv.options["report"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        inv.options["report"]["top"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        inv.sources["report"]["top"] = "x"  # type: ignore[index]


# -- paths -------------------------------------------------------------------------------


@pytest.fixture
def path_task(registry: Registry) -> Registry:
    @task
    def read(path: File = File("data.txt")) -> None: ...

    return registry


def test_file_option_inside_the_root_becomes_relative(path_task: Registry, tmp_path: Path) -> None:
    """An absolute path inside the project root is stored relative to it."""
    inv = run_invoke(path_task, tmp_path, ["read"], f"path={tmp_path / 'data' / 'x.txt'}")
    value = inv.options["read"]["path"]
    assert value == File("data/x.txt") and type(value) is File


@pytest.mark.parametrize("text", ["/etc/passwd", "../elsewhere.txt"])
def test_file_option_outside_the_root_is_a_problem(
    path_task: Registry, tmp_path: Path, text: str
) -> None:
    """A File option leading out of the project is refused."""
    (problem,) = problems_of(path_task, tmp_path, ["read"], f"path={text}")
    assert "option 'path' of task 'read'" in problem
    assert "outside the project root" in problem


def test_parse_assignment() -> None:
    """TASK.OPTION=VALUE and OPTION=VALUE split at the first '=' and '.'."""
    assert parse_assignment("report.top=5") == ("report", "top", "5")
    assert parse_assignment("top=a=b") == (None, "top", "a=b")
    assert parse_assignment(" top =") == (None, "top", "")
    with pytest.raises(ValueError, match="is not OPTION=VALUE"):
        parse_assignment("=5")


def test_file_default_is_normalized_like_a_given_value(registry: Registry, tmp_path: Path) -> None:
    """A File default is relative-normalized against the root, as a -o value would be."""

    @task
    def read(path: File = File("./data/../data.txt")) -> None: ...

    assert run_invoke(registry, tmp_path, ["read"]).options["read"]["path"] == File("data.txt")


def test_file_default_outside_the_root_is_a_problem(registry: Registry, tmp_path: Path) -> None:
    """A default leading out of the project is caught before anything runs."""

    @task
    def read(path: File = File("../outside.txt")) -> None: ...

    (problem,) = problems_of(registry, tmp_path, ["read"])
    assert "outside the project root" in problem and "(from default" in problem


def test_each_invocation_gets_its_own_copy_of_a_list_default(
    registry: Registry, tmp_path: Path
) -> None:
    """Mutating a list option value cannot change the default of the next run."""

    @task
    def t(names: list[str] = ["a"]) -> None: ...  # noqa: B006

    first = run_invoke(registry, tmp_path, ["t"]).options["t"]["names"]
    first.append("b")
    assert run_invoke(registry, tmp_path, ["t"]).options["t"]["names"] == ["a"]


def test_a_misspelled_target_is_not_followed_by_its_options(
    tasks: Registry, tmp_path: Path
) -> None:
    """'run reprot -o style=md' reports the target, not 'no task has style'."""
    problems = problems_of(tasks, tmp_path, ["reprot"], "style=md", "colour=red")
    assert len(problems) == 2
    assert "target 'reprot'" in problems[0]
    assert "'colour'" in problems[1]
