"""Option and product types: parse from text, check a value, format back to text.

A :class:`TaskType` converts a value the way click's ``ParamType.convert`` does and fails
with a :class:`~taskrun.errors.TypeCheckError`. Types form a chain: a type made by
:func:`define_type` checks its parent first, then its own predicate.

Every type has a text form (used on the command line) that round-trips::

    t.parse(t.format(v)) == v        for every v that t.check accepts

``float`` accepts ``inf``, ``-inf`` and ``nan`` (text ``inf``, ``-inf``, ``nan``): they are
floats a computation can return, and the fingerprint encodes every NaN the same way. A
predicate decides whether an option may take them (``0 <= v <= 100`` rejects NaN). NaN
round-trips as NaN, though ``nan != nan``.
"""

from __future__ import annotations

import enum
import json
import pathlib
import types as pytypes
import typing
from collections.abc import Callable, Mapping
from typing import Any

from taskrun.errors import TypeCheckError, UsageError
from taskrun.files import Dir, File

__all__ = [
    "BUILTIN_TYPES",
    "ClassType",
    "DefinedType",
    "TaskType",
    "class_name",
    "module_name",
    "register_module_alias",
    "resolve_annotation",
]


class UnsupportedAnnotation(Exception):
    """Raised by resolve_annotation; the registry turns it into a DefinitionError."""


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TaskType:
    """The base of every type. Subclasses override ``_convert``, ``_parse`` and ``format``."""

    name: str = "value"
    doc: str = ""
    #: False for types whose values cannot be written on the command line (products only).
    text_form: bool = True
    #: What to write instead, when an option is given a type without a text form.
    hint: str = ""

    def check(self, value: Any, *, root: pathlib.Path | None = None) -> Any:
        """Return ``value`` converted to this type, or raise :class:`TypeCheckError`."""
        return self._convert(value, root)

    def parse(self, text: str, *, root: pathlib.Path | None = None) -> Any:
        """Parse the text form (command line) into a checked value."""
        return self.check(self._parse(text), root=root)

    def format(self, value: Any) -> str:
        """The text form of ``value``: ``parse(format(v)) == v``."""
        return str(value)

    def __call__(self, value: Any) -> Any:
        """Check a value against this type (``PositiveInt(3) == 3``)."""
        return self.check(value)

    def __or__(self, other: Any) -> TaskType:
        """``PositiveInt | None`` in an annotation, like ``int | None``."""
        if other is None or other is type(None):
            return OptionalType(self)
        return NotImplemented

    def __ror__(self, other: Any) -> TaskType:
        if other is None or other is type(None):
            return OptionalType(self)
        return NotImplemented

    def __repr__(self) -> str:
        return f"<type {self.name}>"

    # -- for subclasses ---------------------------------------------------------------
    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        return value

    def _parse(self, text: str) -> Any:
        return text

    def fail(self, value: object, expected: str | None = None) -> typing.NoReturn:
        raise TypeCheckError(
            f"{_short(value)} is not {expected or 'a valid ' + self.name}", type_name=self.name
        )


class _Scalar(TaskType):
    def __init__(self, name: str, pytype: type, doc: str) -> None:
        self.name = name
        self.pytype = pytype
        self.doc = doc

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        # bool is an int subclass; an option typed int must not silently accept True.
        if isinstance(value, bool) and self.pytype is not bool:
            self.fail(value, f"{self._article()} (got a bool)")
        if isinstance(value, self.pytype):
            return value
        if self.pytype is float and isinstance(value, int):
            return float(value)
        if self.pytype is bytes and isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        self.fail(value, f"{self._article()} (got {type(value).__name__})")
        return None

    def _article(self) -> str:
        return f"an {self.name}" if self.name[0] in "aeiou" else f"a {self.name}"

    def _parse(self, text: str) -> Any:
        try:
            if self.pytype is int:
                return int(text.strip())
            if self.pytype is float:
                return float(text.strip())
        except ValueError:
            self.fail(text, self._article())
        if self.pytype is bytes:
            if text.startswith("hex:"):
                try:
                    return bytes.fromhex(text[4:])
                except ValueError:
                    self.fail(text, "hex digits after 'hex:'")
            return text.encode("utf-8")
        return text

    def format(self, value: Any) -> str:
        if self.pytype is float:
            return repr(value)
        if self.pytype is bytes:
            data: bytes = value
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return "hex:" + data.hex()
            return "hex:" + data.hex() if text.startswith("hex:") else text
        return str(value)


