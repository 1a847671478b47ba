"""``@task``, ``define_type`` and the :class:`Registry` that collects and validates them.

The decorators only mark: ``@task`` hands the function and its arguments to the active
registry, which reads the signature once, checks everything, and stores a frozen
:class:`TaskSpec`. The function is returned unchanged, so it stays callable and testable.

The *active* registry is a context variable: the default one for plain imports, a fresh
one while the loader imports a task file, or one a test activates.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import keyword
import os
import re
import sys
import types as pytypes
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from types import FrameType, ModuleType
from typing import Any, Literal, TypeVar, overload

from taskrun.errors import DefinitionError, TypeCheckError, UsageError, did_you_mean
from taskrun.rules import FAILURE_SETTINGS as _FAILURE_SETTINGS
from taskrun.rules import check_when, read_failure_settings
from taskrun.types import (
    ANY,
    BUILTIN_TYPES,
    DefinedType,
    TaskType,
    UnsupportedAnnotation,
    resolve_annotation,
)

__all__ = [
    "MISSING",
    "DefinitionErrors",
    "DepSpec",
    "OptionSpec",
    "Registry",
    "TaskSpec",
    "active_registry",
    "default_registry",
    "define_type",
    "task",
]

F = TypeVar("F", bound=Callable[..., Any])
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_TASK_ATTR = "__taskrun_task__"


class DefinitionErrors(DefinitionError):
    """Every definition error of a task file, reported together (one per line)."""

    def __init__(self, errors: Sequence[str], *, source: str = "") -> None:
        self.errors = tuple(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            where = f" in {source}" if source else ""
            message = "\n".join(
                [f"{len(self.errors)} definition errors{where}; fix each of them:"]
                + [f"  - {e}" for e in self.errors]
            )
        super().__init__(message)


def _messages(exc: DefinitionError) -> list[str]:
    return list(exc.errors) if isinstance(exc, DefinitionErrors) else [exc.message]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<required>"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option of a task: a typed parameter that is not a dependency."""

    name: str
    type: TaskType
    default: Any = MISSING

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass(frozen=True, slots=True)
class DepSpec:
    """One dependency: the upstream task and the parameter that receives its product."""

    param: str
    task: str
    passed: bool = True  # False when the function has no such parameter (order only)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything the registry knows about one task, read once from its definition."""

    name: str
    fn: Callable[..., Any]
    doc: str
    options: tuple[OptionSpec, ...]
    deps: tuple[DepSpec, ...]
    product: TaskType
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    version: str | None = None
    cache: bool = True
    retries: int = 0
    timeout: float | None = None
    file: str = "<unknown>"
    line: int = 0
    # When things fail (taskrun.rules): trigger rule, invocation-time condition, retry
    # policy, where the task runs, and what replaced it (registry.override).
    run_if: str = "succeeded"
    when: Callable[..., Any] | None = None
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = ()
    executor: str | None = None
    override: str = ""  # "module:qualname" of the replacement, when overridden
    #: ``map=``: the parameter that receives one item of an upstream product per call (the
    #: dependency passed to it is the mapped-over one); None for a task called once.
    map: str | None = None
    #: A generator function: its product is the list of what it yields (see mapping.py).
    generator: bool = False

    @property
    def where(self) -> str:
        """``file:line`` of the definition, for messages."""
        return f"{self.file}:{self.line}"

    def option(self, name: str) -> OptionSpec | None:
        for opt in self.options:
            if opt.name == name:
                return opt
        return None

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""

    def outputs_for(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The output patterns with ``{option}`` fields filled from the option VALUES."""
        if not any("{" in p for p in self.outputs):
            return self.outputs
        from taskrun.globs import fill_template

        texts = {o.name: o.type.format(values[o.name]) for o in self.options if o.name in values}
        return tuple(fill_template(p, texts) for p in self.outputs)


# perf: tasks made in a loop pass the same settings (usually none); what they give is a
# pure function of those arguments, remembered here (errors are never remembered).
_TASK_ARGUMENTS = frozenset(
    {
        "name",
        "deps",
        "inputs",
        "outputs",
        "env",
        "version",
        "cache",
        "retries",
        "timeout",
        *_FAILURE_SETTINGS,
        "map",
    }
)
_SETTINGS_MEMO: dict[Any, dict[str, Any]] = {}
_NOT_SETTINGS = frozenset({"name", "deps", "map"})


def _settings_memo(
    read: Callable[[Mapping[str, Any], str], dict[str, Any]],
    kwargs: Mapping[str, Any],
    label: str,
) -> dict[str, Any]:
    key: Any = (
        read.__name__,
        *sorted((k, type(v), v) for k, v in kwargs.items() if k not in _NOT_SETTINGS),
    )
    try:
        found = _SETTINGS_MEMO.get(key)
    except TypeError:  # an unhashable value (a list): read it every time
        return read(kwargs, label)
    if found is None:
        found = read(kwargs, label)
        if len(_SETTINGS_MEMO) >= 1024:
            _SETTINGS_MEMO.clear()
        _SETTINGS_MEMO[key] = found
    return dict(found)


def _doc(fn: Callable[..., Any]) -> str:
    """``inspect.getdoc(fn) or ""``; perf: without its search for an inherited docstring
    where there can be none (a function not defined in a class)."""
    doc = fn.__doc__
    if isinstance(doc, str):
        return inspect.cleandoc(doc)
    qualname = getattr(fn, "__qualname__", "")
    if doc is None and ("." not in qualname or "<locals>" in qualname):
        return ""
    return inspect.getdoc(fn) or ""


def _where(fn: Callable[..., Any]) -> tuple[str, int]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return "<unknown>", 0
    return code.co_filename, code.co_firstlineno


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_frame() -> FrameType | None:
    """The first frame outside taskrun itself: where the user wrote the definition."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return frame


class _Param:
    """The parts of ``inspect.Parameter`` the registry reads."""

    __slots__ = ("default", "kind", "name")
    empty = inspect.Parameter.empty
    VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
    VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD
    POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY

    def __init__(self, name: str, kind: Any, default: Any) -> None:
        self.name, self.kind, self.default = name, kind, default


class _Signature:
    __slots__ = ("parameters",)

    def __init__(self, parameters: dict[str, Any]) -> None:
        self.parameters = parameters


def _signature(fn: Callable[..., Any]) -> Any:
    """``inspect.signature`` for a plain function, read straight off its code object.

    perf: ``inspect.signature`` costs ~25 us a task, a fifth of registering a big task
    file. Anything unusual (*args, **kwargs, positional-only, a __signature__ or
    __wrapped__ override) takes the inspect path, which also gives the error messages.
    """
    code = getattr(fn, "__code__", None)
    if (
        code is None
        or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
        or code.co_posonlyargcount
        or hasattr(fn, "__signature__")
        or hasattr(fn, "__wrapped__")
    ):
        return inspect.signature(fn)
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames[: n_pos + n_kw]
    defaults = fn.__defaults__ or ()
    kwdefaults = fn.__kwdefaults__ or {}
    first_default = n_pos - len(defaults)
    params: dict[str, Any] = {}
    for i, name in enumerate(names):
        if i < n_pos:
            default = defaults[i - first_default] if i >= first_default else _Param.empty
            kind: inspect._ParameterKind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        else:
            default = kwdefaults.get(name, _Param.empty)
            kind = inspect.Parameter.KEYWORD_ONLY
        params[name] = _Param(name, kind, default)
    return _Signature(params)


@dataclass(frozen=True, slots=True)
class _SpecTemplate:
    """What a successful ``@task`` read that its name, deps and defaults do not change.

    perf: tasks made in a loop by a factory share their code object, annotations and
    settings; the second and later ones reuse this instead of reading signature,
    annotations, option types, product and settings again. Per task, the name, the
    dependencies (resolved against the registry) and the option defaults (checked against
    their types) are still read and validated. A template exists only for a definition
    that had no problem, so every error is reported by the full path, as before.
    """

    keep: tuple[Any, ...]  # the objects whose ids are in the key, kept alive
    params: frozenset[str]
    #: (name, type, position among the parameters; keyword-only from n_pos on)
    options: tuple[tuple[str, TaskType, int], ...]
    n_pos: int
    #: TaskSpec's positional arguments for a task of this template (doc, product,
    #: settings, ...); the per-task ones (name, fn, options, deps, file, line) are
    #: replaced. perf: 25 keyword arguments cost a task more than the rest of its spec.
    args: tuple[Any, ...]


_SPEC_FIELDS = tuple(f.name for f in dataclass_fields(TaskSpec))
_AT_NAME, _AT_FN, _AT_OPTIONS, _AT_DEPS, _AT_FILE, _AT_LINE = (
    _SPEC_FIELDS.index(n) for n in ("name", "fn", "options", "deps", "file", "line")
)


def _template_key(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """The key of FN's spec template, or None when FN takes the full path every time.

    Everything a definition reads besides its name, deps and defaults is in the key: the
    code object (parameters, generator flag), its globals, qualname and docstring (an
    inherited docstring is looked up through them), the annotation values by identity
    (those objects and the globals are kept alive by the template), and the settings by
    value. Not eligible: a signature the fast reader does not handle (see
    ``_signature``), string annotations (their meaning depends on where they are
    evaluated), ``map=``, and unhashable settings.
    """
    if type(fn) is not pytypes.FunctionType or kwargs.get("map") is not None:
        return None
    code = fn.__code__
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or code.co_posonlyargcount:
        return None
    attrs = fn.__dict__  # what hasattr finds on a function (its type has neither)
    if "__signature__" in attrs or "__wrapped__" in attrs:
        return None
    doc = fn.__doc__
    if doc is not None and type(doc) is not str:
        return None
    annotations = fn.__annotations__
    if any(isinstance(a, str) for a in annotations.values()):
        return None
    key = (
        code,
        id(fn.__globals__),
        fn.__qualname__,
        doc,
        tuple([(k, id(v)) for k, v in annotations.items()]),
        tuple(sorted([(k, type(v), v) for k, v in kwargs.items() if k not in _NOT_SETTINGS])),
    )
    try:
        hash(key)
    except TypeError:  # an unhashable setting (a list)
        return None
    return key


def _caller_where() -> str:
    """``file:line`` of the first caller outside taskrun itself."""
    frame = _caller_frame()
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "<unknown>"


class Registry:
    """Tasks and types by name; the graph to query; overrides for tests."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        self._types: dict[str, DefinedType] = {}
        self._by_fn: dict[Callable[..., Any], str] = {}
        # perf: the graph of the specs it was built from (an invocation asks for it
        # several times); rebuilt when any spec was added, swapped or restored.
        self._graph: tuple[list[TaskSpec], Graph] | None = None
        # While the loader collects errors: every definition error so far, and the
        # functions whose @task failed (a task depending on one is not reported twice).
        self._errors: list[str] | None = None
        self._broken: dict[Callable[..., Any], str] = {}
        # ... and where each failed task's name was defined: a failed definition still
        # holds its name, so a second task of that name is reported in the same run.
        self._broken_at: dict[str, str] = {}
        #: The task file's module when the loader filled this registry (its root is
        #: where the file lives), else None.
        self.module: ModuleType | None = None
        #: The project's own modules the task file imported (``helpers.py``), by name; put
        #: back in ``sys.modules`` only while the project runs (see loader.project_context).
        self.project_modules: dict[str, ModuleType] = {}
        #: perf: what a successful definition read from its code object, annotations and
        #: settings, reused by the next task with the same ones (see _SpecTemplate).
        self._templates: dict[Any, _SpecTemplate] = {}

    # -- definition ------------------------------------------------------------------
    @overload
    def task(self, fn: F, /) -> F: ...
    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        deps: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] = (),
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        env: Sequence[str] = (),
        version: str | int | None = None,
        cache: bool = True,
        retries: int = 0,
        timeout: float | None = None,
        retry_delay: float = 0.0,
        retry_backoff: float = 1.0,
        retry_jitter: float = 0.0,
        retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
        run_if: Literal["succeeded", "failed", "always"] = "succeeded",
        when: Callable[..., Any] | None = None,
        executor: Literal["inline", "thread", "process", "dask"] | None = None,
        map: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None = None,
    ) -> Callable[[F], F]: ...

    def task(self, fn: Any = None, /, **kwargs: Any) -> Any:
        """Register a task, bare (``@task``) or with arguments (``@task(deps=[...])``)."""
        if fn is not None:
            if kwargs or not callable(fn):
                self._report(
                    DefinitionError(
                        f"@task takes keyword arguments only (got {fn!r}) at"
                        f" {_caller_where()}; write @task(deps=[...]) or a bare @task"
                    )
                )
                return fn
            self._register_or_collect(fn, {})
            return fn

        def decorate(f: F) -> F:
            self._register_or_collect(f, kwargs)
            return f

        return decorate

    # -- collecting every error -------------------------------------------------------
    @contextlib.contextmanager
    def collecting_errors(self) -> Iterator[list[str]]:
        """Record definition errors instead of raising the first (the loader's mode).

        Inside, a failing ``@task`` leaves its function unregistered and a failing
        ``define_type`` returns a stand-in, so the rest of the file is still checked.
        The caller raises :class:`DefinitionErrors` for what the yielded list holds.
        """
        previous, self._errors = self._errors, []
        try:
            yield self._errors
        finally:
            self._errors = previous

    def _report(self, exc: DefinitionError) -> None:
        if self._errors is None:
            raise exc
        self._errors.extend(_messages(exc))

    def _register_or_collect(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        try:
            self._register(fn, kwargs)
        except DefinitionError as exc:
            self._report(exc)
            name = kwargs.get("name") or getattr(fn, "__name__", None)
            if isinstance(name, str):
                where = "{}:{}".format(*_where(fn))
                first = self._tasks[name].where if name in self._tasks else None
                first = first or self._broken_at.get(name)
                if first is not None and "defined twice" not in exc.message:
                    self._report(_defined_twice(name, first, where))
                self._broken_at.setdefault(name, where)
                with contextlib.suppress(TypeError):
                    self._broken[fn] = name

    def define_type(
        self,
        name: str,
        parent: Any,
        predicate: Callable[[Any], bool] | None = None,
        *,
        doc: str = "",
        parse: Callable[[str], Any] | None = None,
    ) -> DefinedType:
        """Define a named type: ``parent``'s check, then ``predicate``.

        ``parent`` is a built-in type, another defined type, or any Python class (an
        ``isinstance`` check). An option of the type needs a text form: the parent's,
        or ``parse=``.
        """
        where = _caller_where()
        try:
            return self._define_type(name, parent, predicate, doc, parse, where)
        except DefinitionError as exc:
            self._report(exc)
            # A stand-in, so annotations that use it still evaluate and the rest of the
            # file is checked too; the loader raises for the error above.
            return DefinedType(str(name), ANY, None, doc=doc, defined_at=where)

    def _define_type(
        self,
        name: str,
        parent: Any,
        predicate: Callable[[Any], bool] | None,
        doc: str,
        parse: Callable[[str], Any] | None,
        where: str,
    ) -> DefinedType:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DefinitionError(
                f"type name {name!r} at {where} is not a valid name; use letters, digits, _"
                " and -, starting with a letter or _"
            )
        if name in self._types:
            raise DefinitionError(
                f"type '{name}' is defined twice: first at {self._types[name].defined_at},"
                f" again at {where}; rename one of them"
            )
        if name in {t.name for t in BUILTIN_TYPES.values()}:
            raise DefinitionError(
                f"type '{name}' at {where} has the name of a built-in type; choose another name"
            )
        try:
            parent_type = resolve_annotation(parent, product=True)
        except UnsupportedAnnotation as exc:
            raise DefinitionError(f"type '{name}' at {where}: parent {exc}") from None
        if predicate is not None and not callable(predicate):
            raise DefinitionError(
                f"type '{name}' at {where}: predicate {predicate!r} is not callable;"
                " pass a function such as lambda v: v > 0"
            )
        if parse is not None and not callable(parse):
            raise DefinitionError(f"type '{name}' at {where}: parse= must be a function of str")
        defined = DefinedType(name, parent_type, predicate, doc=doc, parse=parse, defined_at=where)
        self._types[name] = defined
        return defined

    def _register(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        spec = self._build_spec(fn, kwargs)
        if spec.name in self._tasks:
            raise _defined_twice(spec.name, self._tasks[spec.name].where, spec.where)
        if spec.name in self._broken_at:  # its definition failed, reported already
            raise _defined_twice(spec.name, self._broken_at[spec.name], spec.where)
        if spec.outputs:
            from taskrun.files import check_disjoint_outputs
            from taskrun.globs import template_fields
            from taskrun.mapping import output_globs

            names = [o.name for o in spec.options]
            # A mapped task's templates (item and options) are checked by mapping.py.
            for pattern in spec.outputs if spec.map is None else ():
                for field_name in template_fields(pattern):
                    if field_name not in names:
                        raise DefinitionError(
                            f"task '{spec.name}' ({spec.where}): output pattern '{pattern}'"
                            f" uses {{{field_name}}}, which is not an option of the task"
                            f"{did_you_mean(field_name, names)}; its options are:"
                            f" {', '.join(names) or 'none'}"
                        )
            # perf: one call over every task with outputs uses the checker's prefix index,
            # instead of comparing the new task with each earlier one in turn. A templated
            # pattern counts as every file it can name.
            producers = {t.name: output_globs(t) for t in self._tasks.values() if t.outputs}
            try:
                check_disjoint_outputs({**producers, spec.name: output_globs(spec)})
            except DefinitionError as exc:
                raise DefinitionError(f"task '{spec.name}' ({spec.where}): {exc.message}") from None
        self._tasks[spec.name] = spec
        self._by_fn[fn] = spec.name
        with contextlib.suppress(AttributeError, TypeError):
            setattr(fn, _TASK_ATTR, spec.name)

    def _build_spec(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> TaskSpec:
        file, line = _where(fn)
        where = f"{file}:{line}"
        allowed = _TASK_ARGUMENTS
        unknown = sorted(kwargs.keys() - allowed)
        if unknown:
            hint = did_you_mean(unknown[0], allowed)
            raise DefinitionError(
                f"@task at {where} got unknown argument '{unknown[0]}'{hint};"
                f" the arguments are {', '.join(sorted(allowed))}"
            )
        if not callable(fn) or not isinstance(fn, pytypes.FunctionType):
            raise DefinitionError(f"@task at {where} must decorate a function (got {fn!r})")
        name = kwargs.get("name")
        name = fn.__name__ if name is None else name
        if type(name) is str:
            name = sys.intern(name)  # perf: shared with the cache's entries (memory)
        label = f"task '{name}' ({where})"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DefinitionError(
                f"{label}: name {name!r} is not valid; use letters, digits, _ and -,"
                " starting with a letter or _"
            )
        template_key = _template_key(fn, kwargs)
        if template_key is not None:
            spec = self._spec_from_template(template_key, fn, kwargs, name, file, line, label)
            if spec is not None:
                return spec
        # Every problem of this task is gathered, so one edit/rerun cycle fixes them all.
        problems: list[str] = []
        deps_ok = True
        try:
            deps = self._read_deps(kwargs.get("deps", ()), label)
        except DefinitionError as exc:
            problems.append(exc.message)
            deps, deps_ok = [], False
        failure_settings: dict[str, Any] = {}
        try:
            failure_settings = _settings_memo(read_failure_settings, kwargs, label)
        except DefinitionError as exc:
            problems.append(exc.message)
        mapped = None
        if kwargs.get("map") is not None:
            from taskrun.mapping import read_map

            try:
                mapped = read_map(self._read_deps(kwargs["map"], label), deps, label)
                deps.append(mapped)
            except DefinitionError as exc:
                problems.append(exc.message)
                deps_ok = False
        sig = _signature(fn)
        hints = self._hints(fn, label)
        dep_params = {param for param, _ in deps}
        options: list[OptionSpec] = []
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                problems.append(
                    f"{label}: parameter '{p.name}' is *args/**kwargs; taskrun passes products"
                    " and options by name, so list each one as a named parameter"
                )
                continue
            if p.kind is p.POSITIONAL_ONLY:
                problems.append(f"{label}: parameter '{p.name}' is positional-only; remove the '/'")
                continue
            if p.name in dep_params:
                try:
                    self._check_dep_annotation(p.name, hints, failure_settings, label)
                except DefinitionError as exc:
                    problems.append(exc.message)
                continue
            if p.name not in hints:
                if deps_ok:  # else it may well be the dependency that failed above
                    problems.append(self._unannotated(p, label, deps))
                continue
            try:
                options.append(self._option(p, hints[p.name], label))
            except DefinitionError as exc:
                problems.append(exc.message)
        params = set(sig.parameters)
        dep_specs = tuple(DepSpec(param, dep, param in params) for param, dep in deps)
        generator = bool(fn.__code__.co_flags & inspect.CO_GENERATOR)  # a plain function
        if mapped is not None and mapped[0] not in params:
            problems.append(
                f"{label}: map= passes each item of '{mapped[1]}' to parameter"
                f" '{mapped[0]}', which {fn.__name__}() does not have; add the parameter or"
                f" name it with map={{'param': {mapped[1].replace('-', '_')}}}"
            )
        # `-> Any` says what no annotation says: the product is not checked. Options have
        # no such escape, since a value from the command line must parse into something.
        product: TaskType = ANY
        if generator:
            from taskrun.mapping import generator_product

            try:
                product = generator_product(hints.get("return", Any), label)
            except DefinitionError as exc:
                problems.append(exc.message)
        elif "return" in hints and hints["return"] is not Any:
            try:
                product = resolve_annotation(hints["return"], product=True)
            except UnsupportedAnnotation as exc:
                problems.append(f"{label}: return annotation: {exc}")
        try:
            settings = _settings_memo(self._read_settings, kwargs, label)
        except DefinitionError as exc:
            problems.append(exc.message)
        if failure_settings.get("when") is not None:
            try:
                check_when(failure_settings["when"], [o.name for o in options], label)
            except DefinitionError as exc:
                problems.append(exc.message)
        if problems:
            raise DefinitionErrors(problems)
        spec = TaskSpec(
            name=name,
            fn=fn,
            doc=_doc(fn),
            options=tuple(options),
            deps=dep_specs,
            product=product,
            file=file,
            line=line,
            map=mapped[0] if mapped is not None else None,
            generator=generator,
            **settings,
            **failure_settings,
        )
        if spec.map is not None:
            from taskrun.mapping import check_output_templates

            check_output_templates(spec, label)
        elif template_key is not None:
            self._remember_template(template_key, fn, sig, spec, deps, settings, failure_settings)
        return spec

    def _remember_template(
        self,
        key: Any,
        fn: Callable[..., Any],
        sig: Any,
        spec: TaskSpec,
        deps: Sequence[tuple[str, str]],
        settings: dict[str, Any],
        failure_settings: dict[str, Any],
    ) -> None:
        code = fn.__code__
        names = list(sig.parameters)
        n_pos = code.co_argcount
        # What every later task of this template shares: this task's spec as the template
        # path would make it (its own name, fn, options, deps, file, line replaced later).
        shared = TaskSpec(
            name=spec.name,
            fn=fn,
            doc=spec.doc,
            options=spec.options,
            deps=spec.deps,
            product=spec.product,
            file=spec.file,
            line=spec.line,
            generator=spec.generator,
            **settings,
            **failure_settings,
        )
        self._templates[(key, tuple([param for param, _ in deps]))] = _SpecTemplate(
            keep=(fn.__globals__, *fn.__annotations__.values()),
            params=frozenset(names),
            options=tuple((o.name, o.type, names.index(o.name)) for o in spec.options),
            n_pos=n_pos,
            args=tuple([getattr(shared, field_name) for field_name in _SPEC_FIELDS]),
        )

    def _spec_from_template(
        self,
        key: Any,
        fn: Callable[..., Any],
        kwargs: Mapping[str, Any],
        name: str,
        file: str,
        line: int,
        label: str,
    ) -> TaskSpec | None:
        """FN's spec from the template of an earlier task like it; None when there is
        none or when anything of this task is wrong (the full path then says what)."""
        try:
            deps = self._read_deps(kwargs.get("deps", ()), label)
        except DefinitionError:
            return None
        template = self._templates.get((key, tuple([param for param, _ in deps])))
        if template is None:
            return None
        defaults = fn.__defaults__ or ()
        kwdefaults = fn.__kwdefaults__ or {}
        first_default = template.n_pos - len(defaults)
        options: list[OptionSpec] = []
        for opt_name, otype, pos in template.options:
            if pos >= template.n_pos:
                default = kwdefaults.get(opt_name, MISSING)
            else:
                default = defaults[pos - first_default] if pos >= first_default else MISSING
            if default is not MISSING:
                if callable(default) and not isinstance(default, (type, TaskType)):
                    return None
                try:
                    default = otype.check(default)
                except TypeCheckError:
                    return None
            options.append(OptionSpec(opt_name, otype, default))
        params = template.params
        args = list(template.args)
        args[_AT_NAME] = name
        args[_AT_FN] = fn
        args[_AT_OPTIONS] = tuple(options)
        args[_AT_DEPS] = tuple([DepSpec(param, dep, param in params) for param, dep in deps])
        args[_AT_FILE] = file
        args[_AT_LINE] = line
        return TaskSpec(*args)

    @staticmethod
    def _check_dep_annotation(
        param: str, hints: Mapping[str, Any], settings: Mapping[str, Any], label: str
    ) -> None:
        """A dependency's parameter is ``Outcome[T]`` exactly when the task has a rule."""
        rule = settings.get("run_if", "succeeded")
        hint = hints.get(param)
        if rule == "succeeded" and (hint is None or type(hint) is type):
            # perf: a plain class is no Outcome, and is what a dependency usually says.
            from taskrun.outcome import Outcome

            if hint is not Outcome:
                return
        from taskrun.outcome import Outcome

        is_outcome = hint is Outcome or typing.get_origin(hint) is Outcome
        if rule != "succeeded" and hint is not None and not is_outcome:
            raise DefinitionError(
                f"{label}: with run_if={rule!r} parameter '{param}' receives an Outcome"
                f" (how the upstream ended), not its product; annotate it as"
                f" '{param}: Outcome[...]' (from taskrun import Outcome)"
            )
        if rule == "succeeded" and is_outcome:
            raise DefinitionError(
                f"{label}: parameter '{param}' is annotated Outcome, which only tasks with"
                ' a trigger rule receive; add run_if="always" (or "failed") to @task,'
                " or annotate it with the product's type"
            )

    def _option(self, p: Any, annotation: Any, label: str) -> OptionSpec:
        """The spec of one option; DefinitionError when its type or default is wrong."""
        try:
            otype = resolve_annotation(annotation)
        except UnsupportedAnnotation as exc:
            raise DefinitionError(f"{label}: option '{p.name}': {exc}") from None
        default = MISSING if p.default is p.empty else p.default
        if default is not MISSING:
            if callable(default) and not isinstance(default, (type, TaskType)):
                raise DefinitionError(
                    f"{label}: option '{p.name}' has a callable default; defaults are"
                    " values, set the value itself"
                )
            try:
                default = otype.check(default)
            except TypeCheckError as exc:
                raise DefinitionError(
                    f"{label}: the default of option '{p.name}' fails its type"
                    f" {otype.name}: {exc.message}; change the default or the type"
                ) from None
        return OptionSpec(p.name, otype, default)

    def _unannotated(
        self, p: inspect.Parameter, label: str, deps: Sequence[tuple[str, str]]
    ) -> str:
        """The message for a parameter that is neither a dependency nor a typed option."""
        listed = {d for _, d in deps}
        task_name = next(
            (t for t in self._tasks if t not in listed and t.replace("-", "_") == p.name), None
        )
        if task_name is not None:
            return (
                f"{label}: parameter '{p.name}' names task '{task_name}', which is not in"
                f" deps=; add it (@task(deps=[{p.name}, ...])) to receive its product"
            )
        if p.default is not p.empty and type(p.default) in (int, float, str, bool):
            example = f"{p.name}: {type(p.default).__name__} = {p.default!r}"
            return (
                f"{label}: option '{p.name}' has no type annotation; every option needs one,"
                f" write '{example}'"
            )
        near = did_you_mean(p.name, [t for t in self._tasks if t not in listed])
        return (
            f"{label}: parameter '{p.name}' is named after no dependency and has no type"
            f" annotation{near}; annotate it (e.g. '{p.name}: int = 0') to make it an"
            " option, or add the task it names to deps="
        )

    def _read_deps(self, deps: Any, label: str) -> list[tuple[str, str]]:
        if isinstance(deps, Mapping):
            items = list(deps.items())
        elif isinstance(deps, (list, tuple)):
            items = [(None, d) for d in deps]
        else:
            raise DefinitionError(
                f"{label}: deps= must be a list of tasks or a dict of parameter -> task"
                f" (got {type(deps).__name__})"
            )
        out: list[tuple[str, str]] = []
        params: set[str] = set()  # perf: sets, not a scan of `out` per dependency
        names: set[str] = set()
        for param, dep in items:
            if isinstance(dep, str):
                obj = f"the task object {dep}" if dep.isidentifier() else "the task object"
                raise DefinitionError(
                    f"{label}: dependency {dep!r} is a string; pass {obj} itself"
                    " (defined above this task)"
                )
            try:
                dep_name = self._by_fn.get(dep) or self._broken.get(dep)
            except TypeError:  # unhashable: a list inside the list, a dict, ...
                dep_name = None
            if dep_name is None:
                shown = getattr(dep, "__name__", repr(dep))
                hint = did_you_mean(str(shown), self._tasks)
                raise DefinitionError(
                    f"{label}: dependency '{shown}' is not a registered task{hint};"
                    " decorate it with @task (in the same task file, above this task)"
                )
            param = param if param is not None else dep_name.replace("-", "_")
            if not isinstance(param, str) or not param.isidentifier() or keyword.iskeyword(param):
                raise DefinitionError(
                    f"{label}: {param!r} cannot name a parameter for dependency '{dep_name}';"
                    " use deps={'valid_name': task}"
                )
            if param in params:
                raise DefinitionError(
                    f"{label}: two dependencies are passed to parameter '{param}';"
                    " rename one with deps={'other_name': task}"
                )
            if dep_name in names:
                raise DefinitionError(f"{label}: dependency '{dep_name}' is listed twice")
            params.add(param)
            names.add(dep_name)
            out.append((param, dep_name))
        return out

    @staticmethod
    def _hints(fn: Callable[..., Any], label: str) -> dict[str, Any]:
        annotations = getattr(fn, "__annotations__", None) or {}
        if not any(isinstance(a, str) for a in annotations.values()):
            # perf: nothing to evaluate; typing.get_type_hints would only copy the dict
            # (resolve_annotation maps None to NoneType itself).
            return dict(annotations)
        try:
            return typing.get_type_hints(fn)
        except NameError:
            # With `from __future__ import annotations`, a task defined inside a function
            # (a test, typically) names types that live in that function's locals: the
            # frame the decorator was applied in.
            frame = _caller_frame()
            if frame is None:
                raise
            try:
                return typing.get_type_hints(fn, localns=dict(frame.f_locals))
            except Exception as exc:  # noqa: BLE001 - annotations are user code
                raise DefinitionError(
                    f"{label}: its annotations could not be evaluated ({exc}); define the"
                    " types used in annotations before the task"
                ) from None
        except Exception as exc:  # noqa: BLE001 - a forward reference to nothing, and friends
            raise DefinitionError(
                f"{label}: its annotations could not be evaluated ({exc}); define the types"
                " used in annotations before the task"
            ) from None

    @staticmethod
    def _read_settings(kwargs: Mapping[str, Any], label: str) -> dict[str, Any]:
        def strings(key: str) -> tuple[str, ...]:
            value = kwargs.get(key, ())
            if isinstance(value, str):
                raise DefinitionError(
                    f"{label}: {key}= must be a list of strings, not one string;"
                    f" write {key}=[{value!r}]"
                )
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) and v for v in value
            ):
                raise DefinitionError(
                    f"{label}: {key}= must be a list of non-empty strings (got {value!r});"
                    f" write e.g. {key}=['NAME']"
                )
            return tuple(value)

        out: dict[str, Any] = {k: strings(k) for k in ("inputs", "outputs", "env")}
        for key in ("inputs", "outputs"):
            for pattern in out[key]:
                if key == "inputs" and pattern.startswith(("/", "@")):
                    continue  # outside the project: checked against [tool.taskrun] external
                if pattern.startswith("/") or ".." in pattern.split("/"):
                    raise DefinitionError(
                        f"{label}: {key} pattern {pattern!r} leaves the project; use a path"
                        " relative to the project root without '..'"
                    )
        version = kwargs.get("version")
        if version is not None:
            if not isinstance(version, (str, int)) or isinstance(version, bool):
                raise DefinitionError(
                    f"{label}: version= must be a str or int (got {version!r});"
                    ' write e.g. version="2"'
                )
            version = str(version)
        cache = kwargs.get("cache", True)
        if not isinstance(cache, bool):
            raise DefinitionError(f"{label}: cache= must be True or False (got {cache!r})")
        if not cache and version is not None:
            raise DefinitionError(
                f"{label}: version= and cache=False contradict each other (version= only"
                " matters for cached results); drop one of them"
            )
        if not cache and out["outputs"]:
            raise DefinitionError(
                f"{label}: outputs= and cache=False contradict each other (outputs are"
                " stored in and restored from the cache); drop one of them"
            )
        retries = kwargs.get("retries", 0)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise DefinitionError(
                f"{label}: retries= must be a whole number >= 0 (got {retries!r});"
                " write e.g. retries=2, or leave it out for no retry"
            )
        timeout = kwargs.get("timeout")
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0
        ):
            raise DefinitionError(
                f"{label}: timeout= must be a number of seconds above 0 (got {timeout!r});"
                " write e.g. timeout=60, or leave it out for no limit"
            )
        return {
            **out,
            "version": version,
            "cache": cache,
            "retries": retries,
            "timeout": float(timeout) if timeout is not None else None,
        }

    # -- queries ---------------------------------------------------------------------
    @property
    def tasks(self) -> Mapping[str, TaskSpec]:
        """Every task by name, in definition order (which is a topological order)."""
        return pytypes.MappingProxyType(self._tasks)

    @property
    def types(self) -> Mapping[str, DefinedType]:
        return pytypes.MappingProxyType(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task: str | Callable[..., Any]) -> TaskSpec:
        """The spec of a task, by name or by function; UsageError with a hint if unknown."""
        name = task if isinstance(task, str) else self._by_fn.get(task)
        if name is None or name not in self._tasks:
            shown = task if isinstance(task, str) else getattr(task, "__name__", repr(task))
            hint = did_you_mean(str(shown), self._tasks)
            raise UsageError(f"unknown task '{shown}'{hint}")
        return self._tasks[name]

    def name_of(self, task: str | Callable[..., Any]) -> str:
        return self.get(task).name

    @property
    def graph(self) -> Graph:
        from taskrun.graph import Graph

        specs = list(self._tasks.values())
        if self._graph is not None:
            built_from, graph = self._graph
            if len(built_from) == len(specs) and all(
                a is b for a, b in zip(built_from, specs, strict=True)
            ):
                return graph
        mapped = {
            n: next(d.task for d in s.deps if d.param == s.map)
            for n, s in self._tasks.items()
            if s.map is not None
        }
        graph = Graph({n: tuple(d.task for d in s.deps) for n, s in self._tasks.items()}, mapped)
        self._graph = (specs, graph)
        return graph

    def topological_order(self) -> list[str]:
        return self.graph.topological_order()

    def upstream(self, *tasks: str | Callable[..., Any]) -> set[str]:
        return self.graph.upstream([self.name_of(t) for t in tasks])

    def downstream(self, *tasks: str | Callable[..., Any]) -> set[str]:
        return self.graph.downstream([self.name_of(t) for t in tasks])

    def subgraph(self, *targets: str | Callable[..., Any]) -> list[str]:
        """The tasks ``targets`` need, themselves included, in topological order."""
        return self.graph.subgraph([self.name_of(t) for t in targets])

    # -- overrides -------------------------------------------------------------------
    @contextlib.contextmanager
    def override(
        self,
        task: str | Callable[..., Any],
        replacement: Callable[..., Any],
        *,
        deps: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None = None,
    ) -> Iterator[TaskSpec]:
        """Swap a task's implementation (for tests) while keeping its contract.

        The replacement must take the same options (names and types; its defaults do not
        matter, the run passes the original's values) and return the same product type.
        Its dependencies are the original's that it still takes a parameter for (an
        upstream it no longer needs is dropped from the plan and does not run), or exactly
        ``deps=`` when given (other upstream tasks). Settings (outputs, retries, run_if,
        ...) stay the original's; the fingerprint marks the override, so its results never
        mix with the real task's in the cache.
        """
        with self.override_many({task: replacement}, deps={task: deps} if deps else None) as s:
            yield s[0]

    @contextlib.contextmanager
    def override_many(
        self,
        replacements: Mapping[Any, Callable[..., Any]],  # task (name or function) -> fn
        *,
        deps: Mapping[Any, Any] | None = None,
    ) -> Iterator[list[TaskSpec]]:
        """:meth:`override` for several tasks at once (a subgraph swap); all or none apply."""
        originals = [self.get(task) for task in replacements]
        swapped = [
            self._replacement_spec(original, fn, (deps or {}).get(task))
            for original, (task, fn) in zip(originals, replacements.items(), strict=True)
        ]
        saved_by_fn = dict(self._by_fn)
        for spec in swapped:
            self._tasks[spec.name] = spec
            # A replacement answers to its task's name while it stands in, so a later
            # (nested) override or a deps= list can name the fake as well as the original.
            self._by_fn.setdefault(spec.fn, spec.name)
        try:
            yield swapped
        finally:
            for original in originals:
                self._tasks[original.name] = original
            self._by_fn = saved_by_fn

    def _replacement_spec(
        self, original: TaskSpec, replacement: Callable[..., Any], deps: Any
    ) -> TaskSpec:
        probe = Registry()
        probe._by_fn = dict(self._by_fn)
        probe._tasks = dict(self._tasks)
        shown = getattr(replacement, "__qualname__", repr(replacement))
        if deps is None:
            try:
                params = set(_signature(replacement).parameters)
            except (TypeError, ValueError):
                params = set()
            deps = {
                d.param: self._tasks[d.task].fn
                for d in original.deps
                if d.param in params and d.task in self._tasks
            }
        kwargs: dict[str, Any] = {"name": original.name, "deps": deps, "run_if": original.run_if}
        if original.map is not None:  # the mapped-over upstream stays mapped
            upstream = next(d.task for d in original.deps if d.param == original.map)
            if isinstance(deps, Mapping):
                kwargs["deps"] = {k: v for k, v in deps.items() if k != original.map}
            kwargs["map"] = {original.map: self._tasks[upstream].fn}
        try:
            new = probe._build_spec(replacement, kwargs)
        except DefinitionError as exc:
            raise DefinitionError(
                f"override of task '{original.name}' ({original.where}) by {shown!r}: {exc.message}"
            ) from None
        below = self.graph.downstream([original.name]) | {original.name}
        if below & {d.task for d in new.deps}:
            raise DefinitionError(
                f"override of task '{original.name}' ({original.where}) by {shown!r}: it"
                " depends on a task downstream of itself; that would be a cycle"
            )
        problems = _contract_changes(original, new)
        if problems:
            raise DefinitionError(
                f"override of task '{original.name}' ({original.where}) by {shown!r} breaks"
                " its contract: "
                + "; ".join(problems)
                + "; give the replacement the same options and return annotation"
            )
        module = getattr(replacement, "__module__", None) or "?"
        return replace(
            original,
            fn=replacement,
            doc=new.doc or original.doc,
            deps=new.deps,
            override=f"{module}:{shown}",
            map=new.map,
            generator=new.generator,
        )

    # -- activation ------------------------------------------------------------------
    @contextlib.contextmanager
    def activate(self) -> Iterator[Registry]:
        """Make this the registry that module-level ``@task`` and ``define_type`` use."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)


def _defined_twice(name: str, first: str, again: str) -> DefinitionError:
    return DefinitionError(
        f"task '{name}' is defined twice: first at {first}, again at {again};"
        " rename one with @task(name=...)"
    )


def _contract_changes(old: TaskSpec, new: TaskSpec) -> list[str]:
    problems = []
    old_opts = {o.name: o for o in old.options}
    new_opts = {o.name: o for o in new.options}
    for name in sorted(old_opts.keys() - new_opts.keys()):
        problems.append(f"option '{name}' is missing")
    for name in sorted(new_opts.keys() - old_opts.keys()):
        problems.append(f"option '{name}' is new")
    for name in sorted(old_opts.keys() & new_opts.keys()):
        a, b = old_opts[name], new_opts[name]
        # Defaults may differ: the run passes every option's value, taken from the
        # original's defaults, so a fake needs the names and types, nothing more.
        if a.type.name != b.type.name:
            problems.append(f"option '{name}' has type {b.type.name}, not {a.type.name}")
    if old.product.name != new.product.name:
        problems.append(f"it returns {new.product.name}, not {old.product.name}")
    return problems


default_registry = Registry()
_active: contextvars.ContextVar[Registry] = contextvars.ContextVar(
    "taskrun_registry", default=default_registry
)


def active_registry() -> Registry:
    """The registry that ``@task`` and ``define_type`` currently register into."""
    return _active.get()


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    *,
    name: str | None = None,
    deps: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] = (),
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    env: Sequence[str] = (),
    version: str | int | None = None,
    cache: bool = True,
    retries: int = 0,
    timeout: float | None = None,
    retry_delay: float = 0.0,
    retry_backoff: float = 1.0,
    retry_jitter: float = 0.0,
    retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
    run_if: Literal["succeeded", "failed", "always"] = "succeeded",
    when: Callable[..., Any] | None = None,
    executor: Literal["inline", "thread", "process", "dask"] | None = None,
    map: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]] | None = None,
) -> Callable[[F], F]: ...


def task(fn: Any = None, /, **kwargs: Any) -> Any:
    """Register a task in the active registry (see :meth:`Registry.task`)."""
    if fn is not None and not kwargs:
        return _active.get().task(fn)
    return _active.get().task(fn, **kwargs) if fn is not None else _active.get().task(**kwargs)


def define_type(
    name: str,
    parent: Any,
    predicate: Callable[[Any], bool] | None = None,
    *,
    doc: str = "",
    parse: Callable[[str], Any] | None = None,
) -> DefinedType:
    """Define a named type in the active registry (see :meth:`Registry.define_type`)."""
    return _active.get().define_type(name, parent, predicate, doc=doc, parse=parse)


if typing.TYPE_CHECKING:
    from taskrun.graph import Graph
