"""The scheduler: decide hit or run for each task, run the misses in parallel, emit events.

Threading model: every decision happens in the one thread that calls :meth:`Scheduler.run`
(the driver). It computes fingerprints, reads and writes the cache, restores files, and
builds each call's arguments; executors only run user functions and resolve futures. So
nothing here needs a lock, and the cache is only ever touched by the driver.

A task becomes *ready* when each of its dependencies is done (cached or ran). Only then is
its fingerprint computed, because it includes the upstream *product digests* (early
cutoff: an upstream that reruns and returns an equal value leaves its dependents cached).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import heapq
import itertools
import os
import pickle
import random
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, TypeVar, overload

from taskrun import events as ev
from taskrun.cache_values import EntryMeta, OutputRecord
from taskrun.errors import Interrupted, ProductTypeError, TaskrunError, TypeCheckError
from taskrun.files import capture_outputs, paths_in
from taskrun.fingerprint import describe, product_digest
from taskrun.invocation import Invocation
from taskrun.outcome import OK_STATES, Outcome, SkipMarker
from taskrun.registry import TaskSpec
from taskrun.rules import RetryPolicy, decide

__all__ = ["ExplainItem", "RunResult", "Scheduler", "TaskResult"]

EventSink = Callable[[ev.Event], None]
_BATCH = 256  # perf: entries written per transaction at most (see _flush)
_BATCH_BYTES = 64 * 2**20  # ... and bytes of products and output files held for one
# Products of these exact types hash and pickle without running user code (see _record).
_PLAIN = frozenset({int, bool, float, str, bytes, type(None)})
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskResult:
    """How one task ended in a run."""

    name: str
    state: str  # "ran" | "cached" | "failed" | "skipped" | "cancelled"
    duration: float = 0.0
    reasons: tuple[str, ...] = ()
    fingerprint: str = ""
    error: str = ""  # the failure, or why it was skipped or cancelled
    attempts: int = 0  # calls made (retries included); 0 when it never ran
    fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)


class _LazyProducts(Mapping[str, Any]):
    """The targets' products; a cached one is unpickled only when asked for."""

    def __init__(self, loaders: Mapping[str, Callable[[], Any]]) -> None:
        self._loaders = dict(loaders)
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._loaders[key]()
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :func:`taskrun.run` returns: each task's state, timings and the products."""

    tasks: Mapping[str, TaskResult]
    products: Mapping[str, Any]
    summary: ev.RunFinished

    #: How to get the product of every task of the run that has one (see :meth:`product`).
    loaders: Mapping[str, Callable[[], Any]] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """No task failed or was cancelled (skips are decisions, not failures)."""
        return self.summary.ok

    @overload
    def product(self, task: Callable[..., T]) -> T: ...
    @overload
    def product(self, task: str) -> Any: ...
    def product(self, task: str | Callable[..., Any]) -> Any:
        """The product of any task of the run (by name or function), loaded when asked for.

        A target's product is kept in memory; another task's comes from its cache entry,
        so it needs one: a task with ``cache=False`` or a run with ``cache_mode`` other
        than ``"rw"`` only keeps its targets' products.
        """
        from taskrun.errors import UsageError, did_you_mean

        name = task if isinstance(task, str) else getattr(task, "__name__", repr(task))
        if not isinstance(task, str):
            found = [n for n, r in self.tasks.items() if r.fn is task]
            name = found[0] if found else name
        if name in self.products:
            return self.products[name]
        if name not in self.tasks:
            raise UsageError(
                f"task '{name}' is not part of this run{did_you_mean(name, self.tasks)};"
                f" its tasks are: {', '.join(self.tasks)}"
            )
        state = self.tasks[name].state
        if state not in ("ran", "cached"):
            raise UsageError(f"task '{name}' has no product: it {state} in this run")
        loader = self.loaders.get(name)
        if loader is None:
            raise UsageError(
                f"the product of task '{name}' was not kept (it is not stored in the"
                " cache: cache=False or a cache mode other than rw); pass it as a target"
            )
        return loader()

    def state(self, task: str) -> str:
        return self.tasks[task].state

    def names(self, state: str) -> list[str]:
        return [n for n, r in self.tasks.items() if r.state == state]


@dataclass(frozen=True, slots=True)
class ExplainItem:
    """`taskrun explain` for one task: would it hit, what changed since the entry it last used."""

    task: str
    action: str  # "cached" | "run" | "skip"
    fingerprint: str
    reasons: tuple[str, ...]
    changes: tuple[Any, ...]  # fingerprint.Change objects (kind, name, old, new)
    latest: str | None  # fingerprint of the entry the task last used (hit or stored)


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class _Node:
    """Mutable bookkeeping for one task during one run (driver thread only)."""

    __slots__ = (
        "spec",
        "name",
        "deps",
        "dependents",
        "state",
        "fp",
        "inputs",
        "described",
        "digest",
        "value",
        "has_value",
        "entry",
        "consumers",
        "lock",
        "attempt",
        "reasons",
        "duration",
        "error",
        "forced",
        "future",
        "wait",
        "target",
        "hint",
        "latest",
        "nocache",
        "calls",
        "item",
        "replace",
    )

    def __init__(self, spec: TaskSpec, target: bool) -> None:
        self.spec = spec
        self.name = spec.name
        self.deps: list[str] = [d.task for d in spec.deps]
        self.dependents: list[str] = []
        self.state = "pending"
        self.fp = ""
        self.inputs: Any = None
        self.described: dict[str, Any] | None = None  # perf: made for misses only
        self.digest = ""
        self.value: Any = None
        self.has_value = False
        self.entry: Any = None
        self.consumers = 0
        self.lock: Any = None
        self.attempt = 1
        self.reasons: tuple[str, ...] = ()
        self.duration = 0.0
        self.error = ""
        self.forced = False
        self.future: cf.Future[Any] | None = None
        self.wait: cf.Future[Any] | None = None  # the lock another process holds, once free
        self.target = target
        self.hint = ""
        self.latest: Any = None  # the task's newest cache entry, when a miss looked it up
        self.nocache = ""  # why its result must not be stored (a failure fed it), if so
        self.calls = 0  # attempts submitted to an executor
        self.item: Any = None  # mapping.ItemInfo for one item call of a mapped task
        self.replace = False  # its entry could not be restored: the rerun's result replaces it


