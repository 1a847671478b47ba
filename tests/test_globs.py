"""Tests for taskrun.globs: pattern validation, expansion and the output-overlap check."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskrun import globs
from taskrun.errors import DefinitionError
from taskrun.globs import check_disjoint_outputs, expand_globs


def write(path: Path, data: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


# --------------------------------------------------------------------------- globs


def test_expand_globs_matches_files(tmp_path: Path) -> None:
    """Globs with * and ** give sorted relative files; a directory match gives its files."""
    for name in ["src/a.py", "src/pkg/b.py", "src/pkg/c.txt", "build/x/y.o", "top.py"]:
        write(tmp_path / name)
    assert expand_globs(["src/**/*.py"], tmp_path) == [
        PurePosixPath("src/a.py"),
        PurePosixPath("src/pkg/b.py"),
    ]
    assert expand_globs(["*.py", "build"], tmp_path) == [
        PurePosixPath("build/x/y.o"),
        PurePosixPath("top.py"),
    ]
    assert expand_globs(["src/*/[bc].*"], tmp_path) == [
        PurePosixPath("src/pkg/b.py"),
        PurePosixPath("src/pkg/c.txt"),
    ]
    assert expand_globs(["nothing/*"], tmp_path) == []


def test_expand_globs_skips_vcs_and_symlinked_dirs(tmp_path: Path) -> None:
    """Wildcards do not walk into .git, .taskrun or symlinked directories."""
    write(tmp_path / ".git/config.py")
    write(tmp_path / ".taskrun/cache/x.py")
    write(tmp_path / "real/a.py")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert expand_globs(["**/*.py"], tmp_path) == [PurePosixPath("real/a.py")]


@pytest.mark.parametrize("bad", ["", "/abs/*.o", "../up/*", "a/../../x", ".", "a/.."])
def test_invalid_patterns_are_definition_errors(tmp_path: Path, bad: str) -> None:
    """Absolute, escaping, empty or root patterns are rejected with the pattern named."""
    with pytest.raises(DefinitionError, match="pattern"):
        expand_globs([bad], tmp_path)


# --------------------------------------------------------------------------- overlap


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("build/out.txt", "build/out.txt"),
        ("build/*.o", "build/main.o"),
        ("build", "build/sub/x.o"),
        ("out/*.txt", "out/a*"),
        ("**/*.o", "lib/*.o"),
        ("gen/[a-m]*.c", "gen/k?.c"),
    ],
)
def test_overlapping_outputs_are_rejected(a: str, b: str) -> None:
    """Two tasks whose outputs can name one file are a definition error naming both."""
    with pytest.raises(DefinitionError) as info:
        check_disjoint_outputs({"compile": [a], "link": ["dist/app.whl", b]})
    assert f"task 'compile' output '{a}' and task 'link' output '{b}'" in str(info.value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("build/*.o", "build/*.txt"),
        ("build/*.o", "build/app"),
        ("gen/[a-c]*", "gen/d*"),
        ("gen/[!a]x", "gen/ax"),
        ("docs/**/*.html", "build/**"),
    ],
)
def test_disjoint_outputs_are_accepted(a: str, b: str) -> None:
    """Patterns that cannot meet pass, and one task may list overlapping patterns."""
    check_disjoint_outputs({"one": [a], "two": [b], "three": ["x/*", "x/y"]})


_segment = st.sampled_from(["a", "b", "ab", "*", "a*", "*b", "?", "[ab]", "[!a]", "**"])
_name = st.sampled_from(["a", "b", "ab", "ba", "bb"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_segment, min_size=1, max_size=4),
    st.lists(_segment, min_size=1, max_size=4),
    st.lists(_name, min_size=1, max_size=5),
)
def test_overlap_check_has_no_false_negatives(p: list[str], q: list[str], path: list[str]) -> None:
    """If some file path matches both patterns, the overlap check rejects them."""
    a, b = "/".join(p), "/".join(q)
    rel = "/".join(path)
    pa, pb = globs.compile_pattern(a), globs.compile_pattern(b)

    def matches(pattern: globs.Pattern) -> bool:
        n = len(pattern.prefix)
        parts = rel.split("/")
        if parts[:n] != list(pattern.prefix):
            return False
        rest = "/".join(parts[n:])
        if pattern.regex is None:
            return True  # literal: the path is it or lies beneath it
        return bool(rest) and pattern.regex.fullmatch(rest) is not None

    if matches(pa) and matches(pb):
        with pytest.raises(DefinitionError):
            check_disjoint_outputs({"t1": [a], "t2": [b]})


# --------------------------------------------------------------------------- unmatched inputs


def _input_project(tmp_path: Path, inputs: str) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.csv").write_text("1,2\n")
    (tmp_path / "tasks.py").write_text(
        "from taskrun import task, optional\n"
        f"@task(inputs={inputs})\n"
        "def load() -> int:\n"
        "    return 1\n"
    )
    return tmp_path


def test_a_mistyped_input_is_an_error_naming_pattern_and_task(tmp_path: Path, run_cli) -> None:
    """inputs=['dta/in.csv'] (a typo): exit 2, nothing runs, 'did you mean data/in.csv'."""
    root = _input_project(tmp_path, "['dta/in.csv']")
    result = run_cli(root, "run")
    assert result.exit_code == 2, result.output
    assert "'dta/in.csv'" in result.output and "task 'load'" in result.output
    assert "did you mean 'data/in.csv'" in result.output
    assert "tasks.py:" in result.output
    assert not (root / ".taskrun" / "cache").exists() or "ran" not in result.stdout


def test_a_glob_that_matches_nothing_is_an_error(tmp_path: Path, run_cli) -> None:
    """A wildcard that matches no file is an error too, saying how to mark it optional."""
    root = _input_project(tmp_path, "['logs/*.txt']")
    result = run_cli(root, "run")
    assert result.exit_code == 2
    assert "'logs/*.txt'" in result.output and "optional(" in result.output


def test_an_optional_glob_may_match_nothing(tmp_path: Path, run_cli) -> None:
    """optional('logs/*.txt') matching nothing runs; a later match enters the fingerprint."""
    root = _input_project(tmp_path, "['data/in.csv', optional('logs/*.txt')]")
    assert run_cli(root, "run").exit_code == 0
    (root / "logs").mkdir()
    (root / "logs" / "a.txt").write_text("x")
    again = run_cli(root, "run")
    assert again.exit_code == 0 and "0 cached, 1 ran" in again.stdout


def test_an_input_another_task_produces_is_not_an_error(tmp_path: Path, run_cli) -> None:
    """An input that an upstream task's outputs will create need not exist yet."""
    (tmp_path / "tasks.py").write_text(
        "from pathlib import Path\n"
        "from taskrun import task\n"
        "@task(outputs=['build/gen.txt'])\n"
        "def gen() -> None:\n"
        "    Path('build').mkdir(exist_ok=True)\n"
        "    Path('build/gen.txt').write_text('x')\n"
        "@task(deps=[gen], inputs=['build/gen.txt'])\n"
        "def use(gen: None) -> str:\n"
        "    return Path('build/gen.txt').read_text()\n"
    )
    result = run_cli(tmp_path, "run")
    assert result.exit_code == 0, result.output
