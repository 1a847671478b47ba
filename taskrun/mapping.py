"""Mapped and streaming tasks: a graph that grows with the data.

``@task(map={"source": sources})`` runs the task once per item of the upstream product.
The scheduler keeps one *mapped node* for the task (what the graph, ``list`` and the
dependents see) and, once the items are known, adds one *item node* per distinct item:
an ordinary node with its own fingerprint (code, options, the item's digest, the other
dependencies' digests), its own cache entry and its own output files. The mapped node
ends when every item node has; its product is the list of item results in item order,
and its digest is made of the items' product digests (so early cutoff holds).

What can be mapped over (:func:`items_of`): a list or tuple (in order), a dict (its
``(key, value)`` pairs, in insertion order), any other iterable except text and sets
(``str``/``bytes`` would map over characters, a set has no stable order).

**Streaming.** A task that is a generator function has the list of what it yields as its
product. When a mapped task depends on it, its call is wrapped in :class:`Streaming`,
which sends each item, as it is yielded, over a local socket (:class:`ItemChannel`) to
the driver, which adds item nodes while the generator runs. The channel is an
``AF_UNIX`` socket with a random key, so it works from a thread, a worker process or a
Dask worker on the same machine; a worker that cannot reach it (another machine) runs
the generator to the end and the items fan out when its product arrives. The inline
executor never streams (it runs one call at a time anyway).

Everything here runs in the driver thread except :class:`Streaming` (where the task
runs) and the channel's reader threads (which only queue bytes).
"""

from __future__ import annotations

import collections.abc as cabc
import contextlib
import enum
import os
import pathlib
import queue
import socket
import string
import threading
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from taskrun import events as ev
from taskrun.errors import DefinitionError, TaskFailed

if TYPE_CHECKING:
    import concurrent.futures as cf

    from taskrun.registry import TaskSpec
    from taskrun.scheduler import Scheduler, _Node
    from taskrun.types import TaskType

__all__ = [
    "ItemChannel",
    "Mapper",
    "Streaming",
    "check_output_templates",
    "combine_digests",
    "format_outputs",
    "generator_product",
    "item_key",
    "items_of",
    "output_globs",
    "read_map",
]

_KEY_MAX = 60  # characters of an item's text form shown in its name, at most


# -- definition ----------------------------------------------------------------------------


def read_map(
    pairs: Sequence[tuple[str, str]], deps: Sequence[tuple[str, str]], label: str
) -> tuple[str, str]:
    """Check ``map=`` (already read like ``deps=``): one upstream, not also in ``deps=``."""
    if len(pairs) != 1:
        raise DefinitionError(
            f"{label}: map= takes exactly one upstream task (got {len(pairs)}); to map over"
            " pairs, make a task that zips them and map over it"
        )
    param, upstream = pairs[0]
    for dep_param, dep in deps:
        if dep == upstream:
            raise DefinitionError(
                f"{label}: '{upstream}' is in both deps= and map=; keep it in map= only"
                " (each call gets one item of it)"
            )
        if dep_param == param:
            raise DefinitionError(
                f"{label}: parameter '{param}' receives both a dependency and the mapped"
                " items; rename one with deps={'other_name': task}"
            )
    return param, upstream


def generator_product(annotation: Any, label: str) -> TaskType:
    """The product type of a generator task: ``-> Iterator[T]`` gives ``list[T]``."""
    from taskrun.types import ANY, ListType, UnsupportedAnnotation, resolve_annotation

    if annotation is Any:
        return ListType(ANY)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin not in (cabc.Iterator, cabc.Iterable, cabc.Generator) or not args:
        raise DefinitionError(
            f"{label}: it is a generator function (it yields), so its product is the list"
            f" of what it yields; annotate it as '-> Iterator[T]' (not {annotation!r})"
        )
    item = args[0]
    if item is Any:
        return ListType(ANY)
    try:
        return resolve_annotation(list[item], product=True)  # type: ignore[valid-type]
    except UnsupportedAnnotation as exc:
        raise DefinitionError(f"{label}: return annotation: {exc}") from None


