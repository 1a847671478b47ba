"""Products of any Python kind: annotations, checks, define_type over any class, errors.

A task file written the way a new user writes Python must load, run, cache and cut off
early; every definition mistake of a file is reported in one go.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional, TypedDict

import pytest
from cli_support import taskrun_process

import taskrun
from taskrun.errors import DefinitionError, TypeCheckError
from taskrun.loader import load_task_file
from taskrun.registry import Registry
from taskrun.types import UnsupportedAnnotation, resolve_annotation


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Pair(NamedTuple):
    name: str
    count: int


class Movie(TypedDict):
    title: str
    year: int


# -- resolve_annotation(product=True) --------------------------------------------------

ACCEPTED: list[tuple[Any, Any, Any]] = [
    # (annotation, a value it accepts, a value it refuses)
    (list, [1, "a"], (1,)),
    (dict, {1: "a"}, [1]),
    (set, {1, 2}, [1, 2]),
    (frozenset, frozenset({1}), {1}),
    (tuple, (1, "a"), [1]),
    (set[str], {"a", "b"}, {"a", 1}),
    (frozenset[int], frozenset({1, 2}), frozenset({"x"})),
    (tuple[int, str], (1, "a"), (1, 2)),
    (tuple[int, ...], (1, 2, 3), (1, "a")),
    (int | str, "a", 1.5),
    (Optional[Point], None, Pair("a", 1)),  # noqa: UP045 - Optional is what is tested
    (Point, Point(1, 2), (1, 2)),
    (Pair, Pair("a", 1), ("a", 1)),
    (Movie, {"title": "x", "year": 1}, ["x"]),
    (datetime.date, datetime.date(2024, 1, 2), "2024-01-02"),
    (dict[int, Point], {1: Point(1, 2)}, {"1": Point(1, 2)}),
    (list[Point], [Point(1, 2)], [(1, 2)]),
    (Sequence[int], (1, 2), {1, 2}),
]


@pytest.mark.parametrize(("annotation", "good", "bad"), ACCEPTED, ids=repr)
def test_any_annotation_checks_a_product(annotation: Any, good: Any, bad: Any) -> None:
    """Each annotation accepts its kind of value and refuses another kind."""
    t = resolve_annotation(annotation, product=True)
    assert t.check(good) == good
    with pytest.raises(TypeCheckError):
        t.check(bad)


def test_any_and_no_annotation_accept_everything() -> None:
    """`Any` checks nothing."""
    t = resolve_annotation(Any, product=True)
    assert t.check(object) is object


def test_fixed_tuple_keeps_a_namedtuple() -> None:
    """A NamedTuple checked against tuple[str, int] stays a NamedTuple."""
    value = Pair("a", 1)
    assert resolve_annotation(tuple[str, int], product=True).check(value) is value


def test_union_error_lists_every_member() -> None:
    """A value that fits no member of a union says what each member wanted."""
    with pytest.raises(TypeCheckError) as info:
        resolve_annotation(int | Point, product=True).check("x")
    assert "int | " in info.value.message and "Point" in info.value.message


def test_option_of_a_class_has_no_text_form() -> None:
    """As an option, a class without a text form is refused, naming parse=."""
    with pytest.raises(UnsupportedAnnotation) as info:
        resolve_annotation(Point)
    assert "parse=" in str(info.value)


# -- task files -----------------------------------------------------------------------

PRODUCT_KINDS = """
    import dataclasses, datetime
    from typing import Any, NamedTuple, Optional, TypedDict
    from taskrun import task

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int

    class Pair(NamedTuple):
        name: str
        count: int

    class Movie(TypedDict):
        title: str
        year: int

    @task
    def a_list() -> list:
        return [1, "x"]

    @task
    def a_dict() -> dict:
        return {1: 2}

    @task
    def tags() -> set[str]:
        return {"b", "a"}

    @task
    def ids() -> frozenset[int]:
        return frozenset({3, 1})

    @task
    def pair() -> tuple[int, str]:
        return (1, "a")

    @task
    def either() -> int | str:
        return "s"

    @task
    def maybe() -> Optional[Point]:
        return None

    @task
    def point() -> Point:
        return Point(1, 2)

    @task
    def named() -> Pair:
        return Pair("a", 1)

    @task
    def movie() -> Movie:
        return {"title": "x", "year": 2000}

    @task
    def day() -> datetime.date:
        return datetime.date(2024, 1, 2)

    @task
    def anything() -> Any:
        return object

    @task
    def bare():
        return 3

    @task(deps=[tags, ids, pair, either, maybe, point, named, movie, day, a_list, a_dict])
    def total(tags: set[str], ids: frozenset[int], pair: tuple[int, str], either: int | str,
              maybe: Optional[Point], point: Point, named: Pair, movie: Movie,
              day: datetime.date, a_list: list, a_dict: dict) -> tuple[int, ...]:
        return (len(tags), len(ids), pair[0], point.x, named.count, movie["year"], day.day)
