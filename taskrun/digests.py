"""Canonical forms of values beyond plain data, and ``register_digest`` for your own.

A *canonical form* is a small structure of plain values (ints, strings, bytes, tuples,
NumPy arrays) that equal values share in any process, whatever ``PYTHONHASHSEED`` or
memory layout. :mod:`taskrun.fingerprint` encodes it under a tag naming its kind::

    E str(kind) <encoding of the form>        a kind below
    R str(class qualname) <encoding of fn(v)> a class taught with register_digest

================  ==========================================================================
kind              form
================  ==========================================================================
``datetime``      ``((year, month, day, hour, minute, second, microsecond), offset)``;
                  offset is None when naive, else the UTC offset in microseconds
``date``          ``(year, month, day)``
``time``          ``((hour, minute, second, microsecond), offset)`` as for datetime
``timedelta``     ``(days, seconds, microseconds)`` (Python normalizes these)
``decimal``       ``(sign, digits, exponent)`` without trailing zeros, so ``1.0 == 1.00``
                  share it; zero is ``(0, "0", 0)``; NaN and infinities as their text
``uuid``          the 16 bytes
``fraction``      ``(numerator, denominator)`` in lowest terms
``pandas.*``      see :func:`_pandas` (only when pandas is already imported)
================  ==========================================================================

Nothing here imports NumPy or pandas: a value of theirs can only exist once its library
has been imported by the user's code.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import sys
import uuid
from collections.abc import Callable
from typing import Any

from taskrun.errors import DefinitionError

__all__ = ["canonical_form", "digester_of", "register_digest"]

Form = tuple[str, Any]

_REGISTERED: dict[type, Callable[[Any], Any]] = {}
# perf: the MRO walk for a type is done once; registering anything clears this.
_LOOKUP: dict[type, Callable[[Any], Any] | None] = {}

# Encodings that register_digest cannot replace: they are the building blocks.
_BUILTIN = (
    str,
    int,
    float,
    bool,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
    type(None),
    complex,
    memoryview,
)


def register_digest(cls: type, fn: Callable[[Any], Any]) -> None:
    """Teach taskrun a canonical form for ``cls``: ``fn(value)`` returns plain data.

    ``fn`` maps an instance (or an instance of a subclass) to something taskrun encodes
    canonically, such as a tuple of numbers and strings, or bytes::

        taskrun.register_digest(Model, lambda m: (m.name, m.weights.tobytes()))

    Equal values must give equal results, in any process. The digest covers the class
    name (without its module) and that result. Registering a class again replaces its
    function.
    """
    if not isinstance(cls, type):
        raise DefinitionError(
            f"register_digest: {cls!r} is not a class; pass the class itself, as in"
            " register_digest(Model, fn)"
        )
    if cls in _BUILTIN:
        raise DefinitionError(
            f"register_digest: {cls.__name__} already has a canonical encoding that every"
            " digest is built from; register your own class instead"
        )
    if not callable(fn):
        raise DefinitionError(
            f"register_digest({cls.__qualname__}, ...): {fn!r} is not a function; pass"
            " one that returns plain data, e.g. lambda v: (v.name, v.size)"
        )
    _REGISTERED[cls] = fn
    _LOOKUP.clear()


def digester_of(t: type) -> Callable[[Any], Any] | None:
    """The function registered for ``t`` or its nearest registered base class."""
    try:
        return _LOOKUP[t]
    except KeyError:
        pass
    found = None
    if _REGISTERED:
        for base in t.__mro__:
            if base in _REGISTERED:
                found = _REGISTERED[base]
                break
    _LOOKUP[t] = found
    return found


def _offset(value: datetime.datetime | datetime.time) -> int | None:
    if value.tzinfo is None:
        return None
    delta = value.utcoffset()
    if delta is None:
        return None
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _datetime(v: datetime.datetime) -> Form:
    parts = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
    return "datetime", (parts, _offset(v))


def _date(v: datetime.date) -> Form:
    return "date", (v.year, v.month, v.day)


def _time(v: datetime.time) -> Form:
    return "time", ((v.hour, v.minute, v.second, v.microsecond), _offset(v))


def _timedelta(v: datetime.timedelta) -> Form:
    return "timedelta", (v.days, v.seconds, v.microseconds)


def _decimal(v: decimal.Decimal) -> Form:
    if not v.is_finite():
        return "decimal", str(v)
    sign, digits, exponent = v.as_tuple()
    text = "".join(map(str, digits)).lstrip("0")
    if not text:
        return "decimal", (0, "0", 0)
    stripped = text.rstrip("0")
    assert isinstance(exponent, int)  # finite
    return "decimal", (sign, stripped, exponent + len(text) - len(stripped))


def _uuid(v: uuid.UUID) -> Form:
    return "uuid", v.bytes


def _fraction(v: fractions.Fraction) -> Form:
    return "fraction", (v.numerator, v.denominator)


# Exact types first (perf: one dict look-up); subclasses go through isinstance below.
_STDLIB: dict[type, Callable[[Any], Form]] = {
    datetime.datetime: _datetime,
    datetime.date: _date,
    datetime.time: _time,
    datetime.timedelta: _timedelta,
    decimal.Decimal: _decimal,
    uuid.UUID: _uuid,
    fractions.Fraction: _fraction,
}


def canonical_form(v: Any, t: type) -> Form | None:
    """``(kind, form)`` for a value of a known kind, or None (see the module docstring)."""
    fn = _STDLIB.get(t)
    if fn is not None:
        return fn(v)
    if t.__module__.startswith("pandas"):
        return _pandas(v, t)
    for base, fn in _STDLIB.items():  # subclasses (datetime before date: dict order)
        if isinstance(v, base):
            return fn(v)
    return None


# --------------------------------------------------------------------------- pandas


def _pandas(v: Any, t: type) -> Form | None:
    """DataFrame, Series, Index and pandas scalars; None for anything else of pandas.

    The forms hold what ``DataFrame.equals`` compares and nothing of the memory layout:
    column names, dtypes, index and values, column by column. A RangeIndex is encoded as
    its values, so a frame read back from a file (an int64 index) digests the same.
    """
    pd = sys.modules.get("pandas")
    if pd is None:  # pragma: no cover - a pandas value without pandas imported
        return None
    if isinstance(v, pd.DataFrame):
        columns = [(_index_key(name), _values(v.iloc[:, i])) for i, name in enumerate(v.columns)]
        return "pandas.DataFrame", (_index(v.columns), _index(v.index), columns)
    if isinstance(v, pd.Series):
        return "pandas.Series", (_index_key(v.name), _index(v.index), _values(v))
    if isinstance(v, pd.Index):
        return "pandas.Index", _index(v)
    if v is pd.NaT:
        return "pandas.NaT", ()
    if v is pd.NA:
        return "pandas.NA", ()
    if isinstance(v, pd.Timestamp):
        return "pandas.Timestamp", (int(v.value), str(v.tz) if v.tz is not None else None)
    if isinstance(v, pd.Timedelta):
        return "pandas.Timedelta", int(v.value)
    return None


def _index_key(name: Any) -> Any:
    """A column or index name: hashable plain data, or its repr for anything else."""
    if name is None or isinstance(name, (str, int, float, bool, tuple)):
        return name
    return ("repr", repr(name))


def _index(index: Any) -> Any:
    pd = sys.modules["pandas"]
    names = tuple(_index_key(n) for n in index.names)
    if isinstance(index, pd.MultiIndex):
        levels = [_values(index.get_level_values(i)) for i in range(index.nlevels)]
        return ("multi", names, levels)
    return ("index", names, _values(index))


def _values(values: Any) -> Any:
    """``(dtype text, data)`` of a Series or Index: a NumPy array where there is one."""
    import numpy as np  # pandas imports NumPy: it is loaded already

    pd = sys.modules["pandas"]
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categorical = values.array
        return (
            "category",
            bool(dtype.ordered),
            _values(pd.Index(dtype.categories)),
            np.asarray(categorical.codes),
        )
    if isinstance(dtype, np.dtype) and not dtype.hasobject:
        return (dtype.str, np.asarray(values.to_numpy()))
    if isinstance(dtype, pd.DatetimeTZDtype):
        return (str(dtype), np.asarray(values.array.asi8))
    # Object, string and nullable dtypes: the Python values, one by one (NA included).
    return (str(dtype), values.tolist())
