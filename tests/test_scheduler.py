"""The scheduler, through taskrun.run, against every executor and a real cache on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskrun
from taskrun import File, Registry
from taskrun.errors import InvocationError

EXECUTORS = ["inline", "thread", "process"]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each behaviour holds for every executor."""
    return str(request.param)


def ran(root: Path) -> list[str]:
    """Tasks that really executed, in order, from the log they append to."""
    log = root / "runs.log"
    return log.read_text().split() if log.exists() else []


def note(name: str) -> None:
    """Called from inside tasks (cwd is the project root): record a real execution."""
    with open("runs.log", "a") as fh:
        fh.write(name + "\n")


def diamond(root: Path) -> Registry:
    """numbers -> (double, square) -> total, with options on numbers and double."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def numbers(n: int = 3) -> list[int]:
            note("numbers")
            return list(range(n))

        @taskrun.task(deps=[numbers])
        def double(numbers: list[int], factor: int = 2) -> list[int]:
            note("double")
            return [x * factor for x in numbers]

        @taskrun.task(deps=[numbers])
        def square(numbers: list[int]) -> list[int]:
            note("square")
            return [x * x for x in numbers]

        @taskrun.task(deps=[double, square])
        def total(double: list[int], square: list[int]) -> int:
            note("total")
            return sum(double) + sum(square)

    return reg


def go(reg: Registry, root: Path, executor: str, targets=("total",), **kw):  # type: ignore[no-untyped-def]
    return taskrun.run(list(targets), registry=reg, root=root, executor=executor, jobs=2, **kw)


def test_run_returns_products_and_states(tmp_path: Path, executor: str) -> None:
    """A cold run runs every task and returns the target's product."""
    result = go(diamond(tmp_path), tmp_path, executor)
    assert result.ok
    assert result.products["total"] == (0 + 2 + 4) + (0 + 1 + 4)
    assert {r.state for r in result.tasks.values()} == {"ran"}
    assert sorted(ran(tmp_path)) == ["double", "numbers", "square", "total"]


def test_second_run_is_all_cached(tmp_path: Path, executor: str) -> None:
    """Nothing runs twice: the second run hits every task and still has the product."""
    reg = diamond(tmp_path)
    go(reg, tmp_path, executor)
    (tmp_path / "runs.log").unlink()
    result = go(reg, tmp_path, executor)
    assert ran(tmp_path) == []
    assert set(result.names("cached")) == {"numbers", "double", "square", "total"}
    assert result.products["total"] == 11
    assert result.summary.saved >= 0


def test_stored_batches_are_bounded_by_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Products waiting to be stored are written once they add up to the byte bound."""
    from taskrun import scheduler
    from taskrun.cache import Cache

    batches: list[list[str]] = []
    store_many = Cache.store_many

    def spy(self: Cache, items, **kw):  # type: ignore[no-untyped-def]
        batches.append([meta.task for meta, _, _ in items])
        return store_many(self, items, **kw)

    monkeypatch.setattr(Cache, "store_many", spy)
    monkeypatch.setattr(scheduler, "_BATCH_BYTES", 3000)
    reg = Registry()
    with reg.activate():
        for name in ("a", "b", "c", "d"):

            @taskrun.task(name=name)
            def blob() -> bytes:
                return b"x" * 1000

    result = taskrun.run([], registry=reg, root=tmp_path, executor="inline")
    assert result.ok and sorted(result.names("ran")) == ["a", "b", "c", "d"]
    assert sorted(map(len, batches)) == [1, 3]  # three reach the bound; the last one at the end


def test_option_change_reruns_task_and_changed_dependents(tmp_path: Path, executor: str) -> None:
    """Changing double.factor reruns double and total only, and says why."""
    reg = diamond(tmp_path)
    go(reg, tmp_path, executor)
    (tmp_path / "runs.log").unlink()
    result = go(reg, tmp_path, executor, options={"double": {"factor": 3}})
    assert sorted(ran(tmp_path)) == ["double", "total"]
    assert result.tasks["double"].reasons == ("option 'factor' changed: 2 -> 3",)
    assert result.tasks["total"].reasons == ("upstream 'double' changed",)
    assert result.products["total"] == 3 * 3 + 5


def test_early_cutoff(tmp_path: Path, executor: str) -> None:
    """An upstream that reruns with an equal product leaves its dependents cached."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def parity(n: int = 2) -> int:
            note("parity")
            return n % 2

        @taskrun.task(deps=[parity])
        def label(parity: int) -> str:
            note("label")
            return "odd" if parity else "even"

    go(reg, tmp_path, executor, targets=["label"])
    (tmp_path / "runs.log").unlink()
    result = go(reg, tmp_path, executor, targets=["label"], options={"parity": {"n": 4}})
    assert ran(tmp_path) == ["parity"]
    assert result.state("label") == "cached"