def _template_fields(pattern: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise DefinitionError(
            f"output pattern {pattern!r} is not a valid template: {exc}"
        ) from None


def check_output_templates(spec: TaskSpec, label: str) -> None:
    """A mapped task's ``outputs=`` may name ``{param...}`` (the item) and its options."""
    assert spec.map is not None
    known = {spec.map, *(o.name for o in spec.options)}
    for pattern in spec.outputs:
        try:
            fields = _template_fields(pattern)
        except DefinitionError as exc:
            raise DefinitionError(
                f"{label}: {exc.message}; write e.g. 'build/{{{spec.map}}}.o'"
            ) from None
        for name in fields:
            root = name.split(".")[0].split("[")[0]
            if root not in known:
                hint = f" (did you mean '{spec.map}'?)" if root else ""
                raise DefinitionError(
                    f"{label}: output pattern {pattern!r} names '{{{name}}}'{hint}; a mapped"
                    f" task's outputs are templated by its item ('{{{spec.map}}}',"
                    f" '{{{spec.map}.stem}}', ...) and its options"
                )


def output_globs(spec: TaskSpec) -> tuple[str, ...]:
    """``spec.outputs`` as globs: ``{...}`` fields (a mapped task's item, any task's
    options) become ``*``."""
    if not any("{" in p for p in spec.outputs):
        return spec.outputs
    out = []
    for pattern in spec.outputs:
        parts = []
        for text, name, _, _ in string.Formatter().parse(pattern):
            parts.append(text)
            if name is not None:
                parts.append("*")
        out.append("".join(parts))
    return tuple(out)


def format_outputs(spec: TaskSpec, param: str, item: Any, options: Any) -> tuple[str, ...]:
    """One item call's output patterns: the templates filled with the item and options."""
    if not any("{" in p for p in spec.outputs):
        return spec.outputs
    values = {**dict(options), param: item}
    out = []
    for pattern in spec.outputs:
        try:
            text = pattern.format(**values)
        except Exception as exc:  # noqa: BLE001 - an attribute the item lacks, and friends
            raise TaskFailed(
                spec.name,
                f"output pattern {pattern!r} cannot be filled for item {item!r}: {exc}",
            ) from None
        if text.startswith("/") or ".." in text.split("/"):
            raise TaskFailed(
                spec.name,
                f"output pattern {pattern!r} gives {text!r} for item {item!r}, which leaves"
                " the project; template it with a relative part such as '{x.name}'",
            )
        out.append(text)
    return tuple(out)


# -- items ---------------------------------------------------------------------------------


def items_of(value: Any, task: str, upstream: str) -> list[Any]:
    """The items a mapped task gets from ``upstream``'s product, in order (see module doc)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (str, bytes, bytearray)):
        why = f"a {type(value).__name__}, which would map over its characters"
    elif isinstance(value, (set, frozenset)):
        why = "a set, whose order is not stable"
    elif isinstance(value, cabc.Iterable):
        return list(value)
    else:
        why = f"a {type(value).__name__}, which is not iterable"
    raise TaskFailed(
        task,
        f"it maps over the product of '{upstream}', but that product is {why}; make"
        f" '{upstream}' return a list (e.g. sorted(...))",
    )


def item_key(item: Any) -> str | None:
    """The short text an item is shown by (``src/a.c``), or None to show its index."""
    if isinstance(item, pathlib.PurePath):
        text = item.as_posix()
    elif isinstance(item, str):
        text = item
    elif isinstance(item, int):
        text = str(item)
    elif isinstance(item, enum.Enum):
        text = item.name
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, int)):
        return item_key(item[0])  # a dict's (key, value) pair shows as its key
    else:
        return None
    if not text or len(text) > _KEY_MAX or not text.isprintable() or "]" in text:
        return None
    return text


def combine_digests(digests: Sequence[str]) -> str:
    """The digest of a mapped task's product, from its items' digests, in order."""
    from taskrun.fingerprint import value_digest

    return value_digest(("taskrun.mapped", tuple(digests)))


# -- streaming -----------------------------------------------------------------------------


class Streaming:
    """Runs a generator task where the executor runs it; returns what it yielded, as a list.

    With an address, each item is also sent to the driver's :class:`ItemChannel` as soon
    as it is yielded. Sending is best effort: a driver that cannot be reached (another
    machine) or an item that cannot be pickled ends the streaming, never the task; the
    driver then takes the items from the product.
    """

    __slots__ = ("address", "authkey", "fn", "stream")

    def __init__(
        self,
        fn: Callable[..., Any],
        address: str | None = None,
        authkey: bytes = b"",
        stream: str = "",
    ) -> None:
        self.fn = fn
        self.address = address
        self.authkey = authkey
        self.stream = stream

    @property
    def __code__(self) -> Any:  # what executors read to find the task's file
        return getattr(self.fn, "__code__", None)

    def __call__(self, **kwargs: Any) -> list[Any]:
        generator = self.fn(**kwargs)
        items: list[Any] = []
        conn = self._connect()
        try:
            for item in generator:
                items.append(item)
                if conn is not None:
                    conn = self._send(conn, len(items) - 1, item)
        finally:
            if conn is not None:
                conn.close()
        return items

    def _connect(self) -> Any:
        if not self.address or not os.path.exists(self.address):
            return None
        from multiprocessing.connection import Client

        try:
            conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
            conn.send_bytes(self.stream.encode())
        except Exception:  # noqa: BLE001 - no driver to stream to: the product carries the items
            return None
        return conn

    @staticmethod
    def _send(conn: Any, index: int, item: Any) -> Any:
        import cloudpickle

        try:
            conn.send_bytes(index.to_bytes(8, "big") + cloudpickle.dumps(item))
        except Exception:  # noqa: BLE001 - see the class docstring
            conn.close()
            return None
        return conn


class ItemChannel:
    """The driver's end of streaming: a local socket that queues ``(stream, index, bytes)``.

    ``wake`` is a future that resolves when something was queued, so the driver can wait
    for it together with its running calls; :meth:`take` renews it and empties the queue.
    """

    def __init__(self) -> None:
        import concurrent.futures as cf
        import tempfile
        from multiprocessing.connection import Listener

        self._dir = tempfile.mkdtemp(prefix="taskrun-items-")
        self.address = os.path.join(self._dir, "items.sock")
        self.authkey = os.urandom(16)
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        self._queue: queue.SimpleQueue[tuple[str, int, bytes]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._conns: list[Any] = []
        self.wake: cf.Future[None] = cf.Future()
        threading.Thread(target=self._accept, name="taskrun-items", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except Exception:  # noqa: BLE001 - closed, or a client that failed the handshake
                if self._closed:
                    return
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.append(conn)
            threading.Thread(
                target=self._read, args=(conn,), name="taskrun-items-reader", daemon=True
            ).start()

    def _read(self, conn: Any) -> None:
        try:
            stream = conn.recv_bytes().decode()
            while True:
                data = conn.recv_bytes()
                self._queue.put((stream, int.from_bytes(data[:8], "big"), data[8:]))
                with self._lock:
                    if not self.wake.done():
                        self.wake.set_result(None)
        except Exception:  # noqa: BLE001 - EOF: the generator ended (or its worker died)
            pass
        finally:
            # Only this thread closes its connection: close() merely shuts the socket down
            # (under the lock), so the descriptor is never closed twice — a second close
            # could hit a descriptor number the process has meanwhile reused.
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
                conn.close()

    def take(self) -> list[tuple[str, int, bytes]]:
        """Everything queued so far; ``wake`` is renewed first, so nothing is missed."""
        import concurrent.futures as cf

        with self._lock:
            if self.wake.done():
                self.wake = cf.Future()
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        import shutil

        with self._lock:
            self._closed = True
            for conn in self._conns:
                # Wake the reader with EOF; it closes the connection itself.
                with (
                    contextlib.suppress(OSError),
                    socket.socket(fileno=os.dup(conn.fileno())) as sock,
                ):
                    sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# -- the scheduler's helper ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What makes an item node differ from its mapped task: the item and where it goes."""

    mapped: str  # the mapped task
    param: str  # the parameter that receives the item
    slot: str  # its key among the fingerprint's upstream digests: "sources[item]"
    key: str  # how it is shown between the brackets: "src/a.c", or its index
    value: Any
    digest: str


@dataclass(frozen=True, slots=True)
class _Gathered:
    """A mapped target's product, gathered from its item nodes when asked for."""

    items: tuple[_Node, ...]

    def load(self) -> list[Any]:
        return [c.value if c.has_value else c.entry.load() for c in self.items]


@dataclass(eq=False)
class _Expansion:
    """The item nodes of one mapped node (driver thread only)."""

    upstream: str
    param: str
    by_digest: dict[str, _Node] = field(default_factory=dict)
    order: list[_Node] = field(default_factory=list)  # the product's order, duplicates kept
    names: set[str] = field(default_factory=set)
    final: bool = False  # the upstream's whole product was read


_DONE = ("cached", "ran")
_UNKNOWN = object()  # dry runs: an upstream's product that cannot be known
_STREAMS = "(streaming generators)"  # the scheduler's extra executor for them


class Mapper:
    """The scheduler's part for mapped and streaming tasks; it works on the scheduler's nodes."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        self._exp: dict[str, _Expansion] = {}
        self._channel: ItemChannel | None = None
        self._streamed: dict[str, list[tuple[Any, str]]] = {}  # generator -> (item, digest)
        self._current: dict[str, str] = {}  # generator -> stream id of its running attempt
        self._mappers_of: dict[str, list[str]] = {}  # upstream -> mapped tasks over it
        self._planned: dict[str, list[Any]] = {}  # dry runs: a cached mapped task's entries
        self._specs: dict[str, TaskSpec] = {}  # the item spec of a task without templates
        self._behind: set[str] = set()  # streamed into, waiting for their other deps
        for node in scheduler._nodes.values():
            if node.spec.map is not None:
                self._mappers_of.setdefault(self._upstream(node.spec), []).append(node.name)

    @staticmethod
    def _upstream(spec: TaskSpec) -> str:
        return next(d.task for d in spec.deps if d.param == spec.map)

    # -- what the scheduler asks -----------------------------------------------------------
    def counted(self, node: _Node) -> bool:
        """Whether ``node`` counts as a task in summaries (an expanded mapped one does not)."""
        return node.name not in self._exp

    def function(self, node: _Node) -> Callable[..., Any]:
        """The function to call for ``node``: a generator task is wrapped in Streaming."""
        spec = node.spec
        if not spec.generator:
            return spec.fn
        if node.item is not None or not self._mappers_of.get(node.name):
            return Streaming(spec.fn)
        if getattr(self.s._executor(node), "name", "inline") == "inline":
            return Streaming(spec.fn)
        if self._channel is None:
            self._channel = ItemChannel()
        stream = f"{node.name}#{node.attempt}"
        self._current[node.name] = stream
        self._streamed[node.name] = []
        for name in self._mappers_of[node.name]:
            exp = self._exp.get(name)
            if exp is not None and not exp.final:
                exp.order = []  # a new attempt yields from the start again
        return Streaming(spec.fn, self._channel.address, self._channel.authkey, stream)

    def executor(self, node: _Node) -> Any:
        """Where ``node``'s call runs: a streaming generator gets a slot beside ``-j``.

        A generator that feeds a mapped task would otherwise hold one of the ``-j`` slots
        while it mostly waits for what it discovers, and starve the item calls it starts
        (at ``-j 2``, half of them). So it runs on a second executor of the run's kind,
        made on first use (thread and process executors; the Dask cluster and the inline
        executor are used as they are): ``-j`` bounds the item calls.
        """
        s = self.s
        chosen = s._executor(node)
        if (
            node.name not in self._current
            or chosen is not s.executor
            or s.executor.name not in ("thread", "process")
            or s.executor_for is None
        ):
            return chosen
        if _STREAMS not in s._extra:
            s._extra[_STREAMS] = s.executor_for(s.executor.name)
        return s._extra[_STREAMS]

    def wakers(self) -> list[cf.Future[Any]]:
        return [self._channel.wake] if self._channel is not None and self._current else []

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # -- streaming ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Take the items generators yielded since last time; start their calls."""
        if self._channel is None:
            return
        import cloudpickle

        touched: set[str] = set()
        for stream, index, data in self._channel.take():
            name = stream.rpartition("#")[0]
            node = self.s._nodes.get(name)
            if node is None or self._current.get(name) != stream or node.state != "running":
                continue  # an earlier attempt, or the product has arrived and says it all
            items = self._streamed[name]
            if index != len(items):
                continue
            try:
                item = cloudpickle.loads(data)
                digest = self._digest(item, node)
            except Exception as exc:  # noqa: BLE001 - fan out from the product instead
                self._current.pop(name, None)
                self.s._warn(f"cannot stream items of '{name}' ({exc}); they start when it ends")
                continue
            items.append((item, digest))
            touched.add(name)
        for name in touched:
            for mapped in self._mappers_of.get(name, ()):
                self._stream_into(self.s._nodes[mapped])
        for mapped in list(self._behind):  # their other dependencies may be done now
            self._stream_into(self.s._nodes[mapped])

    def _stream_into(self, node: _Node) -> None:
        """Add item nodes for items streamed so far, once the mapped task's other deps are done."""
        self._behind.discard(node.name)
        upstream = self._upstream(node.spec)
        if node.state != "pending" or self._current.get(upstream) is None:
            return
        others = [self.s._nodes[d] for d in node.deps if d != upstream]
        if any(d.state not in _DONE for d in others):
            if not any(d.state in ("failed", "skipped", "cancelled") for d in others):
                self._behind.add(node.name)  # try again once they are done
            return
        exp = self._expansion(node)
        streamed = self._streamed.get(upstream, [])
        start = len(exp.order)
        self._add(node, exp, streamed[start:], start)

    # -- expansion ---------------------------------------------------------------------------
    def _expansion(self, node: _Node) -> _Expansion:
        exp = self._exp.get(node.name)
        if exp is None:
            exp = self._exp[node.name] = _Expansion(self._upstream(node.spec), str(node.spec.map))
        return exp

    def _digest(self, item: Any, node: _Node) -> str:
        from taskrun.fingerprint import product_digest

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            digest = product_digest(item, hash_path=self.s._hash_path)
        for w in caught:
            self.s._warn(str(w.message), node)
        return digest

    def _add(
        self, node: _Node, exp: _Expansion, items: Sequence[tuple[Any, str]], start: int
    ) -> None:
        """Append items (with digests) to the mapped node's order; new ones become nodes."""
        from taskrun.scheduler import _Node

        s = self.s
        new: list[_Node] = []
        keep_values = node.consumers > 0 or node.target
        for i, (item, digest) in enumerate(items, start):
            child = exp.by_digest.get(digest)
            if child is None:
                key = item_key(item)
                name = f"{node.name}[{key if key is not None else i}]"
                if name in exp.names or name in s._nodes:
                    key, name = f"#{i}", f"{node.name}[#{i}]"
                spec = self._item_spec(node.spec, exp.param, item)
                child = _Node(spec, False)
                child.name = name
                child.deps = [d.task for d in spec.deps]
                child.dependents = [node.name]
                child.forced = node.forced
                child.consumers = 1 if keep_values else 0
                child.item = ItemInfo(
                    node.name, exp.param, f"{exp.upstream}[item]", key or str(i), item, digest
                )
                exp.by_digest[digest] = child
                exp.names.add(name)
                s._nodes[name] = child
                s._waiting[name] = 0
                s._waiting[node.name] += 1
                for dep in spec.deps:
                    if dep.passed:
                        s._nodes[dep.task].consumers += 1
                s._ready.append(child)
                new.append(child)
            exp.order.append(child)
        if new:
            s.on_event(
                ev.MapExpanded(
                    node.name,
                    items=tuple(c.name for c in new),
                    keys=tuple(c.item.key for c in new if c.item is not None),
                )
            )

    def _item_spec(self, spec: TaskSpec, param: str, item: Any) -> TaskSpec:
        # Raising TaskFailed here fails the mapped task (see advance()).
        templated = any("{" in p for p in spec.outputs)
        if not templated and spec.name in self._specs:
            return self._specs[spec.name]  # perf: one spec for every item when nothing varies
        outputs = format_outputs(spec, param, item, self.s.invocation.options[spec.name])
        deps = tuple(d for d in spec.deps if d.param != param)
        made = replace(spec, deps=deps, outputs=outputs, map=None)
        if not templated:
            self._specs[spec.name] = made
        return made

    def advance(self, node: _Node) -> None:
        """A mapped node whose dependencies (and items so far) are done: expand or finish it."""
        from taskrun.scheduler import _UpstreamReload

        exp = self._expansion(node)
        if not exp.final:
            upstream = self.s._nodes[exp.upstream]
            try:
                value = self.s._product(upstream)
            except _UpstreamReload as reload:
                self.s._rerun(reload.node, reload.reason)
                return
            try:
                items = items_of(value, node.name, exp.upstream)
                streamed = self._streamed.get(exp.upstream, [])
                # The streamed items of the attempt that produced the product are its first
                # ones: only the rest need a digest.
                trusted = len(exp.order) if streamed else 0
                exp.order = exp.order[:trusted]
                rest = [(it, self._digest(it, node)) for it in items[trusted:]]
                exp.final = True
                self._add(node, exp, rest, trusted)
            except TaskFailed as exc:
                self._fail(node, exc.message)
                return
            finally:
                self._current.pop(exp.upstream, None)
            self.s._consumed(upstream)
            if self.s._waiting[node.name]:
                return  # its new items run first
        self._finish(node, exp)

    def _finish(self, node: _Node, exp: _Expansion) -> None:
        from taskrun.scheduler import _UpstreamReload

        s = self.s
        children = list(exp.by_digest.values())
        bad = [c for c in children if c.state not in _DONE]
        counts = {k: sum(1 for c in children if c.state == k) for k in ("ran", "cached")}
        if bad:
            shown = ", ".join(c.name for c in bad[:3]) + (" ..." if len(bad) > 3 else "")
            self._fail(node, f"{len(bad)} of {len(children)} items did not complete: {shown}")
            return
        if node.consumers > 0:
            try:
                node.value = [s._product(c) for c in exp.order]
            except _UpstreamReload as reload:
                s._rerun(reload.node, reload.reason)
                return
            node.has_value = True
        elif node.target:
            # perf: a target nobody else consumes is loaded only if the caller asks for it
            # (the command line never does); items that ran keep their values until then.
            node.entry = _Gathered(tuple(exp.order))
        for child in children:
            if child.consumers > 0 and not node.entry:
                s._consumed(child)
        for dep in node.spec.deps:
            if dep.passed and dep.param != exp.param:
                s._consumed(s._nodes[dep.task])
        node.digest = combine_digests([c.digest for c in exp.order])
        node.state = "ran" if counts["ran"] else "cached"
        node.duration = sum(c.duration for c in children)
        s._done(node)
        s.on_event(
            ev.MapFinished(
                node.name,
                state=node.state,
                items=len(exp.order),
                ran=counts["ran"],
                cached=counts["cached"],
                failed=0,
            )
        )

    def _fail(self, node: _Node, error: str) -> None:
        node.state = "failed"
        node.error = error
        self.s._done(node)
        if node.name in self._exp and self._exp[node.name].by_digest:
            children = self._exp[node.name].by_digest.values()
            self.s.on_event(
                ev.MapFinished(
                    node.name,
                    state="failed",
                    items=len(children),
                    ran=sum(1 for c in children if c.state == "ran"),
                    cached=sum(1 for c in children if c.state == "cached"),
                    failed=sum(1 for c in children if c.state not in _DONE),
                    error=error,
                )
            )
        else:
            self._exp.pop(node.name, None)
            self.s.on_event(ev.TaskFailedEvent(node.name, error=error))
            if not self.s.keep_going and not self.s._halt:
                self.s._stop(node.name)

    # -- dry runs ----------------------------------------------------------------------------
    def walk(self, node: _Node, unknown: str | None) -> Iterator[tuple[ev.Planned, _Node]]:
        """:meth:`Scheduler._walk` for a mapped node: its items that would run, then a summary.

        When the upstream itself would run, its items are not known; if it has a cached
        product from an earlier run, the items are estimated from that one (their digests
        taken now: an edited file shows), and the summary says so.
        """
        s = self.s
        deps = [s._nodes[d] for d in node.deps]
        upstream = self._upstream(node.spec)
        others = [d.name for d in deps if not d.digest and d.name != upstream]
        if others:
            reasons = tuple(f"upstream '{u}' will run" for u in others)
            yield ev.Planned(node.name, "run", reasons), node
            return
        estimated = not s._nodes[upstream].digest
        try:
            value = self._plan_value(s._nodes[upstream], estimated)
            if value is _UNKNOWN:
                reason = f"upstream '{upstream}' will run: its items are not known yet"
                yield ev.Planned(node.name, "run", (reason,)), node
                return
            items = items_of(value, node.name, upstream)
        except TaskFailed as exc:
            yield ev.Planned(node.name, "run", (exc.message,)), node
            return
        from taskrun.scheduler import _Node

        note = f" (item from the last product of '{upstream}', which will run)"
        entries: list[Any] = []
        run = 0
        seen: dict[str, Any] = {}
        for i, item in enumerate(items):
            try:
                digest = self._digest(item, node)
                spec = self._item_spec(node.spec, str(node.spec.map), item)
            except Exception as exc:  # noqa: BLE001 - a file gone since, a bad template
                entries.append(None)
                run += 1
                yield ev.Planned(f"{node.name}[{i}]", "run", (str(exc),)), node
                continue
            if digest in seen:
                entries.append(seen[digest])
                continue
            child = _Node(spec, False)
            key = item_key(item)
            child.name = f"{node.name}[{key if key is not None else i}]"
            child.forced = node.forced
            child.item = ItemInfo(
                node.name, str(node.spec.map), f"{upstream}[item]", key or str(i), item, digest
            )
            s._fingerprint(child, {d.name: d.digest for d in deps if d.name != upstream})
            entry = None
            if not child.forced and spec.cache:
                entry = s.cache.lookup(child.fp)
            seen[digest] = entry
            entries.append(entry)
            if entry is None:
                run += 1
                reasons = s._why(child)
                if estimated:
                    reasons = (*reasons[:-1], reasons[-1] + note)
                yield ev.Planned(child.name, "run", reasons, child.fp), child
        cached = len(seen) - run
        if estimated:
            summary: tuple[str, ...] = (
                f"upstream '{upstream}' will run; with the items of its last product:"
                f" {run} of {len(items)} would run, {cached} cached"
                " (items it yields that are new will run too)",
            )
            yield ev.Planned(node.name, "mapped", summary), node
            return
        if run:
            summary = (f"{run} of {len(seen)} items would run", f"{cached} cached")
            yield ev.Planned(node.name, "mapped", summary), node
            return
        node.digest = combine_digests([e.product_digest for e in entries])
        self._planned[node.name] = entries
        yield ev.Planned(node.name, "cached", (f"{cached} items cached",), ""), node

    def _plan_value(self, node: _Node, estimated: bool) -> Any:
        """The product of a cached upstream; else (``estimated``) its last one, if any."""
        s = self.s
        if not estimated:
            if node.name in self._planned:
                return [e.load() for e in self._planned[node.name]]
            return node.entry.load()
        if node.spec.map is not None or s.cache.mode == "off":
            return _UNKNOWN
        latest = s.cache.latest(node.name)
        entry = s.cache.lookup(latest.fingerprint) if latest is not None else None
        if entry is None:
            return _UNKNOWN
        try:
            return entry.load()
        except Exception:  # noqa: BLE001 - an estimate only
            return _UNKNOWN
