"""The code a task runs: its source, and the project code it reaches, as digests.

:func:`code_parts` walks from a task function through the names it uses to the project's
own helper functions, classes and module-level constants, transitively, and digests each
one: source code as its AST with comments, docstrings (and the task's own decorators)
gone; constants by their canonical encoding; code without source by its bytecode. The
standard library, installed packages, taskrun itself and other tasks are left out.
``fingerprint.code_fingerprint`` is the public entry point.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import json
import linecache
import os
import pathlib
import re
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import xxhash

from taskrun.atomic import atomic_write
from taskrun.errors import FingerprintError

__all__ = ["SourceMemo", "code_parts"]


class SourceMemo:
    """Source text -> (normalized-AST digest, names it uses), kept across runs.

    Parsing and dumping the AST of every task on every run dominated a warm run of a big
    graph. The mapping from a function's exact source text to its normalized digest and
    referenced names is a pure function of that text (and of the Python version, which is
    part of the file's header), so it is safe to remember. What the names *refer to* (a
    helper's code, a constant's value) is still resolved live on every run.
    """

    _HEADER = f"taskrun-source-memo-1-{sys.implementation.cache_tag}"

    def __init__(self, path: pathlib.Path | None = None) -> None:
        self.path = path
        self.items: dict[str, list[Any]] = {}
        self.dirty = False
        # Files whose linecache entry was checked against the disk (once per memo: a memo
        # lives for one run, and a long-lived process may have edited and reloaded a file).
        self.checked: set[str] = set()
        if path is not None:
            try:
                data = json.loads(path.read_bytes())
                if data.get("header") == self._HEADER:
                    self.items = data["items"]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.items = {}  # missing or damaged: start over, it is only a memo

    def get(self, key: str) -> list[Any] | None:
        return self.items.get(key)

    def put(self, key: str, value: list[Any]) -> None:
        self.items[key] = value
        self.dirty = True

    def flush(self) -> None:
        """Write the memo atomically (last writer wins; never a torn file)."""
        if self.path is None or not self.dirty:
            return
        self.dirty = False
        data = json.dumps({"header": self._HEADER, "items": self.items}).encode()
        # A read-only checkout or a full disk must still build: the memo only saves
        # re-parsing, so a memo that cannot be written is simply not written.
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, durable=False)


_PROCESS_MEMO = SourceMemo()
_OWNED: dict[str, dict[str, bool]] = {}


@functools.lru_cache(maxsize=64)
def _resolved(root: pathlib.Path) -> pathlib.Path:
    return root.resolve()


def code_parts(
    fn: Callable[..., Any],
    *,
    root: pathlib.Path,
    digest: Callable[[Any], str],
    memo: SourceMemo | None = None,
    shared: dict[Any, Any] | None = None,
) -> dict[str, str]:
    """Return ``{name: digest}`` for ``fn`` (first, under its qualname) and what it uses.

    ``digest`` hashes a value canonically and raises FingerprintError for values that
    have no canonical form (such constants are not tracked). ``shared`` (one dict per run,
    with the same ``root`` and ``digest``) remembers the walk of each code object, so
    functions that share their code (tasks made in a loop) are walked once; module
    globals are read when a code object is first walked in the run.
    """
    target = inspect.unwrap(fn)
    if memo is None:
        memo = _PROCESS_MEMO
        memo.checked.clear()  # no run to scope it to: look at the files again every time
    walker = _CodeWalker(root, getattr(target, "__module__", "") or "", digest, memo)
    key = _shared_key(target) if shared is not None else None
    if key is None or shared is None:
        walker.function(target, target.__qualname__, top=True)
        return dict(walker.parts)
    # perf: tasks made by a factory share one code object; what the walk finds before the
    # closure depends only on the code, the module's globals, and the names below, so it
    # is walked once per run. The closure's values differ per function: walked each time.
    base = shared.get(key)
    if base is None:
        walker.function(target, target.__qualname__, top=True, closure=False)
        # The globals dict is kept alive with the entry, so its id() cannot be reused.
        shared[key] = (dict(walker.parts), target.__globals__)
    else:
        walker.parts = dict(base[0])
    walker.closure(target, target.__qualname__)
    return dict(walker.parts)


def _shared_key(fn: Any) -> tuple[Any, ...] | None:
    """What a function's code walk (its closure aside) depends on; None: not shareable."""
    if not isinstance(fn, types.FunctionType):
        return None
    return (fn.__code__, id(fn.__globals__), fn.__module__, fn.__qualname__, fn.__doc__)


