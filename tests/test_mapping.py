"""Mapped and streaming tasks: per-item calls and cache entries, fan-out while a generator runs.

Projects are real task files on disk, loaded afresh for each run like the command line
does; tasks append what really ran to ``runs.log`` in the project.
"""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskrun
from taskrun import events as ev
from taskrun.errors import DefinitionError
from taskrun.loader import load_task_file
from taskrun.registry import Registry

EXECUTORS = ["inline", "thread", "process"]
STREAMING = ["thread", "process"]  # the inline executor runs one call at a time

C_BUILD = """
    from pathlib import Path
    from taskrun import Dir, File, task

    def note(what):
        with open("runs.log", "a") as fh:
            fh.write(what + "\\n")

    @task
    def sources(root: Dir = Dir("src"), reverse: bool = False) -> list[File]:
        return sorted(root.glob("*.c"), reverse=reverse)

    @task(map={"source": sources}, outputs=["build/{source.stem}.o"])
    def compile(source: File, flags: str = "-O2") -> File:
        note("compile " + source.as_posix())
        out = Path("build") / (source.stem + ".o")
        out.parent.mkdir(exist_ok=True)
        out.write_text(flags + ":" + source.read_text().upper())
        return File(out)

    @task(deps=[compile])
    def link(compile: list[File]) -> str:
        note("link")
        return "|".join(f.read_text() for f in compile)
"""


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each behaviour holds for every executor."""
    return str(request.param)


@pytest.fixture
def cbuild(tmp_path: Path) -> Path:
    """The contract's C build: sources -> compile (mapped) -> link, with three sources."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(C_BUILD))
    src = tmp_path / "src"
    src.mkdir()
    for name in "abc":
        (src / f"{name}.c").write_text(f"int {name};")
    return tmp_path


def run(
    root: Path, targets: list[str], executor: str = "thread", **kwargs: Any
) -> tuple[Any, list[str]]:
    """Load the task file afresh, run, return (result, what ran this time)."""
    log = root / "runs.log"
    log.unlink(missing_ok=True)
    registry = load_task_file(root / "tasks.py")
    kwargs.setdefault("jobs", 2)
    result = taskrun.run(targets, registry=registry, executor=executor, **kwargs)
    ran = log.read_text().splitlines() if log.exists() else []
    return result, ran


# -- per-item calls and caching -------------------------------------------------------------


def test_one_call_per_item_and_the_product_is_the_list_in_order(
    cbuild: Path, executor: str
) -> None:
    """Each source is compiled once; link gets the list of results in item order."""
    result, ran = run(cbuild, ["link"], executor)
    assert result.ok, result.tasks
    assert sorted(ran) == ["compile src/a.c", "compile src/b.c", "compile src/c.c", "link"]
    assert result.products["link"] == "-O2:INT A;|-O2:INT B;|-O2:INT C;"
    assert result.state("compile[src/a.c]") == "ran"
    assert result.state("compile") == "ran"
    assert (cbuild / "build" / "b.o").read_text() == "-O2:INT B;"
    assert result.summary.total == 5  # sources, three item calls, link


def test_a_warm_run_calls_nothing(cbuild: Path, executor: str) -> None:
    """Second run: every item call is a hit; the mapped task is cached as a whole."""
    run(cbuild, ["link"], executor)
    result, ran = run(cbuild, ["link"], executor)
    assert ran == []
    assert result.state("compile") == "cached"
    assert result.names("cached") == [
        "sources",
        "compile",
        "link",
        "compile[src/a.c]",
        "compile[src/b.c]",
        "compile[src/c.c]",
    ]


def test_adding_one_item_runs_one_call(cbuild: Path, executor: str) -> None:
    """A new source compiles that source only (and link, whose input changed)."""
    run(cbuild, ["link"], executor)
    (cbuild / "src" / "d.c").write_text("int d;")
    result, ran = run(cbuild, ["link"], executor)
    assert sorted(ran) == ["compile src/d.c", "link"]
    assert result.products["link"].endswith("|-O2:INT D;")


def test_editing_one_item_runs_one_call(cbuild: Path, executor: str) -> None:
    """An edited source recompiles alone."""
    run(cbuild, ["link"], executor)
    (cbuild / "src" / "b.c").write_text("int bb;")
    _, ran = run(cbuild, ["link"], executor)
    assert sorted(ran) == ["compile src/b.c", "link"]