@dataclass
class Scheduler:
    """Runs one :class:`Invocation` against a cache with an executor."""

    invocation: Invocation
    cache: Any  # taskrun.cache.Cache
    executor: Any = None  # taskrun.executors.Executor; None for plan/explain
    runtime: Mapping[str, str] = field(default_factory=dict)
    stat_cache: Any = None  # taskrun.files.StatCache
    remote: Any = None  # taskrun.remote.RemoteCache: the second level, or None
    source_memo: Any = None  # taskrun.codewalk.SourceMemo
    force: frozenset[str] = frozenset()
    force_all: bool = False
    keep_going: bool = False
    on_event: EventSink = lambda e: None
    # Executors for tasks that ask for another one than the run's (executor=); made on
    # first use by this factory, shut down by whoever made the factory.
    executor_for: Callable[[str], Any] | None = None
    interrupt_grace: float = 30.0  # seconds run_if="always" tasks get after Ctrl-C
    rng: random.Random = field(default_factory=random.Random)  # retry jitter
    _nodes: dict[str, _Node] = field(default_factory=dict, init=False)
    _code: dict[Any, Any] = field(default_factory=dict, init=False)
    _code_walks: dict[Any, Any] = field(default_factory=dict, init=False)  # see code_parts
    # Types whose products fell back to pickle digests: warned about once per run.
    _digest_warned: set[str] = field(default_factory=set, init=False)
    _ready: deque[_Node] = field(default_factory=deque, init=False)
    _waiting: dict[str, int] = field(default_factory=dict, init=False)  # deps not done yet
    # Misses without a slot, longest remaining path first (taskrun.priority).
    _queued: Any = field(default=None, init=False)  # priority.ReadyQueue[_Node]
    _paths: dict[str, float] | None = field(default=None, init=False)  # see _priority
    _weight: float = field(default=1.0, init=False)  # of a task with no recorded duration
    _weights: dict[str, float] = field(default_factory=dict, init=False)
    _announced: set[str] = field(default_factory=set, init=False)  # told queued, not started
    _parked: dict[cf.Future[Any], _Node] = field(default_factory=dict, init=False)
    _running: dict[cf.Future[Any], _Node] = field(default_factory=dict, init=False)
    _calls: dict[str, Any] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _unsaved: list[tuple[_Node, Any, bytes, dict[str, bytes]]] = field(
        default_factory=list, init=False
    )
    _unsaved_bytes: int = field(default=0, init=False)  # payloads and blobs in _unsaved
    _extra: dict[str, Any] = field(default_factory=dict, init=False)  # name -> executor
    _timers: list[tuple[float, int, _Node]] = field(default_factory=list, init=False)
    _seq: Any = field(default_factory=itertools.count, init=False)
    _halt: str = field(default="", init=False)  # why only rule tasks may still start
    _halt_rules: tuple[str, ...] = field(default=(), init=False)  # the rules that may
    _cancel_requested: str = field(default="", init=False)
    _wake: cf.Future[Any] = field(default_factory=cf.Future, init=False)
    _mapper: Any = field(default=None, init=False)  # mapping.Mapper: mapped/streaming tasks
    _own: tuple[str, ...] = field(default=(".taskrun",), init=False)  # never outputs

    def __post_init__(self) -> None:
        inv = self.invocation
        targets = set(inv.targets)
        for name in inv.order:
            self._nodes[name] = _Node(inv.spec(name), name in targets)
        for node in self._nodes.values():
            for dep in node.spec.deps:
                self._nodes[dep.task].dependents.append(node.name)
                if dep.passed:
                    self._nodes[dep.task].consumers += 1
            node.forced = self.force_all or node.name in self.force
        from taskrun.mapping import Mapper
        from taskrun.priority import ReadyQueue

        self._mapper = Mapper(self)
        self._queued = ReadyQueue(self._priority)
        self._check_places()

    def _check_places(self) -> None:
        """Outputs never cover the cache or .taskrun; inputs match something (or say so)."""
        from taskrun.files import own_places
        from taskrun.globs import check_inputs_match
        from taskrun.mapping import output_globs

        specs = {n: node.spec for n, node in self._nodes.items()}
        globs = {n: (output_globs(spec), spec.where) for n, spec in specs.items()}
        cache_dir = getattr(self.cache, "directory", None) if self.cache.mode != "off" else None
        self._own = own_places(self.root, cache_dir, check=globs)
        check_inputs_match(specs, self.root, outputs=globs)

    @property
    def root(self) -> Path:
        return self.invocation.root

    # -- fingerprints ------------------------------------------------------------------
    def _hash_path(self, path: PurePath) -> str:
        from taskrun.files import content_digest

        full = path if path.is_absolute() else self.root / path
        return content_digest(Path(full), stat_cache=self.stat_cache)

    def _code_of(self, spec: TaskSpec) -> tuple[str, Mapping[str, str]]:
        if spec.version is not None and not spec.override:
            return f"version:{spec.version}", {}
        key = spec.fn
        if key not in self._code:
            from taskrun.fingerprint import code_fingerprint

            code = code_fingerprint(
                spec.fn, root=self.root, memo=self.source_memo, shared=self._code_walks
            )
            digest = code.digest
            if spec.override:
                # An override never shares entries with the real task, even at equal code.
                digest = f"override:{spec.override}:{digest}"
            # perf: parts are read-only; tasks sharing a code object share one dict.
            self._code[key] = (digest, code.parts)
        result: tuple[str, Mapping[str, str]] = self._code[key]
        return result

    def _inputs_of(self, node: _Node, upstream: Mapping[str, str]) -> Any:
        from taskrun.fingerprint import FingerprintInputs

        spec = node.spec
        code, parts = self._code_of(spec)
        files: Mapping[str, str] = _NOTHING
        if spec.inputs:
            from taskrun.files import expand_globs, file_digest

            inside = [p for p in spec.inputs if not p.startswith(("/", "@"))]
            files = {}
            for rel in expand_globs(inside, self.root):
                files[rel.as_posix()] = file_digest(self.root / rel, stat_cache=self.stat_cache)
            for pattern in spec.inputs:
                if pattern not in inside:
                    files.update(self._external_inputs(spec, pattern))
        return FingerprintInputs(
            task=spec.name,
            code=code,
            code_parts=parts,
            # perf: read-only mappings are shared, not copied per task (memory at 20k tasks).
            options=self.invocation.options[spec.name],
            upstream=dict(upstream)
            if node.item is None
            else {**upstream, node.item.slot: node.item.digest},
            inputs=files,
            env={name: os.environ.get(name) for name in spec.env} if spec.env else _NOTHING,
            runtime=self.runtime,
            outputs=spec.outputs_for(self.invocation.options[spec.name]),
        )

    def _external_inputs(self, spec: TaskSpec, pattern: str) -> dict[str, str]:
        """Digests of the files an ``inputs=`` pattern outside the project names, by
        ``@NAME/path`` (the declared external root's name, not where it is mounted)."""
        from taskrun.files import expand_globs, external_base, external_key, file_digest

        key = external_key(pattern) if pattern.startswith("/") else pattern
        found = external_base(key) if key is not None else None
        if key is None or found is None:
            from taskrun.errors import UsageError

            raise UsageError(
                f"task '{spec.name}' ({spec.where}): inputs pattern '{pattern}' is outside"
                " the project and under no folder declared in pyproject.toml; declare it,"
                ' e.g. [tool.taskrun] external = { data = "/data/shared" }, and write'
                " '@data/...'"
            )
        base, rest = found
        name = key.partition("/")[0]
        return {
            f"{name}/{rel.as_posix()}": file_digest(Path(base) / rel, stat_cache=self.stat_cache)
            for rel in expand_globs([rest], Path(base))
        }

    def _fingerprint(self, node: _Node, upstream: Mapping[str, str]) -> None:
        from taskrun.fingerprint import task_fingerprint

        node.inputs = self._inputs_of(node, upstream)
        node.fp = task_fingerprint(node.inputs, hash_path=self._hash_path, root=self.root)
        node.described = None

    def _described(self, node: _Node) -> dict[str, Any]:
        """The fingerprint's components as data; perf: only misses and explain need it."""
        if node.described is None:
            node.described = describe(node.inputs, hash_path=self._hash_path, root=self.root)
        return node.described

    def _why(self, node: _Node) -> tuple[str, ...]:
        """Why a task misses: what changed since the entry it last used (hit or stored)."""
        if node.forced:
            return ("forced",)
        if node.hint:
            return (node.hint,)
        if node.nocache:
            return (node.nocache,)
        if not node.spec.cache:
            return ("not cached (cache=False)",)
        if self.cache.mode == "off":
            return ("cache off",)
        latest = node.latest = self.cache.latest(node.name)
        if latest is None:
            return ("no entry",)
        from taskrun.fingerprint import diff

        changes = diff(latest.components, self._described(node))
        return tuple(str(c) for c in changes) or ("no entry (the matching entry is gone)",)

    # -- dry runs and explain -------------------------------------------------------------
    def plan(self) -> list[ev.Planned]:
        """For every task: would it hit, or run and why. Runs nothing, writes nothing."""
        return [item for item, _ in self._walk()]

    def explain(self) -> list[ExplainItem]:
        """Like :meth:`plan`, with each fingerprint component diffed against the entry last used."""
        from taskrun.fingerprint import diff

        out = []
        for item, node in self._walk(unknown="(will run)"):
            if item.action == "skip":
                out.append(ExplainItem(node.name, "skip", "", item.reasons, (), None))
                continue
            latest = self.cache.latest(node.name) if self.cache.mode != "off" else None
            if node.inputs is None:  # a mapped task's summary: its items say what changed
                latest = None
            changes = tuple(diff(latest.components, self._described(node))) if latest else ()
            out.append(
                ExplainItem(
                    task=node.name,
                    action=item.action,
                    fingerprint=item.fingerprint,
                    reasons=item.reasons,
                    changes=changes,
                    latest=latest.fingerprint if latest else None,
                )
            )
        return out

    def _walk(self, unknown: str | None = None) -> Iterator[tuple[ev.Planned, _Node]]:
        # A dry run assumes every task that runs succeeds; skips (when=, and what follows
        # from them by the trigger rules) are known before anything runs.
        assumed: dict[str, str] = {}
        for node in list(self._nodes.values()):
            deps = [self._nodes[d] for d in node.deps]
            skip = self.invocation.skipped.get(node.name)
            if skip is None:
                verdict = decide(node.spec.run_if, [(d.name, assumed[d.name]) for d in deps])
                skip = None if verdict.run else verdict.reason
            if skip is not None:
                assumed[node.name] = "skipped"
                node.digest = _skip_digest(skip)
                yield ev.Planned(node.name, "skip", (skip,)), node
                continue
            if node.spec.map is not None:
                yield from self._mapper.walk(node, unknown)  # its items, then a summary
                assumed[node.name] = "cached" if node.digest else "ran"
                continue
            waiting = [d.name for d in deps if not d.digest]
            if waiting and unknown is None:
                assumed[node.name] = "ran"
                reasons = tuple(f"upstream '{u}' will run" for u in waiting)
                yield ev.Planned(node.name, "run", reasons), node
                continue
            self._fingerprint(node, {d.name: d.digest or str(unknown) for d in deps})
            entry = None
            if not waiting and not node.forced and node.spec.cache:
                entry = self.cache.lookup(node.fp)
            if entry is not None:
                assumed[node.name] = "cached"
                node.digest, node.entry = entry.product_digest, entry
                yield ev.Planned(node.name, "cached", (), node.fp), node
            elif waiting:
                assumed[node.name] = "ran"
                reasons = tuple(f"upstream '{u}' will run" for u in waiting)
                yield ev.Planned(node.name, "run", reasons, node.fp), node
            else:
                assumed[node.name] = "ran"
                yield ev.Planned(node.name, "run", self._why(node), node.fp), node

    # -- the run -----------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every planned task; return the result (failures are in it, not raised)."""
        start = time.perf_counter()
        self.on_event(
            ev.RunStarted(
                tasks=tuple(self._nodes),
                targets=self.invocation.targets,
                jobs=self.executor.jobs,
                executor=self.executor.name,
            )
        )
        # perf: readiness is counted, not searched for: a finished task decrements its
        # dependents' counters, so each step costs its own edges, never a scan of the graph.
        self._waiting = {n.name: len(n.deps) for n in self._nodes.values()}
        self._ready = deque(n for n in self._nodes.values() if not n.deps)
        for name, reason in self.invocation.skipped.items():
            self._skip(self._nodes[name], reason)  # when= said no: before anything runs
        interrupted = completed = False
        try:
            try:
                self._loop()
            except KeyboardInterrupt:
                interrupted = True
                self._interrupt()
            self._skip_rest()
            completed = not interrupted
        finally:
            self._close(completed)
        if interrupted:
            raise Interrupted("interrupted; nothing in flight was recorded")
        return self._result(time.perf_counter() - start)

    def _loop(self, deadline: float | None = None) -> bool:
        """Decide, submit and collect until every task has ended; False at ``deadline``."""
        running, parked = self._running, self._parked
        while True:
            if self._cancel_requested and self._halt_rules != ("always",):
                self._cancel_all(self._cancel_requested)
            self._advance()
            self._fire_timers()
            if not running and not parked and not self._timers and not self._ready:
                return True
            self._flush()  # before waiting: store what is finished
            # Parked tasks wait on their lock's future as running ones on theirs: no
            # polling (the 0.5 s timeout only keeps Ctrl-C responsive).
            timeout = 0.5
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                timeout = min(timeout, left)
            done, _ = cf.wait(
                [*running, *parked, self._wake, *self._mapper.wakers()],
                timeout=timeout,
                return_when=cf.FIRST_COMPLETED,
            )
            for future in done:
                if future is self._wake:
                    self._wake = cf.Future()  # seen; a later cancel() resolves the new one
                elif future in parked:
                    self._unpark(parked.pop(future), future)
                elif future in running:
                    self._collect(future)
            self._mapper.drain()  # items yielded by generators still running

    def _collect(self, future: cf.Future[Any]) -> None:
        node = self._running.pop(future)
        if self._finish(node, future.result()) and not self.keep_going and not self._halt:
            self._stop(node.name)

    def _advance(self) -> None:
        """Decide every task whose dependencies are done; start misses while slots are free.

        A miss takes its fingerprint's lock only when it gets a slot: locking every ready
        miss at once made a second run on the same cache park all of them and wait, where
        it could have computed its share. And nothing waits in an executor's queue, so
        after a failure (fail-fast) no queued call can still start.
        """
        ready = self._ready
        fresh: set[str] = set()  # fingerprinted by _prefetch for this very decision
        misses: list[_Node] = []
        while True:
            if not ready:
                # The whole ready wave is decided before any of it starts, so that the
                # queue can start the most critical miss first (taskrun.priority). An
                # inline executor runs them here, which may make more tasks ready.
                self.cache.unprime()  # what _prefetch read and nobody looked up: dropped
                self._enqueue(misses)
                misses = []
                if not ready:
                    return
                continue
            if ready[0].name not in fresh:
                self._prefetch(fresh)  # the wave that is ready now, in one batch
            node = ready.popleft()
            prefetched = node.name in fresh
            fresh.discard(node.name)
            if node.state != "pending" or self._waiting[node.name]:
                continue  # decided already, or an upstream went back to run (_rerun)
            deps = [self._nodes[d] for d in node.deps]
            verdict = decide(node.spec.run_if, [(d.name, d.state) for d in deps])
            if not verdict.run:
                self._skip(node, verdict.reason)
                continue
            if self._halt and node.spec.run_if not in self._halt_rules:
                self._skip(node, self._halt_reason(node))
                continue
            if node.spec.map is not None:
                self._mapper.advance(node)  # expand into item nodes, or gather their products
                continue
            if not prefetched:
                self._fingerprint(node, self._upstream_digests(node, deps))
            if self._lookup(node):
                continue
            misses.append(node)

    def _enqueue(self, misses: list[_Node]) -> None:
        """Queue the misses of a ready wave, start what has a slot, announce the rest."""
        # perf: the entry each last used, for its reasons (_why), read in one query; a
        # miss decided after the next wave was read reads it again (unprime drops it).
        self.cache.prime_latest([miss.name for miss in misses])
        for miss in misses:
            self._queued.append(miss)
        self._start_queued()
        for miss in misses:
            if miss.state == "pending":  # waits for a slot: queued, not started
                miss.reasons = self._why(miss)
                self._announced.add(miss.name)
                self.on_event(ev.TaskQueued(miss.name, miss.reasons, miss.attempt))

    def _free_slots(self, node: _Node) -> bool:
        """Whether the executor ``node`` would run on has a slot for it now."""
        executor = self._mapper.executor(node)
        slots: int | None = getattr(executor, "slots", executor.jobs)
        if slots is None:
            return True
        # Per executor: a streaming generator on its own executor takes none of -j's slots.
        busy = sum(1 for n in self._running.values() if self._mapper.executor(n) is executor)
        return busy < slots

    def _start_queued(self) -> None:
        """Start queued misses, most critical first, while their executor has a free slot.

        After a halt (fail-fast, cancel; also one a miss started here causes) the queued
        misses that may not start are skipped at once. perf: the head of the queue
        without a slot stops the walk, so each call costs what it starts, not the length
        of the queue.
        """
        queued = self._queued
        halted = ""
        seen = len(self._ready)
        while queued:
            if self._halt and self._halt != halted:
                halted = self._halt
                for node in [n for n in queued if n.spec.run_if not in self._halt_rules]:
                    if node.state == "pending":
                        self._skip(node, self._halt)  # queued behind a failure: never started
                queued.keep(lambda n: n.state == "pending")
                continue
            node = queued.peek()
            if node.state != "pending":
                queued.popleft()
                continue
            if not self._free_slots(node):
                break
            queued.popleft()
            if self._try_lock(node):
                self._decide_locked(node)
                if len(self._ready) > seen:  # it ran inline and made tasks ready
                    if self._outranked(seen):
                        break  # one of them is more critical: decide it first
                    seen = len(self._ready)
                continue
            # Another process computes it: go on with other tasks; a helper thread sleeps
            # until the lock is free (see _unpark).
            node.state = "parked"
            node.wait = self.cache.wait_lock(node.fp)
            self._parked[node.wait] = node
            self.on_event(ev.TaskWaiting(node.name))

    def _outranked(self, since: int) -> bool:
        """Whether a task made ready (``_ready[since:]``, by an inline call) goes first.

        If not, the queue goes on, and the newly ready tasks are decided together later as
        one wave (perf: one batched read for the wave, not one per task).
        """
        if not self._queued:
            return True
        head = self._priority(self._queued.peek())
        ready = self._ready
        return any(self._priority(ready[i]) > head for i in range(since, len(ready)))

    def _priority(self, node: _Node) -> float:
        """NODE's longest remaining path, weighted by recorded durations (taskrun.priority).

        Computed for the whole plan the first time the queue must choose (never in a run
        that has no choice to make); 0 for every task with ``TASKRUN_SCHEDULE=fifo``.
        """
        if self._paths is None:
            from taskrun.priority import fifo_requested, remaining_paths
            from taskrun.runs import RUNS_DIR, recorded_durations

            if fifo_requested():
                self._paths = {}
            else:
                self._weights = recorded_durations(self.root / RUNS_DIR)
                order = self.invocation.order
                nodes = self._nodes
                self._paths, self._weight = remaining_paths(
                    order, lambda n: nodes[n].dependents, self._weights
                )
        if not self._paths:
            return 0.0
        found = self._paths.get(node.name)
        if found is not None:
            return found
        own = self._weights.get(node.name, self._weight)
        # An item call goes on along its mapped task's path, after the mapped task.
        after = self._nodes[node.item.mapped].dependents if node.item else node.dependents
        return own + max((self._priority(self._nodes[d]) for d in after), default=0.0)

    def _unpark(self, node: _Node, wait: cf.Future[Any]) -> None:
        """The other process released a parked task's lock: hit, normally, else run it."""
        node.wait = None
        node.state = "pending"
        try:
            node.lock = wait.result()
        except OSError as exc:
            self._warn(f"cannot wait for the lock of '{node.name}' ({exc}); running it", node)
        if self._lookup(node):
            self._release_lock(node)
        else:  # queued again, first in line, without holding its lock until it has a slot
            self._release_lock(node)
            self._queued.appendleft(node)
            self._start_queued()

    def _prefetch(self, fresh: set[str]) -> None:
        """Fingerprint the ready wave; fetch its local misses from the remote in one batch;
        read its entries from the local cache in one query (perf: not one per task).

        Adds the tasks fingerprinted here to ``fresh`` (_advance does not redo them).
        """
        remote = self.remote is not None and self.remote.active
        primed: list[str] = []
        wanted: list[str] = []
        for node in self._ready:
            if node.state != "pending" or self._waiting[node.name] or node.name in fresh:
                continue
            if node.spec.map is not None:
                continue  # a mapped task has no entry of its own: its items do
            deps = [self._nodes[d] for d in node.deps]
            if self._halt and node.spec.run_if not in self._halt_rules:
                continue
            if not decide(node.spec.run_if, [(d.name, d.state) for d in deps]).run:
                continue
            self._fingerprint(node, self._upstream_digests(node, deps))
            fresh.add(node.name)
            cacheable = node.spec.cache and not node.forced and not node.nocache
            if cacheable:
                primed.append(node.fp)
            if cacheable and remote and not self.cache.has_entry(node.fp):
                wanted.append(node.fp)
        if wanted:
            self.remote.fetch(self.cache, wanted)  # adopted locally: _lookup then hits
        self.cache.prime(primed)  # after the remote's adoptions, so that they are seen

    def _done(self, node: _Node) -> None:
        """A task ended (cached, ran, failed, skipped): its dependents may be ready."""
        for name in node.dependents:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                self._ready.append(self._nodes[name])

    def _lookup(self, node: _Node) -> bool:
        """A hit: restore outputs, mark cached, release upstream products. Else False."""
        if node.forced or not node.spec.cache or node.nocache:
            return False
        entry = self.cache.lookup(node.fp)
        if entry is None:
            return False
        if entry.product_digest.startswith(_SKIPPED):
            return self._cached_skip(node, entry)
        restored = 0
        if entry.outputs:
            from taskrun.files import restore_outputs

            changed = self._changed_product_file(node, entry.outputs)
            if changed:
                # A File product that is not a declared output may be the user's own file
                # (an input the task points at); never overwrite it: run the task instead.
                node.hint = f"product file '{changed}' differs from the cached one"
                return False

            try:
                report = restore_outputs(
                    [(o.path, o.digest, o.mode) for o in entry.outputs],
                    self.root,
                    self.cache.get_blob,
                    stat_cache=self.stat_cache,
                    exclude=self._own,
                )
            except TaskrunError as exc:
                self._warn(
                    f"cached outputs of '{node.name}' cannot be restored ({exc}); rerunning", node
                )
                node.replace = True
                return False
            restored = getattr(report, "restored", 0)
        node.entry = entry
        node.digest = entry.product_digest
        node.inputs = None  # perf: a hit needs its fingerprint's parts no more (memory)
        node.state = "cached"
        self._done(node)
        node.duration = entry.compute_time
        for dep in node.spec.deps:
            if dep.passed:
                self._consumed(self._nodes[dep.task])
        self.on_event(ev.TaskCached(node.name, saved=entry.compute_time, restored=restored))
        return True

    def _changed_product_file(self, node: _Node, records: Any) -> str | None:
        from taskrun.files import file_digest
        from taskrun.globs import compile_pattern

        patterns = [compile_pattern(p) for p in self._outputs(node)]
        for record in records:
            if any(p.matches(record.path) for p in patterns):
                continue
            path = self.root / record.path
            if path.is_file() and file_digest(path, stat_cache=self.stat_cache) != record.digest:
                return str(record.path)
        return None

    def _try_lock(self, node: _Node) -> bool:
        if not node.spec.cache or node.nocache or self.cache.mode != "rw":
            return True
        node.lock = self.cache.try_lock(node.fp)
        return node.lock is not None

    def _release_lock(self, node: _Node) -> None:
        if node.lock is not None:
            node.lock.release()
            node.lock = None

    def _decide_locked(self, node: _Node) -> None:
        # Holding the lock: another process may have stored the entry while it was queued.
        if node.lock is not None and self._lookup(node):
            self._release_lock(node)
            return
        if node.name not in self._announced:
            node.reasons = self._why(node)
        try:
            kwargs = self._arguments(node)
        except _UpstreamReload as reload:
            self._release_lock(node)
            node.state = "pending"
            self._rerun(reload.node, reload.reason)
            return
        self._submit(node, kwargs)

    def _arguments(self, node: _Node) -> dict[str, Any]:
        kwargs = dict(self.invocation.options[node.spec.name])
        if node.item is not None:
            kwargs[node.item.param] = node.item.value
        for dep in node.spec.deps:
            up = self._nodes[dep.task]
            if dep.passed and node.spec.run_if != "succeeded":
                kwargs[dep.param] = self._outcome_of(up)
            elif dep.passed:
                kwargs[dep.param] = self._product(up)
        for dep in node.spec.deps:
            if dep.passed:
                self._consumed(self._nodes[dep.task])
        return kwargs

    def _product(self, node: _Node) -> Any:
        if not node.has_value:
            try:
                node.value = node.entry.load()
            except Exception as exc:  # noqa: BLE001 - unpickling runs the product's code
                raise _UpstreamReload(
                    node, f"its cached product could not be loaded ({exc})"
                ) from None
            node.has_value = True
        return node.value

    def _consumed(self, node: _Node) -> None:
        node.consumers -= 1
        if node.consumers <= 0 and not node.target:
            # perf: drop the product after its last consumer; memory stays bounded by the
            # frontier of the graph, not its size.
            node.value, node.has_value = None, False

    def _rerun(self, node: _Node, reason: str) -> None:
        """A cached upstream whose product cannot be loaded runs again before its dependents."""
        self._warn(f"'{node.name}': {reason}; running it again", node)
        node.state = "pending"
        node.entry = None
        node.forced = True  # its entry is bad: don't hit it again
        for name in node.dependents:  # those still to decide wait for it again
            if self._nodes[name].state == "pending":
                self._waiting[name] += 1
        self._ready.append(node)

    def _submit(self, node: _Node, kwargs: Mapping[str, Any]) -> None:
        from taskrun.executors import Call

        node.state = "running"
        node.calls += 1
        if node.name in self._announced:
            self._announced.discard(node.name)  # told when it joined the queue
        else:
            self.on_event(ev.TaskQueued(node.name, node.reasons, node.attempt))
        ex = self._executor(node)
        if not (getattr(ex, "announces_start", False) and getattr(ex, "feed", None) is not None):
            # The executor does not say when a slot is free: count it as started now.
            self.on_event(ev.TaskStarted(node.name, node.reasons, node.attempt))
        call = Call(
            task=node.name,
            fn=self._mapper.function(node),
            kwargs=kwargs,
            cwd=str(self.root),
            timeout=node.spec.timeout,
            attempt=node.attempt,
            inputs=tuple(node.inputs.inputs) if node.inputs is not None else (),
            outputs=self._outputs(node),
        )
        self._calls[node.name] = call
        node.future = None  # until submit returns (the inline executor runs the call inside)
        node.future = self._mapper.executor(node).submit(call)
        self._running[node.future] = node
        if node.future.done():
            # The inline executor finishes inside submit(); settle it now so that a
            # failure stops the run before the next task starts.
            self._collect(node.future)

    def _finish(self, node: _Node, outcome: Any) -> bool:
        """Record a finished call. Returns True when the task has failed for good."""
        if getattr(outcome, "cancelled", False):
            self._cancelled(node, self._halt or outcome.error, outcome, running=True)
            return False
        if outcome.ok and isinstance(outcome.value, SkipMarker):
            self._record_skip(node, outcome)
            return False
        if outcome.ok:
            try:
                self._record(node, outcome)
                return False
            except TaskrunError as exc:
                outcome = _Failure(
                    error=exc.message, output=outcome.output, duration=outcome.duration
                )
        if self._retry(node, outcome):
            return False
        self._release_lock(node)
        node.state = "failed"
        self._done(node)
        node.error = outcome.error
        node.duration = outcome.duration
        if not self.keep_going and not self._halt:
            # Fail-fast: cancel first, then tell. A call a worker took up meanwhile is then
            # reported (started, cancelled) before the failure, never as started after it.
            self._stop(node.name)
        self.on_event(
            ev.TaskFailedEvent(
                node.name,
                error=outcome.error,
                traceback=getattr(outcome, "traceback", ""),
                output=outcome.output,
                duration=outcome.duration,
                timed_out=getattr(outcome, "timed_out", False),
            )
        )
        return True

    def _record(self, node: _Node, outcome: Any) -> None:
        """Check the product, hash it, store it with its output files; mark the task ran."""
        spec = node.spec
        try:
            value = spec.product.check(outcome.value, root=self.root)
        except TypeCheckError as exc:
            raise ProductTypeError(
                spec.name,
                f"its product fails its type {spec.product.name}: {exc.message};"
                f" fix the task or its return annotation ({spec.where})",
            ) from None
        if type(value) in _PLAIN:
            # perf: hashing these runs no user code and cannot warn; no warnings filter.
            digest = product_digest(value, hash_path=self._hash_path, root=self.root)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                digest = product_digest(
                    value, hash_path=self._hash_path, root=self.root, warned=self._digest_warned
                )
            for w in caught:
                self._warn(str(w.message), node)
        stored, unchanged = False, False
        captured = self._capture(node, value)
        if spec.cache and not node.nocache and self.cache.mode == "rw":
            # The lock is released when the batch holding the entry is written (_flush).
            stored, unchanged = self._store(node, value, digest, outcome.duration, captured)
        if not stored:
            self._release_lock(node)
        node.digest = digest
        node.value, node.has_value = value, True
        if node.consumers <= 0 and not node.target:
            node.value, node.has_value = None, False
        node.state = "ran"
        self._done(node)
        node.duration = outcome.duration
        self.on_event(
            ev.TaskRan(
                node.name,
                duration=outcome.duration,
                reasons=node.reasons,
                output=outcome.output,
                stored=stored,
                unchanged=unchanged,
            )
        )

    def _outputs(self, node: _Node) -> tuple[str, ...]:
        """The task's output patterns, ``{option}`` fields filled with this run's values."""
        return node.spec.outputs_for(self.invocation.options[node.spec.name])

    def _capture(self, node: _Node, value: Any) -> list[Any]:
        extra = [] if type(value) in _PLAIN else list(paths_in(value))  # perf: no walk
        if not node.spec.outputs and not extra:
            return []

        try:
            return capture_outputs(self._outputs(node), self.root, extra=extra, exclude=self._own)
        except TaskrunError as exc:
            from taskrun.errors import TaskFailed

            raise TaskFailed(node.name, exc.message) from None

    def _store(
        self, node: _Node, value: Any, digest: str, duration: float, captured: list[Any]
    ) -> tuple[bool, bool]:
        import cloudpickle

        try:
            # perf: for the builtin scalars pickle writes the bytes cloudpickle writes,
            # without building a cloudpickle Pickler per task.
            payload = (
                pickle.dumps(value, protocol=cloudpickle.DEFAULT_PROTOCOL)
                if type(value) in _PLAIN
                else cloudpickle.dumps(value)
            )
        except Exception as exc:  # noqa: BLE001 - pickling runs the product's code
            self._warn(f"the product of '{node.name}' cannot be pickled ({exc}); not cached", node)
            return False, False
        # The entry _why() read before the task ran (no second read of the cache).
        latest = node.latest
        unchanged = latest is not None and latest.product_digest == digest
        meta = EntryMeta(
            fingerprint=node.fp,
            task=node.name,
            components=self._described(node),
            product_digest=digest,
            compute_time=duration,
            created=time.time(),
            outputs=tuple(OutputRecord(c.path, c.digest, c.mode, len(c.data)) for c in captured),
            size=len(payload),
        )
        self._unsaved.append((node, meta, payload, {c.digest: c.data for c in captured}))
        # Large products are not held in memory by the hundred: bytes bound a batch too.
        self._unsaved_bytes += len(payload) + sum(len(c.data) for c in captured)
        if len(self._unsaved) >= _BATCH or self._unsaved_bytes >= _BATCH_BYTES:
            self._flush()
        return True, unchanged

    def _flush(self) -> None:
        """Write the finished tasks' entries in one transaction, then release their locks.

        perf: a commit per task cost more than the rest of a cold run of no-op tasks. The
        batch is written before the driver waits for anything and at the end of the run,
        so an entry is stored as soon as nothing else is ready to do; another process that
        waits for one of these fingerprints gets the lock only once the entry is there.
        """
        batch, self._unsaved, self._unsaved_bytes = self._unsaved, [], 0
        if not batch:
            return
        try:
            results = self.cache.store_many(
                [(meta, payload, blobs) for _, meta, payload, blobs in batch],
                # --force, and entries that could not be restored or loaded: the new
                # result replaces the stored one, so the next plain run uses it.
                replace={m.fingerprint for n, m, _, _ in batch if n.forced or n.replace},
            )
        finally:
            for node, *_ in batch:
                self._release_lock(node)
        if self.remote is not None:
            pairs = zip(batch, results, strict=True)
            stored = [m.fingerprint for (_, m, _, _), r in pairs if r == "stored"]
            self.remote.upload(self.cache, stored)  # queued; background threads send them
        for (node, *_), result in zip(batch, results, strict=True):
            if str(result) == "kept-existing-different":
                self._warn(
                    f"'{node.name}' is not reproducible: rerun with the same fingerprint, it"
                    " returned a different product than the cached entry (kept the first"
                    " entry); its dependents' cached results may be stale",
                    node,
                )

    # -- endings -----------------------------------------------------------------------
    def _skip(self, node: _Node, reason: str, *, cached: bool = False) -> None:
        node.state = "skipped"
        node.digest = _skip_digest(reason)  # what a dependent with a rule sees of it
        self._done(node)
        node.error = reason
        self.on_event(ev.Skipped(node.name, reason, cached))

    def _skip_rest(self) -> None:
        for node in self._nodes.values():
            if node.state in ("pending", "parked"):
                self._release_lock(node)
                self._skip(node, self._halt_reason(node) or "upstream did not complete")
            elif node.state in ("retrying", "running"):
                self._cancelled(node, self._halt or "the run ended", None)

    def _halt_reason(self, node: _Node) -> str:
        """Why the halt skips NODE: below the failed task, --keep-going would not run it
        either, so it is told what failed, not to use --keep-going."""
        for name in node.deps:
            up = self._nodes[name]
            if up.state == "failed":
                return f"upstream '{name}' failed"
            if (
                up.state == "skipped"
                and up.error.startswith("upstream '")
                and up.error.endswith("' failed")
            ):
                return up.error
        return self._halt

    def _close(self, completed: bool = True) -> None:
        self._mapper.close()
        self._flush()
        if self.remote is not None:
            self._finish_remote()
        nodes = [n for n in self._nodes.values() if self._mapper.counted(n)]
        # A skip from taskrun.skip() has an entry too (a fingerprint); other skips do not.
        used = [
            n.fp for n in nodes if n.state in ("cached", "ran", "skipped") and n.spec.cache and n.fp
        ]
        hits = sum(1 for n in nodes if n.state == "cached")
        misses = sum(1 for n in nodes if n.state in ("ran", "failed"))
        if self.cache.mode == "rw":
            # What each hit matched is what its next miss is compared with (_why); before
            # record_run, which replaces what point() skips by.
            self.cache.point({n.name: n.fp for n in nodes if n.state == "cached" and n.fp})
            # An interrupted run is not recorded: gc --keep-last-run keeps the last completed.
            self.cache.record_run(used, hits=hits, misses=misses, completed=completed)
        if self.stat_cache is not None:
            self.stat_cache.flush()
        if self.source_memo is not None:
            self.source_memo.flush()

    def _finish_remote(self) -> None:
        """Wait for the uploads (none after Ctrl-C), record the remote's numbers."""
        from taskrun.remote import write_stats

        remote = self.remote
        stats = remote.finish(lambda left: self.on_event(ev.RemoteUploading(remote.url, left)))
        write_stats(self.cache.directory, stats)
        self.on_event(
            ev.RemoteSummary(
                url=stats.url,
                hits=stats.hits,
                uploaded=stats.uploaded,
                refused=stats.refused,
                bytes_down=stats.bytes_down,
                bytes_up=stats.bytes_up,
                requests=stats.requests,
                failed=bool(stats.failure),
            )
        )

    def _result(self, elapsed: float) -> RunResult:
        # An expanded mapped task is counted as its item calls, not as a task of its own.
        nodes = [n for n in self._nodes.values() if self._mapper.counted(n)]
        count = {
            s: sum(1 for n in nodes if n.state == s)
            for s in ("cached", "ran", "failed", "skipped", "cancelled")
        }
        summary = ev.RunFinished(
            total=len(nodes),
            cached=count["cached"],
            ran=count["ran"],
            failed=count["failed"],
            skipped=count["skipped"],
            elapsed=elapsed,
            saved=sum(n.duration for n in nodes if n.state == "cached"),
            failures=tuple(n.name for n in nodes if n.state == "failed"),
            cancelled=count["cancelled"],
        )
        self.on_event(summary)
        tasks = {
            n.name: TaskResult(
                n.name, n.state, n.duration, n.reasons, n.fp, n.error, n.calls, fn=n.spec.fn
            )
            for n in self._nodes.values()
        }
        loaders: dict[str, Callable[[], Any]] = {}
        for node in self._nodes.values():
            if node.has_value:
                loaders[node.name] = (lambda v: lambda: v)(node.value)
            elif node.spec.map is not None:
                # A mapped task has no entry of its own: a target's product is gathered
                # from its items when asked for (mapping._Gathered).
                if node.entry is not None:
                    loaders[node.name] = node.entry.load
            elif node.state == "cached" and node.entry is not None:
                loaders[node.name] = node.entry.load
            elif node.state == "ran" and node.spec.cache and self.cache.mode == "rw":
                # perf: the product was dropped after its last consumer; it is in its entry.
                loaders[node.name] = (lambda fp: lambda: self._stored(fp))(node.fp)
        products = _LazyProducts({t: loaders[t] for t in self.invocation.targets if t in loaders})
        return RunResult(tasks=tasks, products=products, summary=summary, loaders=loaders)

    def _stored(self, fingerprint: str) -> Any:
        from taskrun.errors import CacheError

        entry = self.cache.lookup(fingerprint)
        if entry is None:
            raise CacheError(f"cache entry {fingerprint} is gone (evicted or removed)")
        return entry.load()

    # -- when things fail: rules, skips, retries, cancellation ---------------------------
    def _upstream_digests(self, node: _Node, deps: list[_Node]) -> dict[str, str]:
        """What enters the fingerprint for each dependency.

        A task with a trigger rule sees its upstreams' states, so a skip enters as its own
        digest; a failed or cancelled upstream makes its result uncacheable (never cache
        what a failure fed: the failure may not happen again).
        """
        if node.spec.run_if == "succeeded":
            return {d.name: d.digest for d in deps}
        out = {}
        for d in deps:
            if d.state in ("failed", "cancelled"):
                out[d.name] = f"{d.state}:"
                node.nocache = node.nocache or f"upstream '{d.name}' {d.state} (not cached)"
            else:
                out[d.name] = d.digest
        return out

    def _outcome_of(self, up: _Node) -> Outcome[Any]:
        product = self._product(up) if up.state in OK_STATES else None
        return Outcome(up.name, up.state, product, "" if up.state in OK_STATES else up.error)

    def _cached_skip(self, node: _Node, entry: Any) -> bool:
        """A task that called taskrun.skip() in an earlier run: skip it again from the cache."""
        try:
            marker = entry.load()
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss like any other
            return False
        node.entry = entry
        self._skip(node, marker.reason, cached=True)
        return True

    def _record_skip(self, node: _Node, outcome: Any) -> None:
        """The task called taskrun.skip(): a result, stored like a product."""
        marker: SkipMarker = outcome.value
        stored = False
        if node.spec.cache and not node.nocache and self.cache.mode == "rw":
            stored, _ = self._store(node, marker, _skip_digest(marker.reason), outcome.duration, [])
        if not stored:
            self._release_lock(node)
        node.duration = outcome.duration
        self._skip(node, marker.reason)

    def _cancelled(self, node: _Node, reason: str, outcome: Any, *, running: bool = False) -> None:
        self._release_lock(node)
        node.state = "cancelled"
        node.error = reason
        node.duration = getattr(outcome, "duration", 0.0)
        self._done(node)
        started = running and "before it started" not in getattr(outcome, "error", "")
        self.on_event(
            ev.TaskCancelled(
                node.name,
                reason,
                output=getattr(outcome, "output", ""),
                duration=node.duration,
                running=started,
            )
        )

    def _retry(self, node: _Node, outcome: Any) -> bool:
        """Try a failed task again if its policy allows; the wait is a timer, not a worker."""
        spec = node.spec
        policy = RetryPolicy(
            spec.retries, spec.retry_delay, spec.retry_backoff, spec.retry_jitter, spec.retry_on
        )
        timed_out = getattr(outcome, "timed_out", False)
        if self._halt or not policy.allows(
            node.attempt, getattr(outcome, "error_types", ()), timed_out=timed_out
        ):
            return False
        delay = policy.wait(node.attempt, self.rng)
        node.attempt += 1
        self.on_event(
            ev.TaskRetrying(
                node.name,
                node.attempt,
                outcome.error,
                delay=delay,
                output=outcome.output,
                duration=outcome.duration,
                timed_out=timed_out,
            )
        )
        if delay <= 0:
            self._submit(node, self._calls[node.name].kwargs)
        else:
            # perf: the worker slot is free while we wait; the driver's loop wakes for it.
            node.state = "retrying"
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), node))
        return True

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, node = heapq.heappop(self._timers)
            if node.state == "retrying":
                self._submit(node, self._calls[node.name].kwargs)

    def _executor(self, node: _Node) -> Any:
        """The executor a task runs on: its own executor= if it names another one."""
        name = node.spec.executor
        if name is None or name == self.executor.name or self.executor_for is None:
            return self.executor
        if name not in self._extra:
            self._extra[name] = self.executor_for(name)
        return self._extra[name]

    def _executors(self) -> list[Any]:
        return [self.executor, *self._extra.values()]

    def _stop(self, failed: str) -> None:
        """Fail-fast: start nothing new but rule tasks; cancel running calls where we can."""
        self._stopping = True
        self._halt = f"stopped after '{failed}' failed (use --keep-going to go on)"
        self._halt_rules = ("failed", "always")
        # Executor.cancel() stops every call of an executor: spare one that runs a cleanup.
        spared = {
            id(self._executor(n)) for n in self._running.values() if n.spec.run_if != "succeeded"
        }
        for executor in self._executors():
            if id(executor) not in spared:
                executor.cancel()
        self._drop_waiting()

    def _cancel_all(self, reason: str) -> None:
        """Ctrl-C or a handle's cancel(): stop every call; only always tasks may still start."""
        self._stopping = True
        self._halt = reason
        self._halt_rules = ("always",)
        for executor in self._executors():
            with contextlib.suppress(Exception):
                executor.cancel()
        for node in self._nodes.values():
            lost = node.future is None or node.future not in self._running
            if node.state == "running" and lost:  # Ctrl-C hit inside submit() (inline)
                self._cancelled(node, reason, None, running=True)
        self._drop_waiting()

    def _drop_waiting(self) -> None:
        """Retries waiting for their timer are cancelled; parked tasks are decided again."""
        for _, _, node in self._timers:
            if node.state == "retrying":
                self._cancelled(node, self._halt, None)
        self._timers.clear()
        from taskrun.locks import abandon

        for future, node in self._parked.items():
            abandon(future)  # a lock taken later is released at once
            node.wait = None
            node.state = "pending"
            self._ready.append(node)
        self._parked.clear()

    def _interrupt(self) -> None:
        """Ctrl-C: cancel everything, then give run_if="always" tasks a grace period.

        A second Ctrl-C (or the end of the grace period) stops those too. Finished tasks
        stay recorded; nothing in flight is.
        """
        in_flight = tuple(n.name for n in self._running.values())
        self.on_event(ev.Interrupted(running=in_flight))
        try:
            self._cancel_all("interrupted (Ctrl-C)")
            if not self._loop(deadline=time.monotonic() + self.interrupt_grace):
                self._cancel_all("interrupted: the grace period for cleanup tasks is over")
        except KeyboardInterrupt:
            self._cancel_all("interrupted again (Ctrl-C): cleanup tasks stopped")
        with contextlib.suppress(Exception, KeyboardInterrupt):
            for future in list(self._running):
                if future.done():
                    self._collect(future)
            for node in self._running.values():
                self._cancelled(node, self._halt, None, running=True)
            self._running.clear()
            self._flush()  # tasks that finished are good results; in-flight ones are not
        for node in self._nodes.values():
            self._release_lock(node)
        if self.remote is not None:
            self.remote.close()  # queued uploads are dropped, never half-written

    def request_cancel(self, reason: str = "cancelled") -> None:
        """Ask the driver to cancel the run (thread-safe): what ``handle.cancel()`` calls."""
        self._cancel_requested = reason
        with contextlib.suppress(cf.InvalidStateError):
            self._wake.set_result(None)

    def states(self) -> dict[str, str]:
        """Each task's state now (pending, parked, running, retrying, or how it ended)."""
        return {name: node.state for name, node in list(self._nodes.items())}

    def _warn(self, message: str, node: _Node | None = None) -> None:
        self.on_event(ev.Warned(message, node.name if node else ""))


_SKIPPED = "skipped:"  # product digests of skips start with this (never a real digest)


def _skip_digest(reason: str) -> str:
    from taskrun.fingerprint import product_digest

    return _SKIPPED + product_digest(reason)


class _UpstreamReload(Exception):
    def __init__(self, node: _Node, reason: str) -> None:
        self.node = node
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Failure:
    ok: bool = False
    error: str = ""
    output: str = ""
    duration: float = 0.0
    traceback: str = ""
    timed_out: bool = False