class _Bool(TaskType):
    name = "bool"
    doc = "true/false, yes/no, on/off, 1/0"
    _TRUE = frozenset({"true", "yes", "on", "1", "y", "t"})
    _FALSE = frozenset({"false", "no", "off", "0", "n", "f"})

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if isinstance(value, bool):
            return value
        self.fail(value, "a bool (true or false)")
        return None

    def _parse(self, text: str) -> Any:
        word = text.strip().lower()
        if word in self._TRUE:
            return True
        if word in self._FALSE:
            return False
        self.fail(text, "a bool (true/false, yes/no, on/off, 1/0)")
        return None

    def format(self, value: Any) -> str:
        return "true" if value else "false"


class _PathType(TaskType):
    """``pathlib.Path``, ``File`` and ``Dir``. File and Dir are made relative to the root."""

    def __init__(self, name: str, pytype: type[pathlib.Path], doc: str) -> None:
        self.name = name
        self.pytype = pytype
        self.doc = doc

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if isinstance(value, str):
            if not value:
                self.fail(value, f"a {self.name} (the path is empty)")
            value = pathlib.Path(value)
        if not isinstance(value, pathlib.PurePath):
            self.fail(value, f"a {self.name} path (got {type(value).__name__})")
        if self.pytype is pathlib.Path:
            return value if type(value) is type(pathlib.Path()) else pathlib.Path(value)
        if root is not None:
            from taskrun.files import project_relative

            try:
                value = project_relative(value, root)
            except UsageError as exc:  # outside the root: a value this type refuses
                raise TypeCheckError(exc.message, type_name=self.name) from None
        elif value.is_absolute():
            self.fail(value, f"a {self.name} relative to the project root")
        return value if type(value) is self.pytype else self.pytype(value)

    def format(self, value: Any) -> str:
        path: pathlib.PurePath = value
        return path.as_posix()


class LiteralType(TaskType):
    """One of a fixed set of values (``Literal["plain", "md"]``)."""

    def __init__(self, choices: tuple[Any, ...]) -> None:
        # The command line gives text; two choices with one text form (1 and "1") could
        # not be told apart, and the round trip would silently change the value.
        seen: dict[str, Any] = {}
        for choice in choices:
            text = str(choice)
            if text in seen:
                raise UnsupportedAnnotation(
                    f"Literal choices {seen[text]!r} and {choice!r} have the same text form"
                    f" {text!r}; make every choice read differently"
                )
            seen[text] = choice
        self.choices = choices
        self.name = "{" + "|".join(str(c) for c in choices) + "}"
        self.doc = "one of " + ", ".join(repr(c) for c in choices)

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        for choice in self.choices:
            if type(choice) is type(value) and choice == value:
                return choice
        from taskrun.errors import did_you_mean

        hint = did_you_mean(str(value), [str(c) for c in self.choices])
        self.fail(value, self.doc + hint)
        return None

    def _parse(self, text: str) -> Any:
        for choice in self.choices:
            if str(choice) == text or (
                isinstance(choice, bool) and text.lower() == str(choice).lower()
            ):
                return choice
        return text  # _convert reports it, with "did you mean"


class EnumType(TaskType):
    """An ``enum.Enum`` subclass, by member name on the command line."""

    def __init__(self, enum_cls: type[enum.Enum]) -> None:
        self.enum_cls = enum_cls
        self.name = enum_cls.__name__
        self.doc = "one of " + ", ".join(m.name for m in enum_cls)

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if isinstance(value, self.enum_cls):
            return value
        if isinstance(value, str) and value in self.enum_cls.__members__:
            return self.enum_cls[value]
        try:
            return self.enum_cls(value)
        except ValueError:
            from taskrun.errors import did_you_mean

            hint = did_you_mean(str(value), list(self.enum_cls.__members__))
            self.fail(value, self.doc + hint)

    def format(self, value: Any) -> str:
        return str(value.name)


class _Container(TaskType):
    """Shared text form for list/tuple/dict: JSON, or the short comma form."""

    def _items_from_text(self, text: str) -> Any:
        stripped = text.strip()
        if stripped.startswith(("[", "{")):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError as exc:
                self.fail(text, f"a {self.name} in JSON ({exc.msg} at column {exc.colno})")
        return None


