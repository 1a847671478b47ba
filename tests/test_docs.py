"""The docs agree with the program: the CLI reference with click, examples that run."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import Result

from taskrun import events as ev
from taskrun.cli import main
from taskrun.config import _KEYS

DOCS = Path(__file__).resolve().parent.parent / "docs"
CLI_MD = DOCS / "cli.md"
MINE = ["getting-started.md", "writing-tasks.md", "cache.md", "cli.md"]
# Guides other people are writing; a link to one may come before the page does.
PENDING = {"dask.md", "benchmarks.md"}
RunCli = Callable[..., Result]
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def commands() -> Iterator[tuple[str, click.Command]]:
    """Every command click knows, as ("taskrun cache info", command)."""

    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, f"{path} {name}")

    yield from walk(main, "taskrun")


def sections() -> dict[str, str]:
    """cli.md split at its `## ` and `### ` headings: heading -> text below it."""
    out: dict[str, str] = {}
    heading = ""
    for line in CLI_MD.read_text().splitlines():
        match = re.match(r"#{2,3} (.*)", line)
        if match:
            heading = match[1].strip()
            out[heading] = ""
        else:
            out[heading] = out.get(heading, "") + line + "\n"
    return out


def table_flags(text: str) -> set[str]:
    """The flags named in the first cell of option-table rows (`| `-o, --option X` | ...`)."""
    flags: set[str] = set()
    for line in text.splitlines():
        cell = re.match(r"\|\s*`(-[^`]*)`\s*\|", line)
        if cell:
            flags |= set(FLAG.findall(cell[1]))
    return flags


def documented_flags(path: str) -> set[str]:
    docs = sections()
    flags = table_flags(docs[path])
    if path.startswith("taskrun cache "):
        flags |= table_flags(docs["taskrun cache"])
    return flags


def click_flags(cmd: click.Command) -> set[str]:
    flags: set[str] = set()
    for param in cmd.params:
        if isinstance(param, click.Option):
            flags |= set(param.opts) | set(param.secondary_opts)
    return flags


ALL = list(commands())
IDS = [path for path, _ in ALL]


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_every_command_has_a_section(path: str, cmd: click.Command) -> None:
    """Each command and subcommand has its own heading in cli.md."""
    assert path in sections(), f"docs/cli.md has no '## {path}' section"


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_every_option_click_knows_is_documented(path: str, cmd: click.Command) -> None:
    """Each option of each command appears in that command's option table."""
    missing = click_flags(cmd) - documented_flags(path) - {"--help"}
    assert not missing, f"{path}: options not in docs/cli.md: {sorted(missing)}"


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_every_documented_option_is_known_to_click(path: str, cmd: click.Command) -> None:
    """Nothing in a command's option table is unknown to click (no stale options)."""
    known = click_flags(cmd) | {"-h", "--help"}
    if path == "taskrun cache":  # its table lists what every subcommand takes
        subs = list(cmd.commands.values())  # type: ignore[attr-defined]
        known = set.intersection(*(click_flags(s) for s in subs))
    unknown = table_flags(sections()[path]) - known
    assert not unknown, f"{path}: docs/cli.md documents unknown options {sorted(unknown)}"


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=IDS)
def test_arguments_and_choices_are_documented(path: str, cmd: click.Command) -> None:
    """Each argument's name and each choice of a choice option appear in the section."""
    text = sections()[path]
    for param in cmd.params:
        if isinstance(param, click.Argument):
            assert (param.name or "").upper() in text, f"{path}: argument {param.name}"
        if isinstance(param.type, click.Choice):
            for choice in param.type.choices:
                assert str(choice) in text, f"{path}: choice {choice} of {param.name}"


def test_help_flag_is_documented_at_the_top() -> None:
    """-h/--help is documented once, for every command."""
    assert {"-h", "--help"} <= table_flags(sections()["taskrun"])


def test_every_json_event_is_documented() -> None:
    """The JSON table names every event kind and its fields."""
    text = sections()["JSON output"]
    kinds = [c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event)]
    for kind in kinds:
        if kind is ev.Event:
            continue
        assert f"`{kind.kind}`" in text, kind.kind
        row = next(line for line in text.splitlines() if line.startswith(f"| `{kind.kind}`"))
        for f in dataclasses.fields(kind):
            assert f"`{f.name}`" in row, f"{kind.kind}.{f.name}"


