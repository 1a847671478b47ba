"""Workload generators: equivalent task files for taskrun, doit and Snakemake.

Every graph is a list of nodes ``t0 .. t{n-1}`` in topological order, each with the
names of its parents. Three shapes (issue 8):

* ``independent`` — no edges;
* ``chain``       — ``t{i}`` depends on ``t{i-1}``;
* ``layered``     — 50 layers of ``n // 50`` nodes; node ``j`` of a layer depends on
  nodes ``j`` and ``(j + 1) % width`` of the layer above (two distinct parents).

Each node is a no-op task with one integer option ``x`` (default 1) that returns a small
value. The generated files are flat text (one top-level definition per task), so no
generator recurses and a 5000-long chain needs no recursion-limit tricks here.

What each tool's file does, so that the comparison is fair:

* **taskrun** ``tasks.py``: ``@task(deps=[parents...])``; the parents' products arrive
  as parameters; the task returns ``x``. A changed option is set with ``-o tK.x=V``.
* **doit** ``dodo.py``: one ``task_tK`` per node with a python-action returning
  ``{"v": x}`` (doit stores returned dicts in its dep db, as taskrun stores products),
  ``task_dep`` for the edges, and ``uptodate=[config_changed({"x": x})]`` so an
  unchanged task is skipped. doit's tasks do *not* receive upstream values (that would
  need ``getargs``, which costs doit more): the comparison leans in doit's favour. A
  changed option comes from the environment (``BENCH_OPTIONS="tK=V"``), read once.
* **Snakemake** ``Snakefile`` (n = 100 only): one rule per node writing a tiny
  touch-file ``out/tK.done`` (Snakemake tracks files, not values), ``input:`` the
  parents' files, ``params: x=config.get("tK", 1)`` and a ``run:`` block (Python, in
  the Snakemake process: no shell is spawned). ``rule all`` asks for the sinks. Snakemake's
  default rerun triggers include ``params``, so a changed ``--config tK=V`` reruns that
  rule only.

**Idiomatic forms** (issue 16), used by the ``gen/layered-<n>`` workloads: the same
layered graph written the way each tool's users write large graphs, without one top-level
definition per node. Both files compute the graph with the same few lines of Python
(:data:`LAYERED_CODE`), so both pay the same for it:

* **doit** (:func:`gen_dodo_py`): ONE ``task_t`` generator yielding a subtask per node
  (``name``, the python-action, ``task_dep`` on the parents' subtasks ``t:tK``,
  ``uptodate=[config_changed({"x": x})]``). Everything else as above.
* **taskrun** (:func:`factory_tasks_py`): a factory function called in a loop registers
  each node with ``@task(name=..., deps={"a": p, "b": q})``, so the 5000 tasks share two
  code objects (a root and a two-parent node). The parents' products still arrive.

**Skewed durations** (issue 16, :func:`skewed_tasks_py`): one chain of slow tasks beside
many quick independent ones defined before it, every task a ``time.sleep`` (so the shared
machine's CPU load does not blur the order effect). Run at ``-j 2`` with the thread
executor; the durations are recorded by a first run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAYERED_CODE",
    "LAYERS",
    "SHAPES",
    "Graph",
    "cpu_tasks_py",
    "dodo_py",
    "factory_tasks_py",
    "gen_dodo_py",
    "make_graph",
    "make_tree",
    "skewed_tasks_py",
    "snakefile",
    "spin",
    "spin_py",
    "startup_dodo_py",
    "startup_tasks_py",
    "tasks_py",
    "write",
]

SHAPES = ("independent", "chain", "layered")
LAYERS = 50


@dataclass(frozen=True, slots=True)
class Graph:
    """A task graph: node names in topological order and each node's parents."""

    shape: str
    names: tuple[str, ...]
    parents: tuple[tuple[str, ...], ...]

    @property
    def sinks(self) -> tuple[str, ...]:
        """Nodes nothing depends on, in order."""
        used = {p for ps in self.parents for p in ps}
        return tuple(n for n in self.names if n not in used)

    @property
    def leaf(self) -> str:
        """The node whose option the "changed" phase edits: the last sink.

        A sink (nothing depends on it), so exactly one task reruns in every tool: taskrun's
        early cutoff and doit's task_dep semantics would otherwise differ downstream.
        """
        return self.sinks[-1]