class ListType(_Container):
    """``list[T]`` or ``tuple[T, ...]``. Text: ``a,b,c`` or a JSON list."""

    def __init__(self, item: TaskType, container: type = list) -> None:
        self.item = item
        self.container = container
        self.name = f"{container.__name__}[{item.name}{', ...' if container is tuple else ''}]"
        self.doc = f"a comma-separated or JSON list of {item.name}"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if not isinstance(value, (list, tuple)):
            self.fail(value, f"a {self.name} (got {type(value).__name__})")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item.check(v, root=root))
            except TypeCheckError as exc:
                raise TypeCheckError(f"item {i}: {exc.message}", type_name=self.name) from None
        return self.container(out)

    def parse(self, text: str, *, root: pathlib.Path | None = None) -> Any:
        items = self._items_from_text(text)
        if items is None:
            items = [p.strip() for p in text.split(",")] if text.strip() else []
        if not isinstance(items, list):
            self.fail(text, f"a {self.name}")
        parsed = []
        for i, v in enumerate(items):
            try:
                parsed.append(self.item.parse(v, root=root) if isinstance(v, str) else v)
            except TypeCheckError as exc:
                raise TypeCheckError(f"item {i}: {exc.message}", type_name=self.name) from None
        return self.check(parsed, root=root)

    def format(self, value: Any) -> str:
        return json.dumps([_json_item(self.item, v) for v in value])


def _json_item(kind: TaskType, value: Any) -> Any:
    """An item of a container's JSON text form: numbers and booleans stay JSON numbers and
    booleans (``[1, 2, 3]``, not ``["1", "2", "3"]``); parse takes both forms."""
    finite = not isinstance(value, float) or (value == value and abs(value) != float("inf"))
    if isinstance(value, (bool, int, float)) and not isinstance(value, enum.Enum) and finite:
        return value
    return kind.format(value)


class DictType(_Container):
    """``dict[str, T]``. Text: ``k=v,k2=v2`` or a JSON object."""

    def __init__(self, value_type: TaskType) -> None:
        self.value_type = value_type
        self.name = f"dict[str, {value_type.name}]"
        self.doc = f"KEY=VALUE pairs or a JSON object of {value_type.name}"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if not isinstance(value, Mapping):
            self.fail(value, f"a {self.name} (got {type(value).__name__})")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.fail(k, "a str key")
            try:
                out[k] = self.value_type.check(v, root=root)
            except TypeCheckError as exc:
                raise TypeCheckError(f"key {k!r}: {exc.message}", type_name=self.name) from None
        return out

    def parse(self, text: str, *, root: pathlib.Path | None = None) -> Any:
        items = self._items_from_text(text)
        if items is None:
            items = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, val = part.partition("=")
                if not sep:
                    self.fail(text, f"a {self.name} written KEY=VALUE,... ({part!r} has no '=')")
                items[key.strip()] = val.strip()
        if not isinstance(items, dict):
            self.fail(text, f"a {self.name}")
        parsed = {}
        for k, v in items.items():
            try:
                parsed[k] = self.value_type.parse(v, root=root) if isinstance(v, str) else v
            except TypeCheckError as exc:
                raise TypeCheckError(f"key {k!r}: {exc.message}", type_name=self.name) from None
        return self.check(parsed, root=root)

    def format(self, value: Any) -> str:
        return json.dumps({k: _json_item(self.value_type, v) for k, v in value.items()})


class OptionalType(TaskType):
    """``T | None``. Text ``none`` is None; a backslash escapes a value that reads as none."""

    _NONE = ("none", "null")

    def __init__(self, inner: TaskType) -> None:
        self.inner = inner
        self.name = f"{inner.name} | None"
        self.doc = f"{inner.doc or inner.name}, or none"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        return None if value is None else self.inner.check(value, root=root)

    def parse(self, text: str, *, root: pathlib.Path | None = None) -> Any:
        if text.strip().lower() in self._NONE:
            return None
        if text.startswith("\\"):
            text = text[1:]
        return self.inner.parse(text, root=root)

    def format(self, value: Any) -> str:
        if value is None:
            return "none"
        text = self.inner.format(value)
        if text.strip().lower() in self._NONE or text.startswith("\\"):
            return "\\" + text
        return text


