"""Hypothesis strategies shared by the tests: random DAGs and typed values.

``dags()`` draws ``{name: (deps, ...)}`` whose insertion order is *not* necessarily a
topological one, so graph code cannot lean on definition order to look right.
``typed_values()`` draws ``(annotation, value)`` for every built-in type, nested through
``list``/``tuple``/``dict``/``T | None``.
"""

from __future__ import annotations

import enum
import pathlib
import string
from typing import Any, Literal

from hypothesis import strategies as st

from taskrun.files import Dir, File

__all__ = [
    "LITERALS",
    "Color",
    "Swapped",
    "dags",
    "node_names",
    "path_segments",
    "scalar_types",
    "typed_values",
]


class Color(enum.Enum):
    """A plain enum."""

    red = 1
    green = 2
    blue = 3


class Swapped(enum.Enum):
    """Member values that read as the *other* member's name: names must win."""

    a = "b"
    b = "a"


LITERALS: tuple[Any, ...] = (
    Literal["plain", "md"],
    Literal[1, 2, 3],
    Literal[True, "maybe"],
    Literal["none", "x"],
)

# Task names as the registry allows them: letters, digits, _ and -.
node_names = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=8).filter(
    lambda s: s[0].isalpha() or s[0] == "_"
)


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 12) -> dict[str, tuple[str, ...]]:
    """A random DAG ``{node: deps}`` in a shuffled (non-topological) insertion order."""
    names = draw(st.lists(node_names, min_size=0, max_size=max_nodes, unique=True))
    deps: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(names):
        earlier = names[:i]
        chosen = (
            draw(st.lists(st.sampled_from(earlier), unique=True, max_size=4)) if earlier else []
        )
        deps[name] = tuple(chosen)
    order = draw(st.permutations(names))
    return {n: deps[n] for n in order}


# One path segment: no separator, no NUL, not "." or ".." (pathlib drops or keeps those in
# ways that are about pathlib, not about taskrun).
path_segments = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=6,
).filter(lambda s: s not in (".", ".."))


def _paths(kind: type[pathlib.Path], absolute: bool) -> st.SearchStrategy[pathlib.Path]:
    parts = st.lists(path_segments, min_size=1, max_size=4)
    if absolute:
        return parts.map(lambda p: kind("/", *p))
    return parts.map(lambda p: kind(*p))


def scalar_types() -> st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]:
    """``(annotation, values)`` for each non-container built-in type."""
    return st.sampled_from(
        [
            (int, st.integers()),
            (float, st.floats(allow_nan=True, allow_infinity=True)),
            (str, st.text()),
            (bool, st.booleans()),
            (bytes, st.binary()),
            (pathlib.Path, _paths(pathlib.Path, False) | _paths(pathlib.Path, True)),
            (File, _paths(File, False)),
            (Dir, _paths(Dir, False)),
            (Color, st.sampled_from(list(Color))),
            (Swapped, st.sampled_from(list(Swapped))),
            *[(lit, st.sampled_from(lit.__args__)) for lit in LITERALS],
        ]
    )


def _extend(
    inner: st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]],
) -> st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]:
    def as_list(pair: tuple[Any, Any]) -> tuple[Any, Any]:
        return list[pair[0]], st.lists(pair[1], max_size=4)  # type: ignore[valid-type]

    def as_tuple(pair: tuple[Any, Any]) -> tuple[Any, Any]:
        return tuple[pair[0], ...], st.lists(pair[1], max_size=4).map(tuple)  # type: ignore[valid-type]

    def as_dict(pair: tuple[Any, Any]) -> tuple[Any, Any]:
        return dict[str, pair[0]], st.dictionaries(st.text(max_size=5), pair[1], max_size=4)  # type: ignore[valid-type]

    def as_optional(pair: tuple[Any, Any]) -> tuple[Any, Any]:
        return pair[0] | None, st.none() | pair[1]

    return st.one_of(
        inner.map(as_list),
        inner.map(as_tuple),
        inner.map(as_dict),
        # T | None of T | None is T | None; only wrap what is not optional already.
        inner.filter(lambda p: type(None) not in getattr(p[0], "__args__", ())).map(as_optional),
    )


def type_strategies() -> st.SearchStrategy[tuple[Any, st.SearchStrategy[Any]]]:
    """``(annotation, values)`` for built-in types nested up to two levels deep."""
    return st.recursive(scalar_types(), _extend, max_leaves=3)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[Any, Any]:
    """An annotation and one value of it."""
    annotation, values = draw(type_strategies())
    return annotation, draw(values)