def make_graph(shape: str, n: int) -> Graph:
    """The graph of SHAPE with N nodes (layered: N must be a multiple of 50, N >= 100)."""
    names = tuple(f"t{i}" for i in range(n))
    if shape == "independent":
        parents: list[tuple[str, ...]] = [() for _ in range(n)]
    elif shape == "chain":
        parents = [()] + [(names[i - 1],) for i in range(1, n)]
    elif shape == "layered":
        if n % LAYERS or n // LAYERS < 2:
            raise ValueError(f"layered needs a multiple of {LAYERS} with width >= 2, got {n}")
        width = n // LAYERS
        parents = [() for _ in range(width)]
        for layer in range(1, LAYERS):
            above = (layer - 1) * width
            for j in range(width):
                parents.append((names[above + j], names[above + (j + 1) % width]))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return Graph(shape, names, tuple(parents))


def tasks_py(graph: Graph) -> str:
    """A taskrun task file for GRAPH."""
    out = ["# generated by bench/workloads.py", "from taskrun import task", ""]
    for name, ps in zip(graph.names, graph.parents, strict=True):
        deco = f"@task(deps=[{', '.join(ps)}])" if ps else "@task"
        params = "".join(f"{p}: int, " for p in ps)
        out += ["", deco, f"def {name}({params}x: int = 1) -> int:", "    return x", ""]
    return "\n".join(out)


def dodo_py(graph: Graph) -> str:
    """A doit dodo.py for GRAPH (python-actions, task_dep, config_changed)."""
    out = [
        "# generated by bench/workloads.py",
        "import os",
        "from doit.tools import config_changed",
        "",
        "_OPT = dict(kv.split('=') for kv in os.environ.get('BENCH_OPTIONS', '').split(',') if kv)",
        "",
        "",
        "def _noop(x):",
        "    return {'v': x}",
        "",
    ]
    for name, ps in zip(graph.names, graph.parents, strict=True):
        dep = f", 'task_dep': {list(ps)!r}" if ps else ""
        out += [
            "",
            f"def task_{name}():",
            f"    x = int(_OPT.get({name!r}, 1))",
            f"    return {{'actions': [(_noop, [x])]{dep},"
            " 'uptodate': [config_changed({'x': x})]}",
            "",
        ]
    return "\n".join(out)


LAYERED_CODE = '''
N = {n}
LAYERS = {layers}
WIDTH = N // LAYERS


def parents(i):
    """Node i's parents: nodes j and (j + 1) % WIDTH of the layer above (none in layer 0)."""
    layer, j = divmod(i, WIDTH)
    if layer == 0:
        return ()
    above = (layer - 1) * WIDTH
    return (above + j, above + (j + 1) % WIDTH)
'''


def _layered_code(graph: Graph) -> str:
    if graph.shape != "layered":
        raise ValueError(f"the idiomatic forms are for the layered shape, not {graph.shape}")
    code = LAYERED_CODE.format(n=len(graph.names), layers=LAYERS)
    # The generated code must build exactly make_graph's graph.
    space: dict[str, object] = {}
    exec(code, space)  # noqa: S102 - our own generated text
    parents = space["parents"]
    for i, ps in enumerate(graph.parents):
        if tuple(f"t{p}" for p in parents(i)) != ps:  # type: ignore[operator]
            raise AssertionError(f"LAYERED_CODE disagrees with make_graph at t{i}")
    return code


def factory_tasks_py(graph: Graph) -> str:
    """A taskrun file for the layered GRAPH whose tasks are made by a factory in a loop."""
    return "\n".join(
        [
            "# generated by bench/workloads.py: tasks made by a factory (shared code objects)",
            "from taskrun import task",
            _layered_code(graph),
            "",
            "def make(i, ps):",
            "    if not ps:",
            '        @task(name=f"t{i}")',
            "        def node(x: int = 1) -> int:",
            "            return x",
            "    else:",
            '        @task(name=f"t{i}", deps={"a": ps[0], "b": ps[1]})',
            "        def node(a: int, b: int, x: int = 1) -> int:",
            "            return x",
            "    return node",
            "",
            "",
            "NODES = []",
            "for i in range(N):",
            "    NODES.append(make(i, [NODES[p] for p in parents(i)]))",
            "",
        ]
    )


def gen_dodo_py(graph: Graph) -> str:
    """A doit dodo.py for the layered GRAPH: one ``task_t`` generator yielding every node."""
    return "\n".join(
        [
            "# generated by bench/workloads.py: doit's generator form (one task_t, N subtasks)",
            "import os",
            "from doit.tools import config_changed",
            "",
            "_OPT = dict(kv.split('=') for kv in"
            " os.environ.get('BENCH_OPTIONS', '').split(',') if kv)",
            _layered_code(graph),
            "",
            "def _noop(x):",
            "    return {'v': x}",
            "",
            "",
            "def task_t():",
            "    for i in range(N):",
            "        name = f't{i}'",
            "        x = int(_OPT.get(name, 1))",
            "        yield {",
            "            'name': name,",
            "            'actions': [(_noop, [x])],",
            "            'task_dep': [f't:t{p}' for p in parents(i)],",
            "            'uptodate': [config_changed({'x': x})],",
            "        }",
            "",
        ]
    )