def test_every_pyproject_setting_is_documented() -> None:
    """The settings table lists every key [tool.taskrun] accepts, and no other."""
    text = sections()["Settings in pyproject.toml"]
    rows = set(re.findall(r"^\| `([a-z-]+)` \|", text, re.M))
    assert rows == set(_KEYS)


def test_completion_line_in_the_docs_produces_a_script(run_cli: RunCli) -> None:
    """The documented `_TASKRUN_COMPLETE=bash_source taskrun` prints a completion script."""
    assert "_TASKRUN_COMPLETE=bash_source taskrun" in CLI_MD.read_text()
    result = run_cli(None, env={"_TASKRUN_COMPLETE": "bash_source"})
    assert "_taskrun_completion" in result.output


# -- links and examples ----------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", MINE)
def test_links_resolve(name: str) -> None:
    """Relative links point at files that exist, and anchors at headings that exist."""
    doc = DOCS / name
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists() and file.parent == DOCS and file.name in PENDING:
            continue
        assert file.exists(), f"{name}: broken link {target}"
        if anchor and file.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
            assert anchor in anchors, f"{name}: no heading for #{anchor} in {file.name}"


def code_block(name: str, first_line: str) -> str:
    """The ```python block of docs/NAME that starts with FIRST_LINE."""
    text = (DOCS / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if b.startswith(first_line))


def console_output(name: str, command: str) -> list[str]:
    """The lines shown after `$ COMMAND` in a console block of docs/NAME."""
    text = (DOCS / name).read_text()
    start = text.index(f"$ {command}\n") + len(f"$ {command}\n")
    lines = []
    for line in text[start:].splitlines():
        if line.startswith(("$ ", "```")):
            break
        lines.append(line)
    return lines


def timeless(lines: list[str]) -> list[str]:
    return [re.sub(r"\d+\.\d+s", "Ns", line) for line in lines]


def test_getting_started_walkthrough(run_cli: RunCli, tmp_path: Path) -> None:
    """The guide's task file gives the output the guide shows (timings aside)."""
    (tmp_path / "tasks.py").write_text(code_block("getting-started.md", "# tasks.py"))
    listed = run_cli(tmp_path, "list")
    assert listed.output.splitlines() == console_output("getting-started.md", "taskrun list")
    cold = run_cli(tmp_path, "run")
    shown = console_output("getting-started.md", "taskrun run")
    assert timeless(cold.output.splitlines()) == timeless(shown)
    styled = run_cli(tmp_path, "run", "-o", "style=md")
    assert "ran      summary (" in styled.output
    assert "option 'style' changed: 'plain' -> 'md'" in styled.output
    bad = run_cli(tmp_path, "run", "-o", "count=0", "-o", "style=html")
    assert bad.exit_code == 2
    assert "0 is not an integer above 0 (PositiveInt)" in bad.output
    assert "'html' is not one of 'plain', 'md'" in bad.output


def test_writing_tasks_example_loads_and_runs(run_cli: RunCli, tmp_path: Path) -> None:
    """The first task file of writing-tasks.md is valid and runs."""
    (tmp_path / "tasks.py").write_text(code_block("writing-tasks.md", "# tasks.py"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    result = run_cli(tmp_path, "run", "-o", "top=1")
    assert result.exit_code == 0, result.output
    assert "3 tasks: 0 cached, 3 ran, 0 failed" in result.output
    assert (tmp_path / "build/report.txt").read_text() == "src/a.py\n"


def test_mapped_tasks_example_builds_and_grows(tmp_path: Path) -> None:
    """mapped-tasks.md's task file, verbatim, compiles and links; one new source, one call."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    (tmp_path / "tasks.py").write_text(code_block("mapped-tasks.md", "# tasks.py"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("int a(void) { return 1; }\n")
    (tmp_path / "src" / "b.c").write_text("int a(void);\nint main(void) { return a() - 1; }\n")

    def taskrun(command: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "taskrun", *command.split()],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.splitlines()

    def same(shown: list[str], documented: list[str]) -> bool:
        # Item calls run in parallel: they may end in either order.
        return sorted(timeless(shown)) == sorted(timeless(documented))

    first = taskrun("run link")
    assert same(first, console_output("mapped-tasks.md", "taskrun run link"))
    assert subprocess.run([str(tmp_path / "build" / "app")], timeout=60).returncode == 0
    (tmp_path / "src" / "c.c").touch()
    again = taskrun("run link")
    shown = console_output("mapped-tasks.md", "touch src/c.c && taskrun run link")
    assert same(again, shown)
    assert (tmp_path / "build" / "c.o").is_file()