def test_removing_one_item_runs_no_call(cbuild: Path) -> None:
    """A removed source runs no compile; link reruns on the shorter list."""
    run(cbuild, ["link"])
    (cbuild / "src" / "a.c").unlink()
    result, ran = run(cbuild, ["link"])
    assert ran == ["link"]
    assert result.products["link"] == "-O2:INT B;|-O2:INT C;"


def test_reordering_items_runs_no_call(cbuild: Path) -> None:
    """Equal items in another order are hits; the product follows the new order."""
    run(cbuild, ["link"])
    result, ran = run(cbuild, ["link"], options={"sources": {"reverse": True}})
    assert ran == ["link"]
    assert result.products["link"] == "-O2:INT C;|-O2:INT B;|-O2:INT A;"


def test_an_option_of_the_mapped_task_reruns_every_item(cbuild: Path) -> None:
    """The options are in every item's fingerprint."""
    run(cbuild, ["link"])
    _, ran = run(cbuild, ["link"], options={"compile": {"flags": "-O0"}})
    assert sorted(ran) == ["compile src/a.c", "compile src/b.c", "compile src/c.c", "link"]


def test_early_cutoff_through_a_mapped_task(cbuild: Path) -> None:
    """An item call that reruns with an equal product leaves the downstream task cached."""
    run(cbuild, ["link"])
    (cbuild / "src" / "a.c").write_text("INT A;")  # another source, the same object file
    result, ran = run(cbuild, ["link"])
    assert ran == ["compile src/a.c"]
    assert result.state("link") == "cached"


def test_per_item_outputs_are_restored_from_the_cache(cbuild: Path, executor: str) -> None:
    """Deleted object files come back from each item's cache entry without a call."""
    run(cbuild, ["link"], executor)
    for path in (cbuild / "build").iterdir():
        path.unlink()
    _result, ran = run(cbuild, ["link"], executor)
    assert ran == []
    assert (cbuild / "build" / "c.o").read_text() == "-O2:INT C;"


def test_force_reruns_every_item(cbuild: Path) -> None:
    """`force=["compile"]` reruns each item call."""
    run(cbuild, ["link"])
    _, ran = run(cbuild, ["link"], force=["compile"])
    assert sorted(ran) == ["compile src/a.c", "compile src/b.c", "compile src/c.c"]


def test_items_are_named_by_their_text_or_index(tmp_path: Path) -> None:
    """Short text forms name items; others get their index; equal items share one call."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        @task
        def things():
            return ["x", {"a": 1}, "x", 7, {"a": 1}]

        @task(map=[things])
        def show(things) -> str:
            with open("runs.log", "a") as fh:
                fh.write(repr(things) + "\\n")
            return repr(things)
    """)
    )
    result, ran = run(tmp_path, ["show"])
    assert len(ran) == 3
    items = sorted(n for n in result.tasks if n.startswith("show["))
    assert items == ["show[1]", "show[7]", "show[x]"]
    assert result.products["show"] == ["'x'", "{'a': 1}", "'x'", "7", "{'a': 1}"]


def test_a_dict_is_mapped_over_its_pairs(tmp_path: Path) -> None:
    """A dict product gives (key, value) items, shown by key."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        @task
        def table() -> dict[str, int]:
            return {"one": 1, "two": 2}

        @task(map={"pair": table})
        def double(pair) -> str:
            key, value = pair
            return f"{key}={2 * value}"
    """)
    )
    result, _ = run(tmp_path, ["double"])
    assert result.products["double"] == ["one=2", "two=4"]
    assert result.state("double[two]") == "ran"


def test_a_product_that_cannot_be_mapped_fails_the_mapped_task(tmp_path: Path) -> None:
    """Mapping over a string is refused with the fix."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        @task
        def name() -> str:
            return "abc"

        @task(map=[name])
        def shout(name: str) -> str:
            return name.upper()
    """)
    )
    result, _ = run(tmp_path, ["shout"])
    assert result.state("shout") == "failed"
    assert "would map over its characters" in result.tasks["shout"].error
    assert "return a list" in result.tasks["shout"].error