def test_product_failing_its_type_is_not_cached(tmp_path: Path, executor: str) -> None:
    """A product that fails its annotation fails the task, and nothing is stored."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def liar() -> int:
            note("liar")
            return "not an int"  # type: ignore[return-value]

    first = go(reg, tmp_path, executor, targets=["liar"])
    assert first.state("liar") == "failed"
    assert "fails its type int" in first.tasks["liar"].error
    second = go(reg, tmp_path, executor, targets=["liar"])
    assert second.state("liar") == "failed"
    assert ran(tmp_path) == ["liar", "liar"]


def failing() -> Registry:
    """boom fails; after needs it; unrelated does not."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def boom() -> int:
            raise ValueError("broken input")

        @taskrun.task(deps=[boom])
        def after(boom: int) -> int:
            return boom

        @taskrun.task
        def unrelated() -> int:
            note("unrelated")
            return 1

    return reg


def test_fail_fast_skips_the_rest(tmp_path: Path) -> None:
    """By default a failure stops the run: nothing new starts, dependents are skipped."""
    result = go(failing(), tmp_path, "inline", targets=["after", "unrelated"])
    assert not result.ok
    assert result.state("boom") == "failed"
    assert "ValueError: broken input" in result.tasks["boom"].error
    assert result.state("after") == "skipped"
    assert result.state("unrelated") == "skipped"
    assert ran(tmp_path) == []


def test_keep_going_runs_what_does_not_depend_on_the_failure(tmp_path: Path) -> None:
    """keep_going: independent tasks still run; dependents of the failure are skipped."""
    result = go(failing(), tmp_path, "inline", targets=["after", "unrelated"], keep_going=True)
    assert result.state("unrelated") == "ran"
    assert result.state("after") == "skipped"
    assert "upstream 'boom'" in result.tasks["after"].error


def test_retries(tmp_path: Path, executor: str) -> None:
    """retries= reruns a failing task; a later success is recorded as ran."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(retries=2)
        def flaky() -> int:
            note("flaky")
            with open("runs.log") as fh:
                attempts = len(fh.read().split())
            if attempts < 3:
                raise RuntimeError(f"attempt {attempts} fails")
            return attempts

    result = go(reg, tmp_path, executor, targets=["flaky"])
    assert result.state("flaky") == "ran"
    assert result.products["flaky"] == 3


def test_timeout_stops_a_hung_task(tmp_path: Path, executor: str) -> None:
    """timeout= fails a task that hangs, and the run ends."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(timeout=1)
        def hang() -> int:
            import time

            time.sleep(60)
            return 1

    result = go(reg, tmp_path, executor, targets=["hang"])
    assert result.state("hang") == "failed"
    assert "timed out" in result.tasks["hang"].error.lower()