class DefinedType(TaskType):
    """A named type from :func:`define_type`: the parent's check, then a predicate."""

    def __init__(
        self,
        name: str,
        parent: TaskType,
        predicate: Callable[[Any], bool] | None = None,
        *,
        doc: str = "",
        parse: Callable[[str], Any] | None = None,
        defined_at: str = "",
    ) -> None:
        self.name = name
        self.parent = parent
        self.predicate = predicate
        self.doc = doc
        self.custom_parse = parse
        self.defined_at = defined_at

    def check(self, value: Any, *, root: pathlib.Path | None = None) -> Any:
        value = self.parent.check(value, root=root)
        if self.predicate is not None:
            try:
                ok = self.predicate(value)
            except Exception as exc:  # noqa: BLE001 - a raising predicate fails the check
                self.fail(value, f"{self._expected()} (its predicate raised {exc!r})")
            if not ok:
                self.fail(value, self._expected())
        return value

    def parse(self, text: str, *, root: pathlib.Path | None = None) -> Any:
        if self.custom_parse is None:
            return self.check(self.parent.parse(text, root=root), root=root)
        try:
            value = self.custom_parse(text)
        except Exception as exc:  # noqa: BLE001 - user's parse: its error is the reason
            self.fail(text, f"{self._expected()} ({self.name}'s parse raised {exc!r})")
        return self.check(value, root=root)

    def format(self, value: Any) -> str:
        return self.parent.format(value)

    def _expected(self) -> str:
        return f"{self.doc} ({self.name})" if self.doc else f"a valid {self.name}"

    def __repr__(self) -> str:
        return f"<type {self.name} ({self.parent.name})>"


class AnyType(TaskType):
    """No annotation on a product: anything goes, nothing is checked."""

    name = "any"
    text_form = False


class NoneType_(TaskType):
    """``-> None``: the task returns nothing."""

    name = "None"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if value is not None:
            self.fail(value, "None (the task is annotated '-> None')")
        return None


BUILTIN_TYPES: dict[Any, TaskType] = {
    int: _Scalar("int", int, "an integer"),
    float: _Scalar("float", float, "a number"),
    str: _Scalar("str", str, "text"),
    bytes: _Scalar("bytes", bytes, "bytes (text as UTF-8, or hex:...)"),
    bool: _Bool(),
    pathlib.Path: _PathType("Path", pathlib.Path, "a path"),
    File: _PathType("File", File, "a file relative to the project root"),
    Dir: _PathType("Dir", Dir, "a directory relative to the project root"),
}
ANY = AnyType()
NONE = NoneType_()


_MODULE_ALIASES: dict[str, str] = {}


def register_module_alias(private: str, shown: str) -> None:
    """Show the module ``private`` (the loader's internal name) as ``shown`` (``tasks``)."""
    _MODULE_ALIASES[private] = shown


def module_name(module: str) -> str:
    """A module name as the user wrote it: ``tasks``, not the loader's private name."""
    return _MODULE_ALIASES.get(module, module)


def class_name(cls: Any) -> str:
    """``tasks.Point``, ``pandas.DataFrame``-style name of a class, ``int`` for builtins."""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None)
    if qualname is None:
        return repr(cls)
    module = getattr(cls, "__module__", None) or ""
    if module == "builtins":
        return str(qualname)
    # Libraries define their classes in private submodules (pandas.core.frame); users
    # write the top-level name, which the class is re-exported under.
    top = module.partition(".")[0]
    if top in ("pandas", "numpy") and _exported(top, qualname, cls):
        module = top
    return f"{module_name(module)}.{qualname}"


def _exported(top: str, qualname: str, cls: Any) -> bool:
    import sys

    return getattr(sys.modules.get(top), qualname, None) is cls


class ClassType(TaskType):
    """A product annotated with a class: an ``isinstance`` check, no conversion."""

    text_form = False

    def __init__(self, cls: type, name: str | None = None, hint: str = "") -> None:
        self.cls = cls
        self.name = name or class_name(cls)
        self.doc = f"an instance of {self.name}"
        self.hint = hint

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if isinstance(value, self.cls):
            return value
        self.fail(value, f"a {self.name} (got {class_name(type(value))})")
        return None


class SetType(TaskType):
    """``set[T]`` / ``frozenset[T]`` products: the container, then every item."""

    text_form = False

    def __init__(self, item: TaskType, container: type) -> None:
        self.item = item
        self.container = container
        self.name = f"{container.__name__}[{item.name}]"
        self.hint = f"use list[{item.name}] for an option"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if not isinstance(value, (set, frozenset)):
            self.fail(value, f"a {self.name} (got {class_name(type(value))})")
        if self.item is ANY:
            return value
        try:
            items = [self.item.check(v, root=root) for v in value]
        except TypeCheckError as exc:
            raise TypeCheckError(f"an item: {exc.message}", type_name=self.name) from None
        return (
            value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
        )