def test_nested_maps(tmp_path: Path, executor: str) -> None:
    """A mapped task mapped over again: one call per item of the item results."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        def note(what):
            with open("runs.log", "a") as fh:
                fh.write(what + "\\n")

        @task
        def numbers(n: int = 3) -> list[int]:
            return list(range(n))

        @task(map={"x": numbers})
        def square(x: int) -> int:
            note(f"square {x}")
            return x * x

        @task(map={"y": square})
        def plus_one(y: int) -> int:
            note(f"plus_one {y}")
            return y + 1

        @task(deps=[plus_one])
        def total(plus_one: list[int]) -> int:
            return sum(plus_one)
    """)
    )
    result, ran = run(tmp_path, ["total"], executor)
    assert result.products["total"] == 1 + 2 + 5
    assert sorted(ran) == sorted(
        ["square 0", "square 1", "square 2", "plus_one 0", "plus_one 1", "plus_one 4"]
    )
    result, ran = run(tmp_path, ["total"], executor, options={"numbers": {"n": 4}})
    assert sorted(ran) == ["plus_one 9", "square 3"]
    assert result.products["total"] == 1 + 2 + 5 + 10


def test_failing_items_fail_the_mapped_task_and_keep_the_others(tmp_path: Path) -> None:
    """With keep_going, every item runs; the good ones are cached, the task fails."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        import os
        from taskrun import task

        def note(what):
            with open("runs.log", "a") as fh:
                fh.write(what + "\\n")

        @task
        def numbers() -> list[int]:
            return [1, 2, 3]

        @task(map={"x": numbers})
        def check(x: int) -> int:
            note(f"check {x}")
            if os.path.exists(f"bad-{x}"):
                raise ValueError(f"bad item {x}")
            return x

        @task(deps=[check])
        def total(check: list[int]) -> int:
            return sum(check)
    """)
    )
    (tmp_path / "bad-2").touch()
    result, ran = run(tmp_path, ["total"], keep_going=True)
    assert sorted(ran) == ["check 1", "check 2", "check 3"]
    assert result.state("check[2]") == "failed"
    assert "ValueError: bad item 2" in result.tasks["check[2]"].error
    assert result.state("check") == "failed"
    assert "1 of 3 items did not complete: check[2]" in result.tasks["check"].error
    assert result.state("total") == "skipped"
    assert result.summary.failed == 1
    (tmp_path / "bad-2").unlink()
    result, ran = run(tmp_path, ["total"])
    assert ran == ["check 2"]
    assert result.products["total"] == 6


def test_retries_are_per_item(tmp_path: Path, executor: str) -> None:
    """An item that fails once is retried alone."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        import os
        from taskrun import task

        @task
        def numbers() -> list[int]:
            return [1, 2]

        @task(map={"x": numbers}, retries=1)
        def flaky(x: int) -> int:
            with open("runs.log", "a") as fh:
                fh.write(f"flaky {x}\\n")
            if x == 2 and not os.path.exists("tried"):
                open("tried", "w").close()
                raise ConnectionError("once")
            return x
    """)
    )
    events: list[ev.Event] = []
    result, ran = run(tmp_path, ["flaky"], executor, on_event=events.append)
    assert result.ok
    assert sorted(ran) == ["flaky 1", "flaky 2", "flaky 2"]
    retried = [e.task for e in events if isinstance(e, ev.TaskRetrying)]
    assert retried == ["flaky[2]"]


def test_timeouts_are_per_item(tmp_path: Path) -> None:
    """An item past its timeout fails; the other items are cached."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        import time
        from taskrun import task

        @task
        def numbers() -> list[int]:
            return [1, 2]

        @task(map={"x": numbers}, timeout=0.5)
        def slow(x: int) -> int:
            if x == 2:
                time.sleep(30)
            return x
    """)
    )
    result, _ = run(tmp_path, ["slow"], "process", keep_going=True)
    assert result.state("slow[1]") == "ran"
    assert result.state("slow[2]") == "failed"
    assert "timed out" in result.tasks["slow[2]"].error


def test_fail_fast_stops_at_the_first_failing_item(tmp_path: Path) -> None:
    """Without keep_going, items not started when one fails are skipped."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from taskrun import task

        @task
        def numbers() -> list[int]:
            return [1, 2, 3, 4]

        @task(map={"x": numbers})
        def check(x: int) -> int:
            with open("runs.log", "a") as fh:
                fh.write(f"check {x}\\n")
            if x == 1:
                raise ValueError("first")
            return x
    """)
    )
    result, ran = run(tmp_path, ["check"], "inline")
    assert ran == ["check 1"]
    assert [result.state(f"check[{i}]") for i in (1, 2, 3, 4)] == [
        "failed",
        "skipped",
        "skipped",
        "skipped",
    ]
    assert result.state("check") == "skipped"