def skewed_tasks_py(
    *,
    short_tasks: int = 24,
    short_s: float = 0.1,
    long_tasks: int = 4,
    long_s: float = 0.6,
) -> str:
    """SHORT_TASKS independent quick tasks, then one chain of LONG_TASKS slow ones, and a join.

    The quick tasks are defined first, so first-in-first-out order starts them all before
    the chain's head; with equal totals on both sides (24 x 0.1 s, 4 x 0.6 s) the best
    order at -j 2 finishes in about the chain's time and FIFO in about 1.5 times that.
    """
    out = [
        "# generated by bench/workloads.py: skewed durations",
        "import time",
        "",
        "from taskrun import task",
        "",
    ]
    ends = []
    for k in range(short_tasks):
        out += [
            "",
            "@task",
            f"def short{k}(s: float = {short_s}) -> int:",
            "    time.sleep(s)",
            "    return 1",
            "",
        ]
        ends.append(f"short{k}")
    prev = None
    for k in range(long_tasks):
        name = f"long{k}"
        deps = f"(deps=[{prev}])" if prev else ""
        params = f"{prev}: int, " if prev else ""
        out += [
            "",
            f"@task{deps}",
            f"def {name}({params}s: float = {long_s}) -> int:",
            "    time.sleep(s)",
            "    return 1",
            "",
        ]
        prev = name
    ends.append(prev)
    params = "".join(f"{e}: int, " for e in ends)
    out += [
        "",
        f"@task(deps=[{', '.join(ends)}])",
        f"def join({params}) -> int:",
        "    return 1",
        "",
    ]
    return "\n".join(out)


def snakefile(graph: Graph) -> str:
    """A Snakefile for GRAPH: one rule per node, touch-file outputs, params from config."""
    sinks = ", ".join(f'"out/{s}.done"' for s in graph.sinks)
    out = ["# generated by bench/workloads.py", "", "rule all:", f"    input: [{sinks}]", ""]
    for name, ps in zip(graph.names, graph.parents, strict=True):
        out.append(f"rule {name}:")
        if ps:
            out.append(f"    input: [{', '.join(f'{chr(34)}out/{p}.done{chr(34)}' for p in ps)}]")
        out += [
            f'    output: "out/{name}.done"',
            f'    params: x=config.get("{name}", 1)',
            "    run:",
            "        open(output[0], 'w').close()",
            "",
        ]
    return "\n".join(out)


def startup_tasks_py(n: int = 10) -> str:
    """A taskrun file of N small tasks in a chain, for `taskrun list`."""
    return tasks_py(make_graph("chain", n))


def startup_dodo_py(n: int = 10) -> str:
    """The doit equivalent of :func:`startup_tasks_py`, for `doit list`."""
    return dodo_py(make_graph("chain", n))


def cpu_tasks_py(loops: int) -> str:
    """Two independent CPU-bound tasks (pure-Python loop of LOOPS steps) and a join."""
    return f"""# generated by bench/workloads.py
from taskrun import task


def _spin(n: int, seed: int) -> int:
    acc = seed
    for i in range(n):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


@task
def burn_a(loops: int = {loops}) -> int:
    return _spin(loops, 1)


@task
def burn_b(loops: int = {loops}) -> int:
    return _spin(loops, 2)
"""


def spin_py(loops: int) -> str:
    """A script running the loop of :func:`cpu_tasks_py` argv[1] times (no taskrun)."""
    return f"""# generated by bench/workloads.py
import sys


def _spin(n, seed):
    acc = seed
    for i in range(n):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


for k in range(int(sys.argv[1])):
    _spin({loops}, k + 1)
"""


def spin(n: int, seed: int) -> int:
    """The loop of :func:`cpu_tasks_py`, for calibrating LOOPS in this process."""
    acc = seed
    for i in range(n):
        acc = (acc * 1103515245 + i) & 0xFFFFFFFF
    return acc


def make_tree(root: Path, files: int, *, per_dir: int = 100, size: int = 1024) -> None:
    """Write FILES files of SIZE pseudo-random bytes under ROOT, PER_DIR per directory."""
    seed = os.urandom(size * 4)
    for i in range(files):
        d = root / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        start = (i * 7) % (len(seed) - size)
        (d / f"f{i:05d}.dat").write_bytes(i.to_bytes(4, "big") + seed[start : start + size - 4])


def write(directory: Path, files: Sequence[tuple[str, str]]) -> None:
    """Write (name, text) pairs into DIRECTORY, creating it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        (directory / name).write_text(text)