class FixedTupleType(TaskType):
    """``tuple[A, B]`` products: a tuple of that length, each item its own type."""

    text_form = False

    def __init__(self, items: tuple[TaskType, ...]) -> None:
        self.items = items
        self.name = f"tuple[{', '.join(t.name for t in items)}]" if items else "tuple[()]"
        self.hint = "use tuple[T, ...] (one item type) for an option"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if not isinstance(value, tuple):
            self.fail(value, f"a {self.name} (got {class_name(type(value))})")
        if len(value) != len(self.items):
            self.fail(value, f"a {self.name} (got {len(value)} items, not {len(self.items)})")
        out = []
        for i, (t, v) in enumerate(zip(self.items, value, strict=True)):
            try:
                out.append(t.check(v, root=root))
            except TypeCheckError as exc:
                raise TypeCheckError(f"item {i}: {exc.message}", type_name=self.name) from None
        if all(a is b for a, b in zip(out, value, strict=True)):
            return value  # keep the user's tuple (a NamedTuple stays one)
        return tuple(out)


class MappingType(TaskType):
    """``dict[K, V]`` products with keys other than str: the mapping, keys and values."""

    text_form = False

    def __init__(self, key: TaskType, value: TaskType) -> None:
        self.key = key
        self.value = value
        self.name = f"dict[{key.name}, {value.name}]"
        self.hint = "dict keys must be str for an option (dict[str, T])"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        if not isinstance(value, Mapping):
            self.fail(value, f"a {self.name} (got {class_name(type(value))})")
        out = {}
        for k, v in value.items():
            try:
                out[self.key.check(k, root=root)] = self.value.check(v, root=root)
            except TypeCheckError as exc:
                raise TypeCheckError(f"key {k!r}: {exc.message}", type_name=self.name) from None
        return out


class UnionType(TaskType):
    """``X | Y`` products: the first member type that accepts the value."""

    text_form = False

    def __init__(self, members: tuple[TaskType, ...]) -> None:
        self.members = members
        self.name = " | ".join(m.name for m in members)
        self.hint = "only 'T | None' is an option type (define_type with parse= for more)"

    def _convert(self, value: Any, root: pathlib.Path | None) -> Any:
        problems = []
        for member in self.members:
            try:
                return member.check(value, root=root)
            except TypeCheckError as exc:
                problems.append(exc.message)
        self.fail(value, f"any of {self.name} ({'; '.join(problems)})")
        return None


def resolve_annotation(annotation: Any, *, product: bool = False) -> TaskType:
    """Map a Python annotation (or a TaskType) to a TaskType.

    For an option (the default) the type must have a text form, since its value may come
    from the command line; UnsupportedAnnotation says what to write instead. A product
    (``product=True``) may be of any kind: a class is an ``isinstance`` check.
    """
    resolved = _resolve(annotation, product=True)
    if product or _text_form(resolved):
        return resolved
    # The option-side messages: what is missing, and what to write.
    culprit = _no_text_part(resolved)
    if not (isinstance(culprit, ClassType) and not culprit.hint):
        _resolve(annotation, product=False)  # the specific message (unions, bare list...)
    shown = resolved.name
    hint = getattr(culprit, "hint", "")
    raise UnsupportedAnnotation(
        f"{shown!r} has no text form, so it cannot be an option (it is not a taskrun type"
        " that parses from the command line)"
        + (f"; {hint}" if hint else "")
        + f"; give it one with define_type('Name', {shown}, parse=<str -> value>),"
        " or have a task return it and receive it through deps="
    )


def _text_form(t: TaskType) -> bool:
    return _no_text_part(t) is None


def _no_text_part(t: TaskType) -> TaskType | None:
    """The part of ``t`` without a text form, or None when ``t`` has one."""
    if isinstance(t, DefinedType):
        return None if t.custom_parse is not None else _no_text_part(t.parent)
    if isinstance(t, (ListType, OptionalType)):
        inner = t.item if isinstance(t, ListType) else t.inner
        return _no_text_part(inner)
    if isinstance(t, DictType):
        return _no_text_part(t.value_type)
    return None if getattr(t, "text_form", True) else t


