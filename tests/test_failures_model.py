"""Random graphs with random failures, skips, conditions and rules against a reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskrun
from taskrun import Outcome, Registry

RULES = ("succeeded", "failed", "always")
BEHAVIOURS = ("ok", "fail", "skip")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A DAG (each task may depend on earlier ones) with a rule, a behaviour and a condition."""
    n = draw(st.integers(min_value=1, max_value=7))
    graph: dict[str, list[str]] = {}
    for i in range(n):
        earlier = list(graph)
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        graph[f"t{i}"] = deps
    return {
        "graph": graph,
        "rules": {t: draw(st.sampled_from(RULES)) if graph[t] else "succeeded" for t in graph},
        "behaviour": {t: draw(st.sampled_from(BEHAVIOURS)) for t in graph},
        "when_false": {t for t in graph if draw(st.integers(0, 5)) == 0},
    }


def reference(scenario: dict[str, Any]) -> dict[str, str]:
    """How each task ends, written from the documented rules and nothing else."""
    states: dict[str, str] = {}
    for task, deps in scenario["graph"].items():
        upstream = [states[d] for d in deps]
        rule = scenario["rules"][task]
        if task in scenario["when_false"]:
            runs = False
        elif rule == "succeeded":
            runs = all(s in ("ran", "cached") for s in upstream)
        elif rule == "failed":
            runs = "failed" in upstream
        else:
            runs = True
        if not runs:
            states[task] = "skipped"
        else:
            states[task] = {"ok": "ran", "fail": "failed", "skip": "skipped"}[
                scenario["behaviour"][task]
            ]
    return states


def build(scenario: dict[str, Any]) -> Registry:
    reg = Registry()
    fns: dict[str, Any] = {}
    with reg.activate():
        for task, deps in scenario["graph"].items():
            rule = scenario["rules"][task]
            annotation = ": Outcome" if rule != "succeeded" else ""
            params = ", ".join(f"{d}{annotation}" for d in deps)
            if task in scenario["when_false"]:
                params = ", ".join(filter(None, [params, "go: bool = False"]))
            src = f"def {task}({params}):\n    return _body()\n"
            behaviour = scenario["behaviour"][task]

            def body(_task: str = task, _behaviour: str = behaviour) -> str:
                if _behaviour == "fail":
                    raise RuntimeError(f"{_task} fails")
                if _behaviour == "skip":
                    taskrun.skip(f"{_task} skips")
                return _task

            scope: dict[str, Any] = {"_body": body, "Outcome": Outcome}
            exec(src, scope)
            extra: dict[str, Any] = {}
            if task in scenario["when_false"]:
                extra["when"] = lambda go: go
            fns[task] = taskrun.task(deps=[fns[d] for d in deps], run_if=rule, **extra)(scope[task])
    return reg


def _run(scenario: dict[str, Any], root: Path, executor: str, **kw: Any) -> Any:
    events: list[Any] = []
    result = taskrun.run(
        list(scenario["graph"]),
        registry=build(scenario),
        root=root,
        executor=executor,
        jobs=2,
        on_event=events.append,
        **kw,
    )
    return result, events


@pytest.mark.parametrize(("executor", "examples"), [("inline", 40), ("thread", 25), ("process", 8)])
def test_keep_going_matches_the_reference_model(
    tmp_path_factory: pytest.TempPathFactory, executor: str, examples: int
) -> None:
    """With --keep-going, every task ends exactly as the reference model says."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios())
    def check(scenario: dict[str, Any]) -> None:
        root = tmp_path_factory.mktemp(executor)
        result, _ = _run(scenario, root, executor, keep_going=True)
        states = {name: r.state for name, r in result.tasks.items()}
        assert states == reference(scenario)
        assert result.ok == ("failed" not in states.values())

    check()


@pytest.mark.parametrize(("executor", "examples"), [("inline", 30), ("thread", 20)])
def test_fail_fast_keeps_the_rules(
    tmp_path_factory: pytest.TempPathFactory, executor: str, examples: int
) -> None:
    """Fail-fast: after the first failure only rule tasks start, and they follow their rule."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios())
    def check(scenario: dict[str, Any]) -> None:
        root = tmp_path_factory.mktemp(executor)
        result, events = _run(scenario, root, executor)
        states = {name: r.state for name, r in result.tasks.items()}
        assert set(states.values()) <= {"ran", "failed", "skipped", "cancelled"}
        first = next((i for i, e in enumerate(events) if e.kind == "failed"), None)
        rules = scenario["rules"]
        for i, event in enumerate(events):
            if event.kind == "started" and first is not None and i > first:
                assert rules[event.task] != "succeeded", event
        for task, deps in scenario["graph"].items():
            upstream = [states[d] for d in deps]
            rule = scenario["rules"][task]
            if task in scenario["when_false"]:
                assert states[task] == "skipped"
            elif rule == "always":
                if scenario["behaviour"][task] != "skip":
                    assert states[task] != "skipped", (task, states)
            elif rule == "failed":
                if scenario["behaviour"][task] != "skip":
                    ran = states[task] != "skipped"
                    assert ran == ("failed" in upstream), (task, upstream, states)
            elif states[task] in ("ran", "failed"):
                assert all(s in ("ran", "cached") for s in upstream)

    check()


@pytest.fixture(scope="module")
def dask_executor() -> Any:
    """One local Dask cluster for the module (a cluster takes seconds to start)."""
    pytest.importorskip("distributed")
    from taskrun.executors.dask import DaskExecutor

    executor = DaskExecutor(2)
    yield executor
    executor.shutdown()


@pytest.mark.slow
def test_keep_going_matches_the_reference_model_on_dask(
    tmp_path_factory: pytest.TempPathFactory, dask_executor: Any
) -> None:
    """The same model holds when the calls run on a Dask cluster."""
    from taskrun.invocation import invoke
    from taskrun.project import open_cache
    from taskrun.scheduler import Scheduler

    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scenario=scenarios())
    def check(scenario: dict[str, Any]) -> None:
        root = tmp_path_factory.mktemp("dask")
        registry = build(scenario)
        invocation = invoke(registry, list(scenario["graph"]), root=root)
        cache = open_cache(root)
        try:
            result = Scheduler(
                invocation, cache=cache, executor=dask_executor, keep_going=True
            ).run()
        finally:
            cache.close()
        assert {n: r.state for n, r in result.tasks.items()} == reference(scenario)

    check()


@pytest.mark.slow
def test_fail_fast_cancels_a_running_call_on_dask(tmp_path: Path, dask_executor: Any) -> None:
    """On Dask too, the first failure cancels the running call: cancelled, never ran."""
    from test_failures import called, racing

    from taskrun.invocation import invoke
    from taskrun.project import open_cache
    from taskrun.scheduler import Scheduler

    events: list[Any] = []
    invocation = invoke(racing(), ["after", "cleanup"], root=tmp_path)
    cache = open_cache(tmp_path)
    try:
        result = Scheduler(
            invocation, cache=cache, executor=dask_executor, on_event=events.append
        ).run()
    finally:
        cache.close()
    kinds = [(e.kind, getattr(e, "task", "")) for e in events]
    assert ("cancelled", "slow") in kinds and ("ran", "slow") not in kinds
    assert result.state("slow") == "cancelled" and result.state("after") == "skipped"
    assert result.products["cleanup"] == "cancelled failed"
    assert "slow-finished" not in called(tmp_path)