def _source(code: types.CodeType, checked: set[str]) -> str:
    """The source lines of a code object, cheaply: first line to the last one it spans.

    perf: ``inspect.getsource`` tokenizes the file from the function on, which costs more
    than everything else a warm run does per task. The code object knows its first line
    (decorators included) and, through ``co_positions``, the last line any instruction of
    it or its nested code spans. Lines with no instruction at the very end (``pass``, a
    trailing string) may be cut; that is harmless, since they do nothing, and anything
    that does not parse falls back to ``inspect.getsource``.
    """
    positions = getattr(code, "co_positions", None)
    if code.co_filename not in checked:
        linecache.checkcache(code.co_filename)
        checked.add(code.co_filename)
    lines = linecache.getlines(code.co_filename)
    if positions is None or not lines:
        raise OSError("no fast source")
    last = code.co_firstlineno
    for c in _code_objects(code):
        for _, end, _, _ in c.co_positions():  # type: ignore[attr-defined]
            if end is not None and end > last:
                last = end
    return textwrap.dedent("".join(lines[code.co_firstlineno - 1 : last]))


_LIB_DIRS = tuple(
    {
        pathlib.Path(p).resolve()
        for k in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(k))
    }
)
_TASKRUN_DIR = pathlib.Path(__file__).resolve().parent
_NOT_PROJECT_PARTS = frozenset({"site-packages", "dist-packages"})