# -- definitions -----------------------------------------------------------------------------


def test_map_takes_one_upstream(registry: Registry) -> None:
    """Two upstreams in map= is a definition error that says what to do."""

    @taskrun.task
    def a() -> list[int]:
        return [1]

    @taskrun.task
    def b() -> list[int]:
        return [1]

    with pytest.raises(DefinitionError, match="map= takes exactly one upstream task"):

        @taskrun.task(map={"x": a, "y": b})
        def both(x: int, y: int) -> int:
            return x + y


def test_map_needs_the_parameter(registry: Registry) -> None:
    """map=[upstream] passes the item as the upstream's name: the function must take it."""

    @taskrun.task
    def sources() -> list[str]:
        return ["a"]

    with pytest.raises(DefinitionError, match="parameter 'sources', which compile\\(\\)"):

        @taskrun.task(map=[sources])
        def compile(source: str) -> str:
            return source


def test_output_templates_name_the_item(registry: Registry) -> None:
    """An output template naming something other than the item or an option is refused."""

    @taskrun.task
    def sources() -> list[str]:
        return ["a"]

    with pytest.raises(DefinitionError, match="did you mean 'source'"):

        @taskrun.task(map={"source": sources}, outputs=["build/{sorce}.o"])
        def compile(source: str) -> str:
            return source


def test_a_generator_task_is_annotated_as_an_iterator(registry: Registry) -> None:
    """A generator's product is a list of what it yields; `-> list[int]` is refused."""
    with pytest.raises(DefinitionError, match="annotate it as '-> Iterator\\[T\\]'"):

        @taskrun.task
        def numbers() -> list[int]:
            yield 1


def test_a_generator_task_alone_has_the_list_as_product(registry: Registry, tmp_path: Path) -> None:
    """Not mapped over, a generator task still gives (and caches) the list it yielded."""

    @taskrun.task
    def numbers(n: int = 3) -> Iterator[int]:
        yield from range(n)

    result = taskrun.run(["numbers"], registry=registry, root=tmp_path, executor="process")
    assert result.products["numbers"] == [0, 1, 2]
    again = taskrun.run(["numbers"], registry=registry, root=tmp_path, executor="process")
    assert again.state("numbers") == "cached" and again.products["numbers"] == [0, 1, 2]


# -- streaming -------------------------------------------------------------------------------

STREAM = """
    import os, time
    from typing import Iterator
    from taskrun import task

    def note(what):
        with open("runs.log", "a") as fh:
            fh.write(what + "\\n")

    def wait_for(path):
        # Synchronisation, not timing: give up (and fail) only if it never comes.
        end = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > end:
                raise RuntimeError(f"{path} never appeared")
            time.sleep(0.01)

    @task
    def discover(n: int = 4, fail: bool = False) -> Iterator[str]:
        yield "item0"
        # Go on only once the first item's call has run: it ran while we were running.
        wait_for("done-item0")
        for i in range(1, n):
            yield f"item{i}"
        if fail:
            wait_for(f"done-item{n - 1}")
            raise RuntimeError("discovery broke")

    @task(map=[discover])
    def process(discover: str) -> str:
        note("process " + discover)
        open("done-" + discover, "w").close()
        return discover.upper()

    @task(deps=[process])
    def report(process: list[str]) -> str:
        return ",".join(process)
"""


@pytest.fixture
def stream_project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(STREAM))
    return tmp_path


def clear_marks(root: Path) -> None:
    for mark in root.glob("done-*"):
        mark.unlink()


@pytest.mark.parametrize("executor", STREAMING)
def test_item_calls_start_while_the_generator_runs(stream_project: Path, executor: str) -> None:
    """The first item's call runs before the generator ends (the generator waits for it)."""
    events: list[ev.Event] = []
    result, ran = run(stream_project, ["report"], executor, on_event=events.append)
    assert result.ok, result.tasks
    assert result.products["report"] == "ITEM0,ITEM1,ITEM2,ITEM3"
    order = [(type(e).__name__, getattr(e, "task", "")) for e in events]
    # The generator cannot end before process[item0] has run (it waits for its file);
    # the driver started that call before it had the generator's outcome.
    assert order.index(("TaskStarted", "process[item0]")) < order.index(("TaskRan", "discover"))
    assert ("MapExpanded", "process") in order[: order.index(("TaskRan", "discover"))]
    assert sorted(ran) == ["process item0", "process item1", "process item2", "process item3"]


