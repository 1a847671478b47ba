"""Types: text round trips, conversions, and rejection messages that name the type."""

# Hypothesis tests run without a deadline: a busy shared CI machine must not make them flaky.

import enum
import math
import pathlib
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import Color, Swapped, typed_values

from taskrun.errors import TypeCheckError
from taskrun.files import Dir, File
from taskrun.registry import Registry, define_type, task
from taskrun.types import (
    DefinedType,
    UnsupportedAnnotation,
    resolve_annotation,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type, with NaN equal to NaN (at any depth)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- round trips -------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_values())
def test_every_accepted_value_round_trips_through_text(pair: tuple[Any, Any]) -> None:
    """parse(format(v)) == v for every built-in type, nested ones included."""
    annotation, value = pair
    t = resolve_annotation(annotation)
    value = t.check(value)
    assert same(t.parse(t.format(value)), value)


@settings(deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_accepts_inf_and_nan_and_round_trips_them(value: float) -> None:
    """inf, -inf and nan are floats: accepted, and NaN comes back as NaN."""
    t = resolve_annotation(float)
    assert same(t.parse(t.format(value)), value)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e300", "-0.0"])
def test_float_parses_special_spellings(text: str) -> None:
    """The text forms Python writes for special floats are read back."""
    assert same(resolve_annotation(float).parse(text), float(text))


@pytest.mark.parametrize("value", ["none", "None", "NULL", " none ", "\\none", "\\", ""])
def test_str_or_none_keeps_strings_that_read_as_none(value: str) -> None:
    """The string 'none' is a str | None value distinct from None."""
    t = resolve_annotation(str | None)
    assert t.parse(t.format(value)) == value


def test_none_text_is_none_for_an_optional() -> None:
    """'none' (any case) and 'null' parse to None for T | None."""
    t = resolve_annotation(int | None)
    assert [t.parse(x) for x in ("none", "NONE", "null", "3")] == [None, None, None, 3]


@settings(deadline=None)
@given(st.binary())
def test_bytes_round_trip_including_ones_that_look_like_hex(value: bytes) -> None:
    """Binary, UTF-8 and 'hex:'-prefixed bytes all come back unchanged."""
    t = resolve_annotation(bytes)
    assert t.parse(t.format(value)) == value
    assert t.parse(t.format(b"hex:00" + value)) == b"hex:00" + value


def test_enum_is_read_by_member_name_even_when_values_collide() -> None:
    """An Enum whose values are the other members' names still reads names."""
    t = resolve_annotation(Swapped)
    assert t.parse("a") is Swapped.a
    assert t.format(Swapped.b) == "b"


def test_defined_type_round_trips_through_its_parent() -> None:
    """A define_type type has its parent's text form."""
    reg = Registry()
    even = reg.define_type("Even", list[int], lambda v: all(x % 2 == 0 for x in v))
    assert even.parse(even.format([2, 4])) == [2, 4]


# -- conversions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "text", "value"),
    [
        (int, " 42 ", 42),
        (float, "3", 3.0),
        (bool, "yes", True),
        (bool, "Off", False),
        (bytes, "hex:00ff", b"\x00\xff"),
        (list[int], "1, 2,3", [1, 2, 3]),
        (list[int], "", []),
        (list[int], "[1, 2]", [1, 2]),
        (tuple[str, ...], "a,b", ("a", "b")),
        (dict[str, int], "a=1, b=2", {"a": 1, "b": 2}),
        (dict[str, int], '{"a": 1}', {"a": 1}),
        (Literal["plain", "md"], "md", "md"),
        (Literal[1, 2], "2", 2),
        (Color, "green", Color.green),
        (pathlib.Path, "/etc/hosts", pathlib.Path("/etc/hosts")),
    ],
)
def test_command_line_text_parses_into_the_type(annotation: Any, text: str, value: Any) -> None:
    """The short text forms a user types on the command line."""
    assert same(resolve_annotation(annotation).parse(text), value)


def test_float_option_takes_an_int_value() -> None:
    """An int is a valid float (PEP 484), converted to float."""
    assert same(resolve_annotation(float).check(3), 3.0)


def test_file_and_dir_values_come_back_as_file_and_dir() -> None:
    """Checking a str or Path gives the File/Dir subclass."""
    assert type(resolve_annotation(File).check("a/b.txt")) is File
    assert type(resolve_annotation(Dir).check(pathlib.Path("src"))) is Dir


def test_file_made_relative_to_a_root(tmp_path: pathlib.Path) -> None:
    """An absolute File inside the root becomes relative to it."""
    value = resolve_annotation(File).check(tmp_path / "a" / "b.txt", root=tmp_path)
    assert value == File("a/b.txt")


def test_tuple_type_gives_a_tuple() -> None:
    """tuple[T, ...] converts a list to a tuple."""
    assert resolve_annotation(tuple[int, ...]).check([1, 2]) == (1, 2)


