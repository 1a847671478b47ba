"""The task graph: orders, closures, subgraphs and renderings, checked on random DAGs."""

# Hypothesis tests run without a deadline: a busy shared CI machine must not make them flaky.

import json
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import dags

from taskrun.graph import Graph

DAG = dict[str, tuple[str, ...]]


def reference_upstream(deps: DAG, start: list[str]) -> set[str]:
    """Everything reachable along dependency edges, without the start nodes (unless cyclic)."""
    seen: set[str] = set()
    todo = [d for s in start for d in deps[s]]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(deps[node])
    return seen


def edges_of(deps: DAG, keep: set[str]) -> set[tuple[str, str]]:
    return {(d, n) for n, ds in deps.items() for d in ds if n in keep and d in keep}


def respects_edges(order: list[str], deps: DAG) -> bool:
    position = {n: i for i, n in enumerate(order)}
    return all(position[d] < position[n] for n in order for d in deps[n] if d in position)


def parse_dot(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    nodes = {json.loads(m) for m in re.findall(r'^  ("(?:[^"\\]|\\.)*");$', text, re.M)}
    edges = {
        (json.loads(a), json.loads(b))
        for a, b in re.findall(r'^  ("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*");$', text, re.M)
    }
    return nodes, edges


def parse_mermaid(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    ids = dict(re.findall(r'^  (t\d+)\["([^"]*)"\]$', text, re.M))
    edges = {(ids[a], ids[b]) for a, b in re.findall(r"^  (t\d+) --> (t\d+)$", text, re.M)}
    return set(ids.values()), edges


def parse_json(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    doc = json.loads(text)
    nodes = {n["name"] for n in doc["nodes"]}
    edges = {(a, b) for a, b in doc["edges"]}
    assert edges == {(d, n["name"]) for n in doc["nodes"] for d in n["deps"]}
    return nodes, edges


# -- properties on random DAGs -----------------------------------------------------------


@settings(deadline=None)
@given(dags())
def test_topological_order_respects_every_edge(deps: DAG) -> None:
    """Each node comes after all of its dependencies, and every node comes once."""
    order = Graph(deps).topological_order()
    assert sorted(order) == sorted(deps)
    assert respects_edges(order, deps)


@settings(deadline=None)
@given(st.data(), dags())
def test_subgraph_is_the_upstream_closure_plus_the_targets(data: st.DataObject, deps: DAG) -> None:
    """subgraph(targets) == targets + everything they need, in a valid order."""
    if not deps:
        return
    targets = data.draw(st.lists(st.sampled_from(list(deps)), min_size=1, max_size=3))
    graph = Graph(deps)
    sub = graph.subgraph(targets)
    assert set(sub) == reference_upstream(deps, targets) | set(targets)
    assert len(sub) == len(set(sub))
    assert respects_edges(sub, deps)


@settings(deadline=None)
@given(st.data(), dags())
def test_upstream_and_downstream_mirror_each_other(data: st.DataObject, deps: DAG) -> None:
    """b is upstream of a exactly when a is downstream of b."""
    if not deps:
        return
    node = data.draw(st.sampled_from(list(deps)))
    graph = Graph(deps)
    assert graph.upstream([node]) == reference_upstream(deps, [node])
    assert graph.downstream([node]) == {n for n in deps if node in reference_upstream(deps, [n])}


@settings(max_examples=60, deadline=None)
@given(st.data(), dags())
@pytest.mark.parametrize("render", [parse_dot, parse_mermaid, parse_json])
def test_renderings_show_exactly_the_subgraph(render, data: st.DataObject, deps: DAG) -> None:  # type: ignore[no-untyped-def]
    """dot, mermaid and json list every node and edge of the subgraph and nothing else."""
    graph = Graph(deps)
    targets = data.draw(st.lists(st.sampled_from(list(deps)), max_size=2)) if deps else []
    keep = set(graph.subgraph(targets)) if targets else set(deps)
    nodes = graph.subgraph(targets) if targets else None
    text = {
        parse_dot: graph.to_dot,
        parse_mermaid: graph.to_mermaid,
        parse_json: graph.to_json,
    }[render](nodes)
    assert render(text) == (keep, edges_of(deps, keep))


@settings(max_examples=40, deadline=None)
@given(dags())
def test_renderings_of_a_downstream_view_stay_inside_it(deps: DAG) -> None:
    """A node set that is not closed upstream renders no edge to a node it lacks."""
    if not deps:
        return
    graph = Graph(deps)
    first = next(iter(deps))
    keep = graph.downstream([first]) | {first}
    for render, method in (
        (parse_dot, graph.to_dot),
        (parse_mermaid, graph.to_mermaid),
        (parse_json, graph.to_json),
    ):
        assert render(method(keep)) == (keep, edges_of(deps, keep))


@settings(deadline=None)
@given(dags())
def test_orders_and_renderings_are_deterministic(deps: DAG) -> None:
    """Two graphs built from the same definitions give identical output."""
    a, b = Graph(deps), Graph(dict(deps))
    assert a.topological_order() == b.topological_order()
    assert (a.to_dot(), a.to_mermaid(), a.to_json()) == (b.to_dot(), b.to_mermaid(), b.to_json())


# -- examples ----------------------------------------------------------------------------


def test_ties_follow_definition_order() -> None:
    """Independent nodes keep the order they were added in."""
    assert Graph({"z": (), "a": (), "m": ()}).topological_order() == ["z", "a", "m"]
    assert Graph({"b": ("a",), "a": (), "c": ()}).topological_order() == ["a", "c", "b"]


def test_order_does_not_depend_on_the_hash_seed() -> None:
    """The same graph orders and renders the same in processes with other hash seeds."""
    code = (
        "from taskrun.graph import Graph\n"
        "g = Graph({'x': (), 'b': ('x',), 'a': ('x',), 'q': (), 'r': ('a', 'b', 'q')})\n"
        "print(g.topological_order(), g.to_json())\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_sinks_are_the_nodes_nothing_depends_on() -> None:
    """sinks() gives the default targets, in definition order."""
    assert Graph({"a": (), "b": ("a",), "c": ("a",), "d": ()}).sinks() == ["b", "c", "d"]


def test_unknown_dependency_is_refused() -> None:
    """A graph cannot name a node it does not contain."""
    with pytest.raises(ValueError, match="'a' depends on unknown node 'ghost'"):
        Graph({"a": ("ghost",)})


def test_cycle_is_reported_with_its_nodes() -> None:
    """A cyclic graph (impossible through @task) is refused when ordered."""
    with pytest.raises(ValueError, match="cycle through a, b"):
        Graph({"a": ("b",), "b": ("a",), "c": ()}).topological_order()


def test_json_rendering_shape() -> None:
    """The json document lists nodes with deps, and edges as [dependency, dependent]."""
    doc = json.loads(Graph({"a": (), "b": ("a",)}).to_json())
    assert doc == {
        "nodes": [{"name": "a", "deps": []}, {"name": "b", "deps": ["a"]}],
        "edges": [["a", "b"]],
    }