@pytest.mark.parametrize("executor", STREAMING)
def test_a_warm_streaming_run_recomputes_nothing(stream_project: Path, executor: str) -> None:
    """The generator's list is cached; no item is recomputed."""
    run(stream_project, ["report"], executor)
    clear_marks(stream_project)
    result, ran = run(stream_project, ["report"], executor)
    assert ran == []
    assert result.state("discover") == "cached"
    assert result.products["report"] == "ITEM0,ITEM1,ITEM2,ITEM3"


@pytest.mark.parametrize("executor", STREAMING)
def test_a_generator_failing_mid_stream_keeps_finished_items(
    stream_project: Path, executor: str
) -> None:
    """The generator fails after its items ran: it fails, their entries stay.

    keep_going, so that no item call still being recorded is cancelled by fail-fast.
    """
    result, ran = run(
        stream_project,
        ["report"],
        executor,
        options={"discover": {"fail": True}},
        keep_going=True,
    )
    assert result.state("discover") == "failed"
    assert "RuntimeError: discovery broke" in result.tasks["discover"].error
    assert sorted(ran) == ["process item0", "process item1", "process item2", "process item3"]
    assert result.state("process[item3]") == "ran"
    assert result.state("report") == "skipped"
    # The marks stay: the generator's items are hits now, so nothing would write them.
    result, ran = run(stream_project, ["report"], executor)
    assert result.state("discover") == "ran"
    assert ran == []  # the generator ran again; every item was a hit
    assert result.products["report"] == "ITEM0,ITEM1,ITEM2,ITEM3"


def test_inline_executor_runs_the_generator_then_its_items(tmp_path: Path) -> None:
    """Inline: one call at a time, so items start when the generator has ended."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        from typing import Iterator
        from taskrun import task

        @task
        def letters() -> Iterator[str]:
            yield from "abc"

        @task(map=[letters])
        def upper(letters: str) -> str:
            return letters.upper()
    """)
    )
    result, _ = run(tmp_path, ["upper"], "inline")
    assert result.products["upper"] == ["A", "B", "C"]


# -- the property ----------------------------------------------------------------------------

ITEMS = st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3)), max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=ITEMS, after=ITEMS)
def test_exactly_the_new_or_changed_items_run(
    before: list[tuple[str, int]], after: list[tuple[str, int]]
) -> None:
    """For any item list and any edit of it, the item calls that run are the new/changed items.

    An item is a name and a content ("b2"): an edit adds, removes, reorders, duplicates
    items or changes their content.
    """
    calls: list[str] = []
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def items(value: list[str] = []) -> list[str]:  # noqa: B006
            return value

        @taskrun.task(map={"item": items})
        def work(item: str) -> str:
            calls.append(item)
            return item.upper()

    def encode(xs: list[tuple[str, int]]) -> list[str]:
        return [f"{k}{v}" for k, v in xs]

    with tempfile.TemporaryDirectory() as root:
        for edit in (before, after):
            calls.clear()
            result = taskrun.run(
                ["work"],
                registry=reg,
                root=root,
                executor="inline",
                options={"items": {"value": encode(edit)}},
            )
            assert result.ok
        assert sorted(calls) == sorted(set(encode(after)) - set(encode(before)))
        assert result.products["work"] == [x.upper() for x in encode(after)]


# -- Ctrl-C ----------------------------------------------------------------------------------