def test_hit_nobody_needs_is_never_unpickled(tmp_path: Path) -> None:
    """A cached upstream whose dependents are cached too is never loaded."""
    reg = diamond(tmp_path)
    go(reg, tmp_path, "inline")
    loads: list[str] = []
    from taskrun import cache as cache_module

    original = cache_module.Entry.load

    def spy(self):  # type: ignore[no-untyped-def]
        loads.append(self.meta.task)
        return original(self)

    cache_module.Entry.load = spy  # type: ignore[method-assign]
    try:
        result = go(reg, tmp_path, "inline")
        assert loads == []
        assert result.products["total"] == 11
        assert loads == ["total"]
    finally:
        cache_module.Entry.load = original  # type: ignore[method-assign]


def test_unknown_option_raises_before_anything_runs(tmp_path: Path) -> None:
    """Invocation errors raise from taskrun.run and nothing executes."""
    with pytest.raises(InvocationError, match="factr"):
        go(diamond(tmp_path), tmp_path, "inline", options={"double": {"factr": 3}})
    assert ran(tmp_path) == []


def test_file_product_is_restored_from_the_cache(tmp_path: Path, executor: str) -> None:
    """A File product is stored; deleted, it comes back on a hit without running."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(outputs=["out/hello.txt"])
        def hello(name: str = "world") -> File:
            note("hello")
            os.makedirs("out", exist_ok=True)
            path = File("out/hello.txt")
            path.write_text(f"hello {name}\n")
            return path

    go(reg, tmp_path, executor, targets=["hello"])
    (tmp_path / "out" / "hello.txt").unlink()
    result = go(reg, tmp_path, executor, targets=["hello"])
    assert result.state("hello") == "cached"
    assert (tmp_path / "out" / "hello.txt").read_text() == "hello world\n"
    assert ran(tmp_path) == ["hello"]


def _random_dag(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=8))
    graph: dict[str, list[str]] = {}
    for i in range(n):
        earlier = list(graph)
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        graph[f"t{i}"] = deps
    return graph


random_dags = st.composite(_random_dag)


def _dag_registry(graph: dict[str, list[str]]) -> Registry:
    reg = Registry()
    fns: dict[str, object] = {}
    with reg.activate():
        for name, deps in graph.items():
            # Each task returns its name joined with its inputs' products: the result
            # depends on the whole upstream, so any mix-up shows.
            def body(_name: str = name, **products: str) -> str:
                return _name + "(" + ",".join(products[k] for k in sorted(products)) + ")"

            src = (
                f"def {name}({', '.join(deps)}):\n"
                f"    return _body(**{{{', '.join(f'{d!r}: {d}' for d in deps)}}})\n"
            )
            scope: dict[str, object] = {"_body": body}
            exec(src, scope)
            fn = scope[name]
            fns[name] = taskrun.task(deps=[fns[d] for d in deps])(fn)  # type: ignore[arg-type]
    return reg


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=random_dags())
def test_results_equal_a_serial_run(
    tmp_path_factory: pytest.TempPathFactory, graph: dict[str, list[str]]
) -> None:
    """On random DAGs, thread and process executors give the inline (serial) products."""
    reg = _dag_registry(graph)
    targets = list(graph)
    results = {}
    for ex in EXECUTORS:
        root = tmp_path_factory.mktemp(ex)
        results[ex] = dict(
            taskrun.run(targets, registry=reg, root=root, executor=ex, jobs=2).products
        )
    assert results["thread"] == results["inline"]
    assert results["process"] == results["inline"]


def test_undeclared_product_file_is_never_overwritten(tmp_path: Path) -> None:
    """A File product that is not a declared output and was edited makes a miss, not a restore."""
    (tmp_path / "config.toml").write_text("a = 1\n")
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def config() -> File:
            note("config")
            return File("config.toml")

    go(reg, tmp_path, "inline", targets=["config"])
    (tmp_path / "config.toml").write_text("a = 2\n")
    result = go(reg, tmp_path, "inline", targets=["config"])
    assert (tmp_path / "config.toml").read_text() == "a = 2\n"
    assert result.state("config") == "ran"
    assert result.tasks["config"].reasons == (
        "product file 'config.toml' differs from the cached one",
    )


def test_declaring_a_new_output_reruns_the_task(tmp_path: Path) -> None:
    """Adding a path to outputs= (code unchanged) reruns the task, so the file is cached."""

    def build(outputs: list[str]) -> Registry:
        reg = Registry()
        with reg.activate():

            @taskrun.task(outputs=outputs)
            def write() -> int:
                note("write")
                File("a.txt").write_text("a")
                File("b.txt").write_text("b")
                return 1

        return reg

    go(build(["a.txt"]), tmp_path, "inline", targets=["write"])
    result = go(build(["a.txt", "b.txt"]), tmp_path, "inline", targets=["write"])
    assert result.state("write") == "ran"
    assert result.tasks["write"].reasons == (
        "declared outputs changed: ['a.txt'] -> ['a.txt', 'b.txt']",
    )
    (tmp_path / "b.txt").unlink()
    again = go(build(["a.txt", "b.txt"]), tmp_path, "inline", targets=["write"])
    assert again.state("write") == "cached"
    assert (tmp_path / "b.txt").read_text() == "b"


def test_an_upstream_product_that_cannot_be_loaded_is_recomputed(tmp_path: Path) -> None:
    """A cached upstream whose product fails to load runs again, with a warning."""
    from taskrun import cache as cache_module
    from taskrun.errors import IntegrityError

    reg = diamond(tmp_path)
    go(reg, tmp_path, "inline")
    (tmp_path / "runs.log").unlink()
    original = cache_module.Entry.load

    def broken(self):  # type: ignore[no-untyped-def]
        if self.meta.task == "numbers":
            raise IntegrityError("payload digest mismatch")
        return original(self)

    events: list[object] = []
    cache_module.Entry.load = broken  # type: ignore[method-assign]
    try:
        result = go(
            reg, tmp_path, "inline", options={"double": {"factor": 3}}, on_event=events.append
        )
    finally:
        cache_module.Entry.load = original  # type: ignore[method-assign]
    assert result.ok
    assert result.products["total"] == 3 * 3 + 5
    # square hit before the bad load was found; numbers reran with an equal product.
    assert sorted(ran(tmp_path)) == ["double", "numbers", "total"]
    assert result.state("square") == "cached"
    warnings = [e for e in events if type(e).__name__ == "Warned"]
    assert any("could not be loaded" in e.message for e in warnings)  # type: ignore[attr-defined]


def test_an_entry_that_cannot_be_restored_is_replaced_by_the_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs that cannot be restored: the rerun's result replaces the entry, once."""
    import uuid

    import taskrun.files
    from taskrun.errors import CacheError

    reg = Registry()
    with reg.activate():

        @taskrun.task(outputs=["out.txt"])
        def stamp() -> str:
            note("stamp")
            value = uuid.uuid4().hex
            Path("out.txt").write_text(value)
            return value

    first = taskrun.run("stamp", registry=reg, root=tmp_path).products["stamp"]
    real = taskrun.files.restore_outputs

    def broken(*args: object, **kwargs: object) -> object:
        raise CacheError("a directory is in the way")

    monkeypatch.setattr(taskrun.files, "restore_outputs", broken)
    (tmp_path / "out.txt").unlink()
    second = taskrun.run("stamp", registry=reg, root=tmp_path).products["stamp"]
    assert second != first and ran(tmp_path) == ["stamp", "stamp"]
    monkeypatch.setattr(taskrun.files, "restore_outputs", real)
    (tmp_path / "out.txt").unlink()
    third = taskrun.run("stamp", registry=reg, root=tmp_path)
    assert third.tasks["stamp"].state == "cached"
    assert third.products["stamp"] == second
    assert (tmp_path / "out.txt").read_text() == second
