"""Which waiting task starts first: the one with the longest remaining path (critical path).

When more misses are ready than the executor has free slots, the scheduler starts the one
whose longest path to the end of the plan is longest, each task weighted by how long it
took when it last ran. Starting the long chain first lets the short tasks fill the other
slots beside it, instead of the chain starting last and running alone (a DAG's makespan
is at least its critical path; list scheduling by the longest remaining path is the
classic way to get near it).

- **Weights** come from the newest *completed* run record under ``.taskrun/runs/``
  (``runs.recorded_durations``): a ``ran`` event's duration, or a ``cached`` event's
  ``saved`` (what the task took when its entry was stored). A task with no record weighs
  the median of the known weights, or 1 when nothing is known (then the path length
  counts tasks). Why run records and not cache entries: one file read for the whole
  plan, whereas an entry's compute time sits in that entry's metadata, behind one lookup
  per task, and the fingerprints of tasks not ready yet are not even known.
- **Cost**: :func:`remaining_paths` is one pass over the plan in reverse topological
  order, O(V + E). The scheduler computes it lazily, the first time it must choose
  between two or more waiting tasks; a warm run, or one with a single miss at a time,
  never reads a record.
- **Item calls** of a mapped task (created during the run) weigh their own recorded
  duration (``compile[src/a.c]``) and continue along the mapped task's path.
- **Ties** (equal remaining paths) keep the order in which tasks became ready, so the
  order stays deterministic; a task back from waiting for another process's lock goes
  first, as before.

``TASKRUN_SCHEDULE=fifo`` turns the choice off (first ready, first started): a
benchmarking aid for ``bench/run.py`` (``sched/skewed-j2``), read here and nowhere else.
"""

from __future__ import annotations

import heapq
import itertools
import os
import statistics
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["ReadyQueue", "fifo_requested", "remaining_paths"]

N = TypeVar("N")


def fifo_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``TASKRUN_SCHEDULE=fifo`` asks for first-in-first-out order (benchmarks)."""
    env = os.environ if environ is None else environ
    return env.get("TASKRUN_SCHEDULE", "").strip().lower() == "fifo"


def remaining_paths(
    order: Sequence[str],
    dependents: Callable[[str], Sequence[str]],
    weights: Mapping[str, float],
) -> tuple[dict[str, float], float]:
    """Each task's longest weighted path to the end of the plan, and the default weight.

    ``order`` is topological (dependencies first). The path of a task counts its own
    weight and those of the dependents along it. Tasks without a weight get the median
    of the known weights, or 1. One reverse pass: O(V + E).
    """
    known = [weights[n] for n in order if n in weights]
    # Mapped tasks' item calls ("compile[src/a.c]") are not in the plan; the mapped task
    # weighs as its slowest recorded item (items run side by side, more or less).
    items: dict[str, float] = {}
    for name, seconds in weights.items():
        if name.endswith("]") and "[" in name:
            mapped = name[: name.index("[")]
            items[mapped] = max(items.get(mapped, 0.0), seconds)
    default = statistics.median(known) if known else 1.0
    path: dict[str, float] = {}
    for name in reversed(order):
        own = weights.get(name, items.get(name, default))
        path[name] = own + max((path[d] for d in dependents(name) if d in path), default=0.0)
    return path, default


class ReadyQueue(Generic[N]):
    """Misses waiting for a free slot, handed out longest remaining path first.

    Until a choice has to be made (two or more waiting when one is taken) it is a plain
    FIFO and ``priority`` is never called; then every waiting task gets its priority and
    the queue becomes a heap ordered by (-priority, arrival). ``appendleft`` puts a task
    ahead of all of them (last in, first out among those), as a deque's would.
    """

    def __init__(self, priority: Callable[[N], float]) -> None:
        self._priority = priority
        self._fifo: deque[N] = deque()
        self._front: deque[N] = deque()
        self._heap: list[tuple[float, int, N]] | None = None
        self._seq = itertools.count()

    def append(self, node: N) -> None:
        if self._heap is None:
            self._fifo.append(node)
        else:
            heapq.heappush(self._heap, (-self._priority(node), next(self._seq), node))

    def appendleft(self, node: N) -> None:
        self._front.appendleft(node)

    def peek(self) -> N:
        """The task that would start next (IndexError when empty)."""
        if self._front:
            return self._front[0]
        self._order()
        if self._heap is not None:
            return self._heap[0][2]
        return self._fifo[0]

    def popleft(self) -> N:
        if self._front:
            return self._front.popleft()
        self._order()
        if self._heap is not None:
            return heapq.heappop(self._heap)[2]
        return self._fifo.popleft()

    def keep(self, wanted: Callable[[N], bool]) -> None:
        """Drop every task for which ``wanted`` is false (order kept)."""
        self._front = deque(n for n in self._front if wanted(n))
        self._fifo = deque(n for n in self._fifo if wanted(n))
        if self._heap is not None:
            self._heap = [e for e in self._heap if wanted(e[2])]
            heapq.heapify(self._heap)

    def _order(self) -> None:
        if self._heap is None and len(self._fifo) > 1:
            self._heap = [(-self._priority(n), next(self._seq), n) for n in self._fifo]
            heapq.heapify(self._heap)
            self._fifo.clear()

    def __len__(self) -> int:
        return len(self._front) + len(self._fifo) + len(self._heap or ())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[N]:
        """Every waiting task (in no particular order)."""
        yield from self._front
        yield from self._fifo
        yield from (e[2] for e in self._heap or ())