BLOCKING = """
    import os, time
    from taskrun import task

    @task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @task(map={"x": numbers})
    def work(x: int) -> int:
        if x > 1:
            open(f"started-{x}", "w").close()
            while not os.path.exists("release"):
                time.sleep(0.05)
        return x
"""


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_ctrl_c_records_no_item_call_in_flight(tmp_path: Path, executor: str) -> None:
    """SIGINT while two item calls run: exit 130; the finished item is cached, they are not."""
    import json
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "tasks.py").write_text(textwrap.dedent(BLOCKING))
    cmd = [sys.executable, "-m", "taskrun", "run", "--json", "-j", "3", "--executor", executor]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until the driver has recorded work[1]
            event = json.loads(line)
            if event["event"] == "ran" and event["task"] == "work[1]":
                break
        else:
            raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
        while not ((tmp_path / "started-2").exists() and (tmp_path / "started-3").exists()):
            assert proc.poll() is None
            os.sched_yield()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    (tmp_path / "release").touch()
    plan = subprocess.run(
        [sys.executable, "-m", "taskrun", "run", "--dry-run", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    planned = {
        e["task"]: e["action"]
        for e in map(json.loads, plan.stdout.splitlines())
        if e["event"] == "planned"
    }
    # In flight: not recorded. (work[1] had ended and is normally cached too, but a SIGINT
    # that lands while its batch is being written may drop it: only "nothing in flight is
    # recorded" is promised.)
    assert planned["numbers"] == "cached", (err, plan.stdout)
    assert planned["work[2]"] == planned["work[3]"] == "run", (err, plan.stdout)
    assert planned["work"] == "mapped"


# -- the command line ------------------------------------------------------------------------


def test_cli_dry_run_lists_the_items_that_would_run(cbuild: Path, run_cli: Any) -> None:
    """With the upstream cached, a dry run names each item that would run and sums up the rest."""
    assert run_cli(cbuild, "run", "link").exit_code == 0
    (cbuild / "src" / "b.c").write_text("int bb;")
    # sources reruns too (its Dir option changed): items come from its last product.
    out = run_cli(cbuild, "run", "--dry-run", "link").output
    assert "run      compile[src/b.c]: the item (of 'sources') changed" in out
    assert "compile[src/a.c]" not in out
    assert "1 of 3 would run, 2 cached" in out
    assert run_cli(cbuild, "run", "sources").exit_code == 0  # now sources is cached
    out = run_cli(cbuild, "run", "--dry-run", "link").output
    assert "run      compile: 1 of 3 items would run; 2 cached" in out
    assert "run      compile[src/b.c]: the item (of 'sources') changed" in out


def test_cli_explain_says_which_items_changed(cbuild: Path, run_cli: Any) -> None:
    """`taskrun explain compile`: the changed item with its digests, the rest summed up."""
    assert run_cli(cbuild, "run", "link").exit_code == 0
    (cbuild / "src" / "c.c").write_text("int cc;")
    assert run_cli(cbuild, "run", "sources").exit_code == 0
    out = run_cli(cbuild, "explain", "compile").output
    assert "compile[src/c.c]: would run" in out
    assert "the item (of 'sources') changed:" in out
    assert "compile: mapped: 1 of 3 items would run; 2 cached" in out


def test_cli_json_carries_item_keys(cbuild: Path, run_cli: Any) -> None:
    """--json: a `mapped` event with the items, item events with `mapped` and `item`."""
    import json

    result = run_cli(cbuild, "run", "--json", "link")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    mapped = next(d for d in docs if d["event"] == "mapped")
    assert mapped["keys"] == ["src/a.c", "src/b.c", "src/c.c"]
    ran = [d for d in docs if d["event"] == "ran" and d.get("mapped") == "compile"]
    assert sorted(d["item"] for d in ran) == ["src/a.c", "src/b.c", "src/c.c"]
    finished = next(d for d in docs if d["event"] == "map-finished")
    assert finished["items"] == 3 and finished["ran"] == 3 and finished["state"] == "ran"
    assert docs[-1]["event"] == "summary" and docs[-1]["total"] == 5


def test_cli_graph_shows_a_mapped_task_as_one_marked_node(cbuild: Path, run_cli: Any) -> None:
    """dot, mermaid and json mark `compile` as mapped over `sources`."""
    import json

    dot = run_cli(cbuild, "graph").output
    assert '"compile" [label="compile [mapped]", peripheries=2];' in dot
    assert '"sources" -> "compile" [style=bold, label="each"];' in dot
    assert 't1[["compile (mapped)"]]' in run_cli(cbuild, "graph", "--format", "mermaid").output
    nodes = json.loads(run_cli(cbuild, "graph", "--format", "json").output)["nodes"]
    assert [n.get("mapped") for n in nodes] == [None, "sources", None]


def test_cli_list_says_what_a_task_maps_over(cbuild: Path, run_cli: Any) -> None:
    """`taskrun list` names the upstream and the parameter."""
    out = run_cli(cbuild, "list").output
    assert "mapped: one call per item of sources (as source)" in out


def test_cli_force_reruns_every_item(cbuild: Path, run_cli: Any) -> None:
    """`--force compile` reruns each item call, which says it was forced."""
    assert run_cli(cbuild, "run", "link").exit_code == 0
    out = run_cli(cbuild, "run", "--force", "compile", "link").output
    assert out.count(": forced") == 3 and "ran      compile[src/a.c]" in out


def test_cli_clean_removes_templated_outputs(cbuild: Path, run_cli: Any) -> None:
    """`taskrun clean compile` reads the template as a glob."""
    assert run_cli(cbuild, "run", "link").exit_code == 0
    out = run_cli(cbuild, "clean", "compile").output
    assert "removed 3 files" in out
    assert not (cbuild / "build" / "a.o").exists()


def test_a_generator_that_cannot_reach_the_driver_still_returns_its_items(tmp_path: Path) -> None:
    """Where the driver's socket is out of reach (a remote worker), nothing is streamed."""
    from taskrun.mapping import Streaming

    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    gone = str(tmp_path / "no-such.sock")
    assert Streaming(numbers, gone, b"key", "numbers#1")(n=3) == [0, 1, 2]


def test_streamed_items_reach_the_channel_in_order() -> None:
    """The channel queues (stream, index, item) as the generator yields."""
    import cloudpickle

    from taskrun.mapping import ItemChannel, Streaming

    channel = ItemChannel()
    try:

        def letters() -> Iterator[str]:
            yield from "abc"

        assert Streaming(letters, channel.address, channel.authkey, "letters#1")() == list("abc")
        channel.wake.result(timeout=30)
        got: list[tuple[str, int, bytes]] = []
        while len(got) < 3:  # the reader thread may still be queueing the last ones
            got += channel.take()
            if len(got) < 3:
                channel.wake.result(timeout=30)
        assert [(s, i, cloudpickle.loads(b)) for s, i, b in got] == [
            ("letters#1", 0, "a"),
            ("letters#1", 1, "b"),
            ("letters#1", 2, "c"),
        ]
    finally:
        channel.close()


def test_a_wrong_key_cannot_inject_items() -> None:
    """A client without the run's random key is refused; nothing is queued."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    from taskrun.mapping import ItemChannel

    channel = ItemChannel()
    try:
        # PT012 on purpose: the wrong key may be refused at the handshake or at a later send.
        with pytest.raises((AuthenticationError, EOFError, ConnectionError)):  # noqa: PT012
            conn = Client(channel.address, family="AF_UNIX", authkey=b"wrong key")
            conn.send_bytes(b"x#1")
            conn.send_bytes((0).to_bytes(8, "big") + b"junk")
            conn.close()
        assert channel.take() == []
    finally:
        channel.close()


@pytest.mark.parametrize("executor", STREAMING)
def test_streamed_items_wait_for_the_other_dependencies(tmp_path: Path, executor: str) -> None:
    """Items yielded before another dependency is done start once it is, still mid-stream."""
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent("""
        import os, time
        from collections.abc import Iterator
        from taskrun import task

        def wait_for(path):
            end = time.monotonic() + 60
            while not os.path.exists(path):
                if time.monotonic() > end:
                    raise RuntimeError(f"{path} never appeared")
                time.sleep(0.01)

        @task
        def discover() -> Iterator[str]:
            yield "a"
            yield "b"
            open("yielded-b", "w").close()
            wait_for("done-a")  # only an item call started mid-stream can write it
            yield "c"

        @task
        def config() -> str:
            wait_for("yielded-b")  # done only after two items were streamed
            return "!"

        @task(map=[discover], deps=[config])
        def shout(discover: str, config: str) -> str:
            open("done-" + discover, "w").close()
            return discover.upper() + config
    """)
    )
    result, _ = run(tmp_path, ["shout"], executor, jobs=3)
    assert result.ok, result.tasks
    assert result.products["shout"] == ["A!", "B!", "C!"]


@pytest.mark.parametrize("executor", STREAMING)
def test_a_streaming_generator_does_not_take_a_job_slot(
    stream_project: Path, executor: str
) -> None:
    """At -j 1 an item call still runs while the generator waits for it: -j bounds items."""
    result, ran = run(stream_project, ["report"], executor, jobs=1)
    assert result.ok, result.tasks
    assert sorted(ran) == ["process item0", "process item1", "process item2", "process item3"]