_BARE_CONTAINERS = (list, tuple, dict, set, frozenset)


def _resolve(annotation: Any, *, product: bool) -> TaskType:
    if isinstance(annotation, TaskType):
        return annotation
    if annotation is None or annotation is type(None):
        return NONE
    if annotation in BUILTIN_TYPES:
        return BUILTIN_TYPES[annotation]
    if product and (annotation is Any or isinstance(annotation, typing.TypeVar)):
        return ANY
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return EnumType(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _resolve(args[0], product=product)
    if product and isinstance(getattr(annotation, "__supertype__", None), type):
        return _resolve(annotation.__supertype__, product=product)  # typing.NewType
    if origin is typing.Literal:
        return LiteralType(args)
    if origin is list and len(args) == 1:
        return ListType(_resolve(args[0], product=product), list)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return ListType(_resolve(args[0], product=product), tuple)
    if origin is dict and len(args) == 2:
        if args[0] is not str:
            if product:
                return MappingType(_resolve(args[0], product=True), _resolve(args[1], product=True))
            raise UnsupportedAnnotation(f"dict keys must be str (got {args[0]!r})")
        return DictType(_resolve(args[1], product=product))
    if origin in (typing.Union, pytypes.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return OptionalType(_resolve(rest[0], product=product))
        if product:
            return UnionType(tuple(_resolve(a, product=True) for a in args))
        raise UnsupportedAnnotation(
            f"the union {annotation!r} is not supported; only 'T | None' is"
            " (define a type with define_type for anything else)"
        )
    if product:
        if origin in (set, frozenset) and len(args) == 1:
            return SetType(_resolve(args[0], product=True), origin)
        if origin is tuple:
            if args == ((),):  # tuple[()]
                args = ()
            return FixedTupleType(tuple(_resolve(a, product=True) for a in args))
        if annotation in _BARE_CONTAINERS:
            return ClassType(annotation, hint=_container_hint(annotation.__name__))
        if typing.is_typeddict(annotation) or _is_typeddict_like(annotation):
            return ClassType(dict, name=class_name(annotation))  # checked as the dict it is
        if isinstance(origin, type):  # Sequence[int], type[X], Callable[...]: the container
            return ClassType(origin, name=_alias_name(annotation))
        if isinstance(annotation, type):
            return ClassType(annotation)
    if origin is tuple:
        raise UnsupportedAnnotation(f"{annotation!r}: use tuple[T, ...] (one item type)")
    if annotation in (list, tuple, dict) or origin in (list, dict):
        shown = getattr(annotation, "__name__", None) or repr(annotation)
        raise UnsupportedAnnotation(
            f"{shown!r} needs its item type; write e.g. {_container_hint(shown)}"
        )
    if isinstance(annotation, str):
        raise UnsupportedAnnotation(f"the annotation {annotation!r} could not be evaluated")
    if product:
        raise UnsupportedAnnotation(
            f"{annotation!r} is not a type a product can be checked against; annotate the"
            " product with a class, a container of classes, a union, Any, or leave it out"
        )
    shown = class_name(annotation) if isinstance(annotation, type) else repr(annotation)
    raise UnsupportedAnnotation(
        f"{shown!r} is not a taskrun type that parses from the command line; use int, float,"
        " str, bool, bytes, Path, File, Dir, Literal, an Enum, list/tuple/dict of them,"
        " T | None, or define_type(..., parse=...)"
    )


def _container_hint(shown: str) -> str:
    examples = {
        "list": "list[str]",
        "tuple": "tuple[int, ...]",
        "dict": "dict[str, int]",
        "set": "list[str]",
        "frozenset": "list[str]",
    }
    return examples.get(shown, "list[str]")


def _alias_name(annotation: Any) -> str:
    text = repr(annotation)
    return text.replace("typing.", "").replace("collections.abc.", "")


def _is_typeddict_like(annotation: Any) -> bool:
    # typing_extensions.TypedDict on 3.10 is not seen by typing.is_typeddict.
    return (
        isinstance(annotation, type)
        and issubclass(annotation, dict)
        and hasattr(annotation, "__total__")
        and hasattr(annotation, "__annotations__")
    )


def parent_type(parent: Any) -> TaskType:
    """The TaskType for a ``define_type`` parent: any annotation, any class."""
    return resolve_annotation(parent, product=True)