# -- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "value", "words"),
    [
        (int, "abc", ["'abc'", "int"]),
        (int, True, ["int", "bool"]),
        (int, 1.5, ["int", "float"]),
        (float, "x", ["'x'", "float"]),
        (str, 3, ["str", "int"]),
        (bool, "maybe", ["'maybe'", "bool", "true/false"]),
        (bool, 1, ["bool"]),
        (bytes, "hex:zz", ["hex digits"]),
        (File, "", ["File", "empty"]),
        (File, "/abs/x", ["File", "relative to the project root"]),
        (File, 3, ["File", "int"]),
        (Literal["plain", "md"], "mdd", ["'mdd'", "'plain', 'md'", "did you mean 'md'"]),
        (Color, "gren", ["gren", "red, green, blue", "did you mean 'green'"]),
        (list[int], "1,x", ["item 1", "'x'", "int"]),
        (list[int], "[1,", ["list[int]", "JSON"]),
        (dict[str, int], "a=1,b", ["dict[str, int]", "KEY=VALUE", "'b' has no '='"]),
        (dict[str, int], "a=x", ["key 'a'", "'x'", "int"]),
        (int | None, "x", ["'x'", "int"]),
    ],
)
def test_bad_text_is_rejected_naming_the_type(
    annotation: Any, value: Any, words: list[str]
) -> None:
    """Rejections say what the value is and which type it failed."""
    t = resolve_annotation(annotation)
    with pytest.raises(TypeCheckError) as info:
        t.parse(value) if isinstance(value, str) else t.check(value)
    for word in words:
        assert word in info.value.message


def test_a_defined_type_reports_its_doc_and_name() -> None:
    """A failed predicate names the defined type and quotes its doc."""
    reg = Registry()
    positive = reg.define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")
    with pytest.raises(TypeCheckError, match=r"0 is not an integer above 0 \(PositiveInt\)"):
        positive.parse("0")


def test_a_raising_predicate_is_a_failed_check_that_says_why() -> None:
    """A predicate that raises fails the value and shows the exception."""
    reg = Registry()
    odd = reg.define_type("Odd", int, lambda v: 1 / 0)
    with pytest.raises(TypeCheckError, match=r"Odd.*ZeroDivisionError"):
        odd.check(3)


def test_parent_predicate_is_checked_before_own() -> None:
    """A type built on a defined type checks the parent's predicate first."""
    reg = Registry()
    seen: list[str] = []

    def positive(v: int) -> bool:
        seen.append("parent")
        return v > 0

    def even(v: int) -> bool:
        seen.append("own")
        return v % 2 == 0

    parent = reg.define_type("Positive", int, positive, doc="above 0")
    child = reg.define_type("PositiveEven", parent, even, doc="even")
    with pytest.raises(TypeCheckError, match="above 0"):
        child.check(-2)
    assert seen == ["parent"]
    assert child.check(4) == 4
    assert seen == ["parent", "parent", "own"]


def test_custom_parse_is_used_for_text_and_then_checked() -> None:
    """define_type(parse=...) reads text; the result still passes parent and predicate."""
    reg = Registry()
    kib = reg.define_type("KiB", int, lambda v: v >= 0, parse=lambda s: int(s.rstrip("k")) * 1024)
    assert kib.parse("2k") == 2048
    with pytest.raises(TypeCheckError, match="KiB's parse raised"):
        kib.parse("lots")


def test_defined_type_is_callable_as_a_check() -> None:
    """PositiveInt(3) == 3: a defined type checks a value when called."""
    reg = Registry()
    positive = reg.define_type("PositiveInt", int, lambda v: v > 0)
    assert isinstance(positive, DefinedType)
    assert positive(3) == 3
    with pytest.raises(TypeCheckError):
        positive(0)


# -- annotations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "words"),
    [
        (int | str, ["int | str", "only 'T | None'", "define_type"]),
        (int | str | None, ["only 'T | None'"]),
        (dict[int, str], ["dict keys must be str"]),
        (tuple[int, str], ["tuple[T, ...]"]),
        (list, ["'list' needs its item type", "list[str]"]),
        (dict, ["dict[str, int]"]),
        (complex, ["is not a taskrun type", "define_type"]),
        (Literal[1, "1"], ["same text form", "'1'"]),
    ],
)
def test_unsupported_annotations_say_what_to_use(annotation: Any, words: list[str]) -> None:
    """An annotation taskrun cannot parse is refused with the supported alternatives."""
    with pytest.raises(UnsupportedAnnotation) as info:
        resolve_annotation(annotation)
    for word in words:
        assert word in str(info.value)


def test_type_names_read_like_annotations() -> None:
    """Names shown by `taskrun list` follow the annotation."""

    class Mode(enum.Enum):
        fast = 1

    names = {
        ann: resolve_annotation(ann).name
        for ann in (list[File], tuple[int, ...], dict[str, float], str | None, Mode)
    }
    assert names == {
        list[File]: "list[File]",
        tuple[int, ...]: "tuple[int, ...]",
        dict[str, float]: "dict[str, float]",
        str | None: "str | None",
        Mode: "Mode",
    }
    assert resolve_annotation(Literal["plain", "md"]).name == "{plain|md}"


def test_file_outside_the_root_is_a_type_error(tmp_path: pathlib.Path) -> None:
    """A File leading out of the root fails its type, naming the path."""
    with pytest.raises(TypeCheckError, match="outside the project root"):
        resolve_annotation(File).check("../x", root=tmp_path)


def test_defined_type_or_none_is_optional(registry: Registry) -> None:
    """`Duration | None` works in an annotation like `float | None`."""
    duration = define_type("Duration", float, lambda v: v >= 0, doc="seconds, 0 or more")

    @task
    def wait(limit: duration | None = None) -> None:  # type: ignore[valid-type]
        return None

    option = registry.get("wait").options[0]
    assert option.type.name == "Duration | None"
    assert option.type.parse("none") is None
    assert option.type.parse("2.5") == 2.5
    with pytest.raises(TypeCheckError, match="seconds, 0 or more"):
        option.type.parse("-1")
