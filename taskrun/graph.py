"""The task graph: a DAG of task names, queried and rendered.

Edges point from a task to the tasks it depends on. Orders are deterministic: ties are
broken by the order the tasks were added (definition order), never by hashing.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Graph"]


class Graph:
    """An immutable DAG over task names."""

    __slots__ = ("_deps", "_dependents", "_index", "mapped")

    def __init__(
        self, deps: Mapping[str, Sequence[str]], mapped: Mapping[str, str] | None = None
    ) -> None:
        #: Mapped tasks (one call per item at run time): task -> the upstream it maps over.
        self.mapped: dict[str, str] = dict(mapped or {})
        self._deps: dict[str, tuple[str, ...]] = {n: tuple(d) for n, d in deps.items()}
        self._index = {n: i for i, n in enumerate(self._deps)}
        self._dependents: dict[str, list[str]] = {n: [] for n in self._deps}
        for node, ds in self._deps.items():
            for d in ds:
                if d not in self._deps:
                    raise ValueError(f"'{node}' depends on unknown node '{d}'")
                self._dependents[d].append(node)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._deps)

    def deps(self, node: str) -> tuple[str, ...]:
        return self._deps[node]

    def dependents(self, node: str) -> tuple[str, ...]:
        return tuple(self._dependents[node])

    def edges(self) -> list[tuple[str, str]]:
        """``(dependency, dependent)`` pairs: the direction data flows."""
        return [(d, n) for n, ds in self._deps.items() for d in ds]

    def topological_order(self, nodes: Iterable[str] | None = None) -> list[str]:
        """Every node (or those given) after all of its dependencies (Kahn's algorithm)."""
        wanted = set(self._deps) if nodes is None else set(nodes)
        indegree = {n: sum(1 for d in self._deps[n] if d in wanted) for n in wanted}
        ready = sorted((n for n, k in indegree.items() if k == 0), key=self._index.__getitem__)
        queue = deque(ready)
        order: list[str] = []
        while queue:
            node = queue.popleft()
            order.append(node)
            released = []
            for dep in self._dependents[node]:
                if dep in indegree:
                    indegree[dep] -= 1
                    if indegree[dep] == 0:
                        released.append(dep)
            queue.extend(sorted(released, key=self._index.__getitem__))
        if len(order) != len(wanted):
            stuck = sorted(n for n in wanted if n not in set(order))
            raise ValueError(f"the graph has a cycle through {', '.join(stuck)}")
        return order

    def _closure(self, start: Iterable[str], step: Mapping[str, Sequence[str]]) -> set[str]:
        seen: set[str] = set()
        stack = list(start)
        while stack:
            node = stack.pop()
            for nxt in step[node]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    def upstream(self, nodes: Iterable[str]) -> set[str]:
        """Everything the nodes depend on, transitively (not the nodes themselves)."""
        return self._closure(nodes, self._deps)

    def downstream(self, nodes: Iterable[str]) -> set[str]:
        """Everything that depends on the nodes, transitively (not the nodes themselves)."""
        return self._closure(nodes, self._dependents)

    def subgraph(self, targets: Iterable[str]) -> list[str]:
        """The targets and everything they need, in topological order."""
        targets = list(targets)
        return self.topological_order(self.upstream(targets) | set(targets))

    def sinks(self) -> list[str]:
        """Nodes nothing depends on, in definition order."""
        return [n for n in self._deps if not self._dependents[n]]

    # -- renderings ------------------------------------------------------------------
    def to_dot(self, nodes: Iterable[str] | None = None, *, name: str = "taskrun") -> str:
        keep = self.topological_order(nodes)
        kept = set(keep)
        lines = [f"digraph {json.dumps(name)} {{", "  rankdir=LR;", "  node [shape=box];"]
        lines += [
            f"  {json.dumps(n)} [label={json.dumps(n + ' [mapped]')}, peripheries=2];"
            if n in self.mapped
            else f"  {json.dumps(n)};"
            for n in keep
        ]
        lines += [
            f"  {json.dumps(d)} -> {json.dumps(n)}"
            + (' [style=bold, label="each"]' if self.mapped.get(n) == d else "")
            + ";"
            for d, n in self.edges()
            if n in kept and d in kept
        ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self, nodes: Iterable[str] | None = None) -> str:
        keep = self.topological_order(nodes)
        kept = set(keep)
        ids = {n: f"t{i}" for i, n in enumerate(keep)}
        lines = ["graph LR"]
        lines += [
            f'  {ids[n]}[["{n} (mapped)"]]' if n in self.mapped else f'  {ids[n]}["{n}"]'
            for n in keep
        ]
        lines += [
            f"  {ids[d]} {'==>|each|' if self.mapped.get(n) == d else '-->'} {ids[n]}"
            for d, n in self.edges()
            if n in kept and d in kept
        ]
        return "\n".join(lines) + "\n"

    def to_json(self, nodes: Iterable[str] | None = None) -> str:
        keep = self.topological_order(nodes)
        kept = set(keep)
        doc = {
            # Only edges inside the rendering: a node set that is not closed upstream
            # (a downstream view) must not name nodes the document does not contain.
            "nodes": [
                {"name": n, "deps": [d for d in self._deps[n] if d in kept]}
                | ({"mapped": self.mapped[n]} if n in self.mapped else {})
                for n in keep
            ],
            "edges": [[d, n] for d, n in self.edges() if n in kept and d in kept],
        }
        return json.dumps(doc, indent=2) + "\n"