def _strip_docstrings(tree: ast.AST, *, drop_decorators: bool) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                del body[0]
    if drop_decorators and isinstance(tree, ast.Module) and tree.body:
        head = tree.body[0]
        if isinstance(head, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            head.decorator_list = []


_BODIES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _normalize(
    tree: ast.AST, *, drop_decorators: bool
) -> tuple[set[str], dict[str, list[list[str]]]]:
    """:func:`_strip_docstrings` and :func:`_references` in one walk.

    perf: each walk of the tree costs as much as parsing it; a cold run of a big task file
    walked every task three times (strip, references, dump).
    """
    if drop_decorators and isinstance(tree, ast.Module) and tree.body:
        head = tree.body[0]
        if isinstance(head, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            head.decorator_list = []
    names: set[str] = set()
    chains: dict[str, list[list[str]]] = {}
    stack: list[ast.AST] = [tree]
    pop, push, children = stack.pop, stack.extend, ast.iter_child_nodes
    load = ast.Load
    while stack:
        node = pop()
        kind = type(node)
        if kind is ast.Name:
            if type(node.ctx) is load:  # type: ignore[attr-defined]
                names.add(node.id)  # type: ignore[attr-defined]
            continue
        if kind is ast.Attribute:
            attrs: list[str] = []
            base: ast.AST = node
            while type(base) is ast.Attribute:
                attrs.append(base.attr)
                base = base.value
            if type(base) is ast.Name:
                chains.setdefault(base.id, []).append(attrs[::-1])
        elif kind in _BODIES:
            body = node.body  # type: ignore[attr-defined]
            if (
                body
                and type(body[0]) is ast.Expr
                and type(body[0].value) is ast.Constant
                and isinstance(body[0].value.value, str)
            ):
                del body[0]
        push(children(node))
    return names, chains


def _references(tree: ast.AST) -> tuple[set[str], dict[str, list[list[str]]]]:
    """Names loaded in ``tree``, and the attribute chains hanging off each name."""
    names: set[str] = set()
    chains: dict[str, list[list[str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            attrs: list[str] = []
            base: ast.AST = node
            while isinstance(base, ast.Attribute):
                attrs.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                chains.setdefault(base.id, []).append(attrs[::-1])
    return names, chains


def _has(obj: Any, name: str) -> bool:
    """hasattr that survives objects whose __getattr__ raises anything."""
    try:
        return hasattr(obj, name)
    except Exception:  # noqa: BLE001 - hasattr runs the object's own __getattr__, any code
        return False


def _is_task(obj: Any) -> bool:
    return _has(obj, "__taskrun_task__")


def _paths(module: types.ModuleType) -> list[str]:
    try:
        return [str(p) for p in getattr(module, "__path__", ())]
    except Exception:  # noqa: BLE001 - a module's __path__ may be any object; unreadable: none
        return []


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _bytecode(code: types.CodeType, doc: str | None = None) -> tuple[Any, ...]:
    """A canonical structure of a code object (for functions without source)."""
    consts: list[Any] = []
    for i, c in enumerate(code.co_consts):
        if isinstance(c, types.CodeType):
            consts.append(("code", _bytecode(c)))
        elif c is Ellipsis:
            consts.append(("ellipsis",))
        elif i == 0 and doc is not None and c == doc:
            consts.append(("doc",))  # a docstring change must not count
        else:
            consts.append(("const", c))
    return (
        code.co_code,
        tuple(consts),
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
    )


class _CodeWalker:
    """Collects the digests of a function and the project code it reaches."""

    def __init__(
        self, root: pathlib.Path, home: str, digest: Callable[[Any], str], memo: SourceMemo
    ) -> None:
        self.root = _resolved(root)
        self.home = home
        self.digest = digest
        self.memo = memo
        self.parts: dict[str, str] = {}
        # perf: which files belong to the project is a question about the file system, not
        # about one task: share the answers across walks (keyed by root).
        self.owned_files = _OWNED.setdefault(str(self.root), {})

    def key(self, module: str, name: str) -> str:
        return name if module == self.home else f"{module}.{name}"

    def definition_key(self, obj: Any, lookup: str) -> str:
        """Key a function or class by where it is defined, unless that is ambiguous."""
        qualname: str = obj.__qualname__
        if "<" in qualname:
            # Lambdas, and functions made by a factory, share one qualname: key them by
            # the name they were reached through, or one would hide the others.
            return lookup
        return self.key(obj.__module__ or "", qualname)

    def owns(self, filename: str | None) -> bool:
        """True for a file of the project: under root, not a library or a venv."""
        if not filename or filename.startswith("<"):
            return False
        known = self.owned_files.get(filename)
        if known is not None:
            return known
        path = pathlib.Path(filename).resolve()
        owned = (
            path.is_relative_to(self.root)
            and not _NOT_PROJECT_PARTS.intersection(path.parts)
            and not any(path.is_relative_to(lib) for lib in _LIB_DIRS)
            and not path.is_relative_to(_TASKRUN_DIR)
            and not any(
                (parent / "pyvenv.cfg").exists()
                for parent in path.parents
                if parent != self.root and parent.is_relative_to(self.root)
            )
        )
        self.owned_files[filename] = owned
        return owned

    def owns_module(self, module: types.ModuleType) -> bool:
        file = getattr(module, "__file__", None)
        if file is not None:
            return self.owns(file)
        # A namespace package (a directory without __init__.py) has only __path__.
        return any(self.owns(os.path.join(p, "__init__.py")) for p in _paths(module))

    def function(
        self, fn: types.FunctionType, key: str, *, top: bool = False, closure: bool = True
    ) -> None:
        if key in self.parts:
            return
        self.parts[key] = ""  # claim the slot first: cycle-safe, and keeps fn first
        code = fn.__code__
        parsed = self.parse(code, top)
        if parsed is None:
            # No usable source (exec'd code, a lambda mid-expression): hash the bytecode.
            self.parts[key] = self.digest(("bytecode", _bytecode(code, fn.__doc__)))
            every = {n for c in _code_objects(code) for n in c.co_names}
            chains = {n: [[a] for a in every] for n in every}
            names = every
        else:
            self.parts[key], names, chains = parsed
            # A name only bound locally is not a global; names the bytecode loads as
            # globals are. Decorator, default and annotation names are neither: keep them.
            globals_used: set[str] = set()
            locals_bound: set[str] = set()
            for c in _code_objects(code):
                globals_used.update(c.co_names)
                locals_bound.update(c.co_varnames, c.co_cellvars, c.co_freevars)
            names = {n for n in names if n in globals_used or n not in locals_bound}
        for name in sorted(names):
            self.global_name(fn.__globals__, fn.__module__ or "", name, chains)
        if closure:
            self.closure(fn, key)

    def closure(self, fn: types.FunctionType, key: str) -> None:
        """Digest the values ``fn``'s closure holds (they differ per function object)."""
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: not bound yet
                continue
            self.value(f"{key}.<closure>.{name}", value)

    def parse(
        self, code: types.CodeType, top: bool
    ) -> tuple[str, set[str], dict[str, list[list[str]]]] | None:
        """(digest, names, attribute chains) of a function's normalized source, memoized."""
        texts = []
        with contextlib.suppress(OSError):
            texts.append(_source(code, self.memo.checked))
        for text in texts:
            key = xxhash.xxh3_128_hexdigest(f"{int(top)}:{text}".encode())
            hit = self.memo.get(key)
            if hit is not None:
                return hit[0], set(hit[1]), hit[2]
            try:
                tree: ast.AST = ast.parse(text)
            except (SyntaxError, ValueError):
                break
            return self._remember(key, tree, top)
        try:
            text = textwrap.dedent(inspect.getsource(code))
            tree = ast.parse(text)
        except (OSError, TypeError, SyntaxError, ValueError):
            return None
        return self._remember(xxhash.xxh3_128_hexdigest(f"{int(top)}:{text}".encode()), tree, top)

    def _remember(
        self, key: str, tree: ast.AST, top: bool
    ) -> tuple[str, set[str], dict[str, list[list[str]]]]:
        names, chains = _normalize(tree, drop_decorators=top)
        dump = ast.dump(tree, annotate_fields=True, include_attributes=False)
        digest = self.digest(("source", dump))
        self.memo.put(key, [digest, sorted(names), chains])
        return digest, names, chains

    def klass(self, cls: type, key: str) -> None:
        self.parts[key] = ""
        module = sys.modules.get(cls.__module__)
        namespace: dict[str, Any] = dict(vars(module)) if module is not None else {}
        try:
            tree: ast.AST = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError, ValueError):
            members: list[tuple[str, Any]] = []
            for name, member in sorted(vars(cls).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, types.FunctionType):
                    members.append((name, _bytecode(member.__code__, member.__doc__)))
                    namespace = namespace or member.__globals__
                elif not name.startswith("__"):
                    try:
                        members.append((name, self.digest(member)))
                    except FingerprintError:
                        members.append((name, f"<{type(member).__qualname__}>"))
            self.parts[key] = self.digest(("class", tuple(members)))
            return
        _strip_docstrings(tree, drop_decorators=False)
        dump = ast.dump(tree, annotate_fields=True, include_attributes=False)
        self.parts[key] = self.digest(("source", dump))
        names, chains = _references(tree)
        for name in sorted(names):
            self.global_name(namespace, cls.__module__, name, chains)

    def global_name(
        self,
        namespace: Mapping[str, Any],
        module: str,
        name: str,
        chains: Mapping[str, list[list[str]]],
    ) -> None:
        if name not in namespace:
            return  # a builtin, or not defined (yet)
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            if self.owns_module(value):
                for attrs in chains.get(name, ()):
                    self.attribute_chain(value, attrs)
            return
        self.value(self.key(module, name), value)

    def attribute_chain(self, module: types.ModuleType, attrs: list[str]) -> None:
        obj: Any = module
        for attr in attrs:
            try:
                nxt = getattr(obj, attr)
            except Exception:  # noqa: BLE001 - a dynamic attribute we cannot see statically
                return
            if isinstance(nxt, types.ModuleType):
                if not self.owns_module(nxt):
                    return
                obj = nxt
                continue
            self.value(self.key(obj.__name__, attr), nxt)
            return

    def value(self, key: str, value: Any) -> None:
        """Digest what the name ``key`` refers to, if it is the project's."""
        if _is_task(value):
            return  # another task: its product digest covers it
        if callable(value) and _has(value, "__wrapped__"):
            try:
                value = inspect.unwrap(value)
            except ValueError:  # a wrapper cycle
                return
            if _is_task(value):
                return
        if isinstance(value, types.MethodType):
            value = value.__func__  # a bound method: its function's code
        if isinstance(value, functools.partial):
            self.value(f"{key}.<partial>", value.func)
            value = ("functools.partial", value.args, value.keywords)
        if isinstance(value, types.FunctionType):
            if self.owns(value.__code__.co_filename):
                self.function(value, self.definition_key(value, key))
        elif isinstance(value, type):
            module = sys.modules.get(value.__module__)
            ckey = self.definition_key(value, key)
            if ckey not in self.parts and self.owns(getattr(module, "__file__", None)):
                self.klass(value, ckey)
        elif isinstance(value, (types.ModuleType, types.BuiltinFunctionType)):
            return
        elif key not in self.parts:
            if isinstance(value, re.Pattern):
                value = ("re.Pattern", value.pattern, value.flags)
            try:
                digest = self.digest(value)
            except FingerprintError:
                return  # no canonical form (a logger, a client...): not a constant
            self.parts[key] = digest