"""


def _load(tmp_path: Path, write_project: Any, source: str) -> Registry:
    write_project(tmp_path, source)
    return load_task_file(tmp_path / "tasks.py")


def test_every_product_kind_runs_and_caches(tmp_path: Path, write_project: Any) -> None:
    """A task file using every kind of annotation runs, then is all cached."""
    reg = _load(tmp_path, write_project, PRODUCT_KINDS)
    first = taskrun.run(
        ["total", "anything", "bare"], registry=reg, root=tmp_path, executor="inline"
    )
    assert first.ok, {n: r.error for n, r in first.tasks.items() if r.error}
    assert first.products["total"] == (2, 2, 1, 1, 1, 2000, 2)
    second = taskrun.run(
        ["total", "anything", "bare"], registry=reg, root=tmp_path, executor="inline"
    )
    assert set(second.names("cached")) == set(second.tasks)


def test_a_product_failing_its_type_fails_and_is_not_cached(
    tmp_path: Path, write_project: Any
) -> None:
    """A dataclass product of the wrong class fails the task; the next run retries."""
    reg = _load(
        tmp_path,
        write_project,
        """
        import dataclasses
        from taskrun import task

        @dataclasses.dataclass
        class Point:
            x: int

        @task
        def point() -> Point:
            return {"x": 1}
        """,
    )
    for _ in range(2):
        result = taskrun.run(["point"], registry=reg, root=tmp_path, executor="inline")
        assert result.state("point") == "failed"
        # Named as written in the task file, not by the loader's private module name.
        assert "tasks.Point" in result.tasks["point"].error
        assert "taskrun_taskfile" not in result.tasks["point"].error


def test_define_type_over_any_class(tmp_path: Path, write_project: Any) -> None:
    """define_type accepts a plain class as parent: isinstance, then the predicate."""
    reg = _load(
        tmp_path,
        write_project,
        """
        import dataclasses
        from taskrun import task, define_type

        @dataclasses.dataclass
        class Box:
            size: int

        Small = define_type("Small", Box, lambda b: b.size < 10, doc="a box below 10")

        @task
        def good() -> Small:
            return Box(3)

        @task
        def big() -> Small:
            return Box(30)
        """,
    )
    small = reg.types["Small"]
    assert small.name == "Small"
    result = taskrun.run(
        ["good", "big"], registry=reg, root=tmp_path, executor="inline", keep_going=True
    )
    assert result.state("good") == "ran"
    assert result.state("big") == "failed"
    assert "a box below 10" in result.tasks["big"].error


def test_define_type_over_a_dataframe(tmp_path: Path, write_project: Any) -> None:
    """`define_type("Frame", pd.DataFrame, ...)` checks a DataFrame product."""
    pytest.importorskip("pandas")
    reg = _load(
        tmp_path,
        write_project,
        """
        import pandas as pd
        from taskrun import task, define_type

        Frame = define_type("Frame", pd.DataFrame, lambda f: not f.empty, doc="rows")

        @task
        def table() -> Frame:
            return pd.DataFrame({"a": [1, 2]})

        @task
        def empty() -> Frame:
            return pd.DataFrame({"a": []})

        @task
        def wrong() -> pd.DataFrame:
            return [1]
        """,
    )
    result = taskrun.run(
        ["table", "empty", "wrong"], registry=reg, root=tmp_path, executor="inline", keep_going=True
    )
    assert result.state("table") == "ran"
    assert result.state("empty") == "failed"
    assert result.state("wrong") == "failed"
    assert "pandas.DataFrame" in result.tasks["wrong"].error


def test_option_of_a_type_without_text_form(definition: Any) -> None:
    """An option whose type has no text form is a definition error naming parse=."""
    message = definition("""
        import dataclasses
        from taskrun import task, define_type

        @dataclasses.dataclass
        class Box:
            size: int

        Small = define_type("Small", Box, lambda b: b.size < 10)

        @task
        def job(box: Small = Box(1)) -> None: ...
        """)
    assert "option 'box'" in message and "no text form" in message and "parse=" in message


def test_option_with_parse_over_a_class(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """With parse=, a class-parent type serves as an option too."""
    reg = _load(
        tmp_path,
        write_project,
        """
        import dataclasses
        from pathlib import Path
        from taskrun import task, define_type

        @dataclasses.dataclass(frozen=True)
        class Box:
            size: int

        Sized = define_type("Sized", Box, parse=lambda s: Box(int(s)))

        @task(cache=False)
        def job(box: Sized = Box(1)) -> int:
            Path("size.txt").write_text(str(box.size))
            return box.size
        """,
    )
    assert reg.tasks["job"].options[0].type.name == "Sized"
    result = run_cli(tmp_path, "run", "job", "-o", "box=7")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "size.txt").read_text() == "7"


@pytest.fixture
def definition(tmp_path: Path, write_project: Any) -> Any:
    """``definition(source) -> message`` of the DefinitionError loading it raises."""

    def load(source: str) -> str:
        write_project(tmp_path, source)
        with pytest.raises(DefinitionError) as info:
            load_task_file(tmp_path / "tasks.py")
        return info.value.message

    return load


# -- every definition error at once ---------------------------------------------------

FIVE_MISTAKES = """\
from taskrun import task, define_type

Bad = define_type("Bad", int, 3)

@task
def one(n=1) -> int:
    return n

@task(dep=[one])
def two() -> int:
    return 2

@task
def three(top: int = "x") -> int:
    return top

@task
def three(x: int = 1) -> int:
    return x

@task(deps=[one])
def four(one: int, *rest: int, flag: object = None) -> int:
    return one

@task
def fine() -> int:
    return 1

@task
def fine() -> int:
    return 2
"""


def test_every_error_of_a_task_file_at_once(definition: Any, tmp_path: Path) -> None:
    """Eight mistakes in seven definitions are all reported, each with its line (the
    second 'three' is a duplicate although the first failed)."""
    message = definition(FIVE_MISTAKES)
    path = (tmp_path / "tasks.py").resolve()
    lines = FIVE_MISTAKES.splitlines()

    def line(marker: str) -> str:
        return f"{path}:{lines.index(marker) + 1}"

    assert message.startswith("8 definition errors in ")
    bad_type = 'Bad = define_type("Bad", int, 3)'
    assert f"type 'Bad' at {line(bad_type)}" in message
    assert f"task 'one' ({line('@task')})" in message and "option 'n'" in message
    assert "unknown argument 'dep'" in message and "did you mean 'deps'" in message
    assert "the default of option 'top'" in message
    assert "task 'fine' is defined twice" in message
    # Each decorator's line number is its def's index (the line above, counted from 1).
    first = lines.index('def three(top: int = "x") -> int:')
    again = lines.index("def three(x: int = 1) -> int:")
    assert f"'three' is defined twice: first at {path}:{first}, again at {path}:{again}" in message
    assert "'rest' is *args" in message and "option 'flag'" in message


def test_a_dependency_on_a_broken_task_is_not_an_error_of_its_own(definition: Any) -> None:
    """A task whose dependency failed to define is not reported a second time."""
    message = definition("""
        from taskrun import task

        @task
        def base(n) -> int:
            return n

        @task(deps=[base])
        def top(base: int) -> int:
            return base
        """)
    assert "task 'base'" in message and "task 'top'" not in message


def test_an_exception_after_definition_errors_is_reported_with_them(definition: Any) -> None:
    """A crash later in the file is listed after the definition errors before it."""
    message = definition("""
        from taskrun import task

        @task
        def base(n) -> int:
            return n

        undefined_name
        """)
    assert "2 definition errors" in message
    assert "parameter 'n'" in message and "NameError" in message


def test_every_error_through_a_real_process(tmp_path: Path, write_project: Any) -> None:
    """`taskrun list` in a real process exits 2 and prints every definition error."""
    write_project(tmp_path, FIVE_MISTAKES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "8 definition errors" in proc.stderr
    assert proc.stderr.count("\n  - ") == 8
    assert "Traceback" not in proc.stderr


def test_registry_outside_the_loader_still_raises_at_once(registry: Registry) -> None:
    """Without the loader, a definition error raises where it is written (tests, REPL)."""
    with pytest.raises(DefinitionError, match="parameter 'n'"):

        @taskrun.task
        def job(n) -> int:  # type: ignore[no-untyped-def]
            return int(n)


AWKWARD_PRODUCTS = """
from dataclasses import dataclass, field
from taskrun import task

@dataclass
class Model:
    weights: list[float]
    _memo: dict = field(init=False, repr=False)  # set later, if ever

@dataclass
class Base:
    x: int

class Lazy(Base):
    @property
    def x(self) -> int:
        raise ValueError("not loaded yet")

    @x.setter
    def x(self, value: int) -> None:
        pass

@task
def train() -> Model:
    return Model([0.1, 0.2])

@task
def lazy() -> Base:
    return Lazy(1)
"""


def test_products_that_resist_digesting(tmp_path: Path, write_project: Any) -> None:
    """A dataclass with a field never set is digested by its pickle (with the usual
    warning) and cached; a product whose own code raises while it is read fails its task
    with a message naming the type and the fix, never taskrun with a traceback."""
    write_project(tmp_path, AWKWARD_PRODUCTS)
    first = taskrun_process(tmp_path, "run", "train")
    assert first.returncode == 0, first.stderr
    assert "field '_memo' is not set" in first.stdout + first.stderr
    assert "register_digest(Model" in first.stdout + first.stderr
    again = taskrun_process(tmp_path, "run", "train")
    assert again.returncode == 0 and "cached   train" in again.stdout, again.stdout

    failed = taskrun_process(tmp_path, "run", "lazy")
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert (
        "failed   lazy: cannot digest a product of type 'tasks.Lazy': reading it raised"
        " ValueError: not loaded yet; give the type a canonical form with"
        " taskrun.register_digest(Lazy, lambda v: <plain data>)"
    ) in failed.stdout
    runs = taskrun_process(tmp_path, "runs")
    newest = runs.stdout.splitlines()[0]
    assert " failed " in newest and "1 failed" in newest and "running" not in newest, runs.stdout
