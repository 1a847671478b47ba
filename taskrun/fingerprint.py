"""Canonical fingerprints: the typed encoding, code fingerprints and product digests.

Everything taskrun hashes goes through one **canonical, typed, tagged, length-prefixed**
encoding, hashed with xxh3-128 (32 hex characters). Scheme version 2:

====================  =====================================================================
value                 encoding (``Q`` = unsigned 64-bit little-endian length or count)
====================  =====================================================================
``None``              ``N``
``True`` / ``False``  ``T`` / ``F``
``int``               ``i`` Q two's-complement little-endian bytes (``(bit_length+8)//8``)
``float``             ``f`` IEEE-754 double, little-endian; every NaN as ``7ff8...``
``complex``           ``c`` real double, imaginary double (NaNs as for float)
``str``               ``s`` Q UTF-8 (lone surrogates kept via ``surrogatepass``)
``bytes``             ``b`` Q bytes (``memoryview`` encodes as the bytes it shows)
``bytearray``         ``a`` Q bytes
``list`` / ``tuple``  ``l`` / ``t`` Q items
``dict``              ``d`` Q (key, value)..., sorted by encoded key bytes
``set`` / frozenset   ``S`` / ``z`` Q items, sorted by encoded bytes
``Enum`` member       ``e`` str(class qualname) value (the module does not count)
dataclass instance    ``D`` Q str(class qualname) (str(field name) value)... declaration order
namedtuple            ``n`` Q str(class qualname) (str(field name) value)...
``PurePath``          ``p`` str(posix text); absolute paths are refused
``File`` / ``Dir``    ``x`` / ``y`` str(posix text) str(content digest); absolute refused
NumPy array           ``A`` dtype shape bytes(C-order data, little-endian); object refused
NumPy scalar          ``g`` dtype bytes(data)
date, time, Decimal,  ``E`` str(kind) form: a canonical form from :mod:`taskrun.digests`
UUID, Fraction,       (datetime, date, time, timedelta, decimal, uuid, fraction, and
pandas objects        pandas DataFrame/Series/Index/Timestamp/Timedelta/NA/NaT)
registered class      ``R`` str(class qualname) value: ``fn(v)`` from ``register_digest``
path text under root  ``r`` str(posix text relative to the root, ``.`` for the root)
``Path`` under root   ``o`` str(posix text relative to the root)
====================  =====================================================================

The ``r``/``o`` forms exist only where a project root is given: code constants (``__file__``,
``Path(__file__).parent / "data"``) and products. A copy of the project at another path
then has the same fingerprints. Other absolute paths are refused (not tracked as code
constants); other absolute strings are just text.

Every encoding is self-delimiting, so a concatenation decodes one way only: the encoding
is injective on the supported values, and ``1``, ``True``, ``1.0`` and ``"1"`` differ.
Ties between distinct dict keys with equal encodings (only NaN-like keys) are broken by
the encoded values, so the order never depends on insertion order or ``PYTHONHASHSEED``.

A change to any of this changes digests users already have in their caches: bump
:data:`SCHEME_VERSION` and update the golden tests in ``tests/test_fingerprint.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import operator
import os
import pathlib
import struct
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash

from taskrun.codewalk import SourceMemo, _resolved, _shared_key, code_parts
from taskrun.digests import canonical_form, digester_of
from taskrun.errors import FingerprintError
from taskrun.files import Dir, File
from taskrun.runtime import runtime_facts
from taskrun.types import class_name

__all__ = [
    "SCHEME_VERSION",
    "Change",
    "CodeFingerprint",
    "FingerprintInputs",
    "NonCanonicalProductWarning",
    "PathProductWarning",
    "Sink",
    "code_fingerprint",
    "describe",
    "diff",
    "encode",
    "encode_into",
    "product_digest",
    "runtime_facts",
    "task_fingerprint",
    "value_digest",
]

SCHEME_VERSION: int = 2
"""Version of the fingerprint scheme; bump it on any change to the encoding."""

HashPath = Callable[[pathlib.Path], str]


class Sink(Protocol):
    """Where encoded bytes go: an xxhash hasher, or anything else with ``update``."""

    def update(self, data: bytes | bytearray | memoryview) -> None: ...


class NonCanonicalProductWarning(UserWarning):
    """A product has no canonical encoding; its digest falls back to cloudpickle bytes."""


class PathProductWarning(UserWarning):
    """A product is a plain Path to a file in the project: hashed by its text, not content."""


# --------------------------------------------------------------------------- encoding

_HDR = struct.Struct("<BQ").pack
_FLOAT = struct.Struct("<Bd").pack
_DOUBLE = struct.Struct("<d").pack
_CANONICAL_NAN = bytes.fromhex("000000000000f87f")
_first = operator.itemgetter(0)
_NO_KEY = object()

# Tags written before a length or count (ints, for struct); the hot path in
# _Encoder.enc spells the first few as literals (perf: no global look-ups).
_T_INT, _T_FLOAT, _T_STR, _T_BYTES, _T_BYTEARRAY = b"ifsba"
_T_LIST, _T_TUPLE, _T_DICT, _T_SET, _T_FROZENSET = b"ltdSz"
_T_DATACLASS, _T_NAMEDTUPLE = b"Dn"
# Tags written alone (bytes).
_NONE, _TRUE, _FALSE = b"N", b"T", b"F"
_ENUM, _COMPLEX, _PATH, _FILE, _DIR, _NDARRAY, _NPSCALAR = b"e", b"c", b"p", b"x", b"y", b"A", b"g"
_PICKLED = b"P"  # domain tag for the cloudpickle fallback; no canonical encoding starts so
# Absolute text / path under the project root, encoded relative to it (scheme 2).
_ANCHORED_STR, _ANCHORED_PATH = b"r", b"o"
# A canonical form from taskrun.digests (dates, Decimal, pandas...) / from register_digest.
_EXTENDED, _REGISTERED_FORM = b"E", b"R"

# perf: bytes at least this long skip the buffer and go straight into the hasher, so a
# 512 MiB product is hashed in place, never copied or concatenated.
_DIRECT = 1 << 16
# perf: flush the buffer into the hasher past this size, so it never grows without bound.
_FLUSH = 1 << 20

_SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, "
    "frozenset, Enum members, dataclass instances, namedtuples, relative paths, File, Dir, "
    "dates and times, Decimal, UUID, Fraction, NumPy arrays and pandas objects"
)


class _Failure(Exception):
    """Why a value cannot be encoded, and where inside it (innermost first)."""

    def __init__(
        self, reason: str, *, fallback: bool = True, hint: str = "", type_name: str = ""
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        # The type with no canonical form, for the once-per-type fallback warning.
        self.type_name = type_name
        # False when pickle bytes would be unsafe too (a File's content would be ignored).
        self.fallback = fallback
        self.where: list[str] = []

    def brief(self) -> str:
        where = "".join(reversed(self.where))
        return f"at value{where}: {self.reason}" if where else self.reason

    def error(self) -> FingerprintError:
        hint = f" ({self.hint})" if self.hint else ""
        sep = " " if self.where else ": "
        return FingerprintError(f"cannot fingerprint{sep}{self.brief()}{hint}")


def _field_value(v: Any, t: type, name: str) -> Any:
    """A dataclass field's value; a field that was never set (``field(init=False)``
    without a default) has no canonical form: the product falls back to its pickle."""
    try:
        return getattr(v, name)
    except AttributeError:
        raise _Failure(f"field '{name}' is not set", type_name=_type_name(t)) from None


def _type_name(t: type) -> str:
    return class_name(t)


@functools.lru_cache(maxsize=1024)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _float_bytes(x: float) -> bytes:
    return _DOUBLE(x) if x == x else _CANONICAL_NAN


def _index_of(container: Any, item: Any) -> int:
    return next(i for i, x in enumerate(container) if x is item)


class _Encoder:
    """Appends canonical encodings to ``out``; big blobs go straight into ``sink``."""

    __slots__ = ("active", "anchors", "hash_path", "keys", "out", "paths", "sink")

    def __init__(
        self,
        out: bytearray,
        sink: Sink | None,
        hash_path: HashPath | None,
        anchors: tuple[str, ...] = (),
    ) -> None:
        self.out = out
        self.sink = sink
        self.hash_path = hash_path
        # The project root as text (as given, and resolved): strings and paths under it
        # are encoded relative to it, so a copy of the project elsewhere has the same
        # digests. Empty: no anchoring (plain value digests).
        self.anchors = anchors
        # Plain (not File/Dir) relative paths met, for the "use File" warning.
        self.paths: list[pathlib.PurePath] = []
        # ids of the mutable containers being encoded right now: a repeat is a cycle.
        self.active: set[int] = set()
        self.keys: dict[str, bytes] = {}

    def enc(self, v: Any) -> None:
        """Encode one value. The common exact types come first, in order of frequency."""
        out = self.out
        t = type(v)
        if t is str:
            if self.anchors and v[:1] == "/" and self.anchored(v):
                return
            b = v.encode("utf-8", "surrogatepass")
            out += _HDR(0x73, len(b))
            out += b
        elif t is int:
            n = (v.bit_length() + 8) >> 3
            out += _HDR(0x69, n)
            out += v.to_bytes(n, "little", signed=True)
        elif t is float:
            out += _FLOAT(0x66, v) if v == v else b"f" + _CANONICAL_NAN
        elif t is bool:
            out += _TRUE if v else _FALSE
        elif v is None:
            out += _NONE
        elif t is dict:
            self.mapping(v)
        elif t is list:
            self.sequence(v, _T_LIST, guard=True)
        elif t is tuple:
            self.sequence(v, _T_TUPLE, guard=False)
        elif t is bytes:
            self.blob(_T_BYTES, v, len(v))
        elif t is set:
            self.collection(v, _T_SET)
        elif t is frozenset:
            self.collection(v, _T_FROZENSET)
        else:
            self.other(v, t)

    def encoded(self, v: Any) -> bytes:
        """Encode ``v`` on its own (a dict key or set element), for sorting."""
        out, sink = self.out, self.sink
        self.out = buf = bytearray()
        self.sink = None
        try:
            self.enc(v)
        finally:
            self.out, self.sink = out, sink
        return bytes(buf)

    def blob(self, tag: int, data: Any, size: int) -> None:
        out = self.out
        out += _HDR(tag, size)
        sink = self.sink
        if sink is not None and size >= _DIRECT:
            sink.update(out)
            del out[:]
            sink.update(data)
        else:
            out += data

    def maybe_flush(self) -> None:
        if self.sink is not None and len(self.out) > _FLUSH:
            self.sink.update(self.out)
            del self.out[:]

    def enter(self, v: Any) -> int:
        i = id(v)
        if i in self.active:
            raise _Failure(f"the {type(v).__name__} contains itself (a reference cycle)")
        self.active.add(i)
        return i

    def sequence(self, v: list[Any] | tuple[Any, ...], tag: int, *, guard: bool) -> None:
        i = self.enter(v) if guard else 0
        self.out += _HDR(tag, len(v))
        enc = self.enc
        x = None
        try:
            for x in v:
                enc(x)
        except _Failure as e:
            e.where.append(f"[{_index_of(v, x)}]")
            raise
        finally:
            if guard:
                self.active.discard(i)
        self.maybe_flush()

    def mapping(self, d: dict[Any, Any]) -> None:
        i = self.enter(d)
        val: Any = _NO_KEY
        try:
            items: list[tuple[bytes, Any]] = []
            append = items.append
            plain = True
            keys = self.keys
            for key, val in d.items():
                if type(key) is str:
                    # perf: records repeat their keys; encode each distinct one once.
                    kb = keys.get(key)
                    if kb is None:
                        b = key.encode("utf-8", "surrogatepass")
                        kb = _HDR(0x73, len(b)) + b
                        if len(keys) < 65536:
                            keys[key] = kb
                    append((kb, val))
                else:
                    plain = False
                    try:
                        append((self.encoded(key), val))
                    except _Failure as e:
                        e.where.append("<key>")
                        val = _NO_KEY
                        raise
            val = _NO_KEY
            items.sort(key=_first)
            out = self.out
            out += _HDR(_T_DICT, len(items))
            if plain or len({kb for kb, _ in items}) == len(items):
                enc = self.enc
                inline_str = not self.anchors
                for kb, val in items:
                    out += kb
                    # perf: inline the commonest scalars (saves a call per record field).
                    t = type(val)
                    if t is str and (inline_str or val[:1] != "/"):
                        b = val.encode("utf-8", "surrogatepass")
                        out += _HDR(0x73, len(b))
                        out += b
                    elif t is int:
                        n = (val.bit_length() + 8) >> 3
                        out += _HDR(0x69, n)
                        out += val.to_bytes(n, "little", signed=True)
                    else:
                        enc(val)
            else:  # distinct keys, equal encodings (NaNs): order ties by their values too
                for kb, vb in sorted((kb, self.encoded(v)) for kb, v in items):
                    out += kb
                    out += vb
        except _Failure as e:
            if val is not _NO_KEY:
                key = next((k for k, v in d.items() if v is val), "?")
                e.where.append(f"[{key!r}]")
            raise
        finally:
            self.active.discard(i)
        self.maybe_flush()

    def collection(self, v: set[Any] | frozenset[Any], tag: int) -> None:
        encoded = sorted(self.encoded(x) for x in v)
        out = self.out
        out += _HDR(tag, len(encoded))
        for b in encoded:
            out += b

    def anchored(self, v: str) -> bool:
        """Encode an absolute path text under the project root relative to it (True)."""
        for anchor in self.anchors:
            if v == anchor or (v.startswith(anchor) and v[len(anchor)] == "/"):
                self.out += _ANCHORED_STR
                self.text(v[len(anchor) + 1 :] or ".")
                return True
        return False

    def relative(self, v: pathlib.PurePath) -> pathlib.PurePath | None:
        """``v`` relative to the project root, or None when it is not under it."""
        text = v.as_posix()
        for anchor in self.anchors:
            if text == anchor or (text.startswith(anchor) and text[len(anchor)] == "/"):
                return type(v)(text[len(anchor) + 1 :] or ".")
        return None

    def text(self, s: str) -> None:
        b = s.encode("utf-8", "surrogatepass")
        self.out += _HDR(_T_STR, len(b))
        self.out += b

    def fields(self, tag: int, cls: type, names: Sequence[str], values: Sequence[Any]) -> None:
        self.out += _HDR(tag, len(names))
        self.text(cls.__qualname__)
        for name, value in zip(names, values, strict=True):
            self.text(name)
            try:
                self.enc(value)
            except _Failure as e:
                e.where.append(f".{name}")
                raise

    def other(self, v: Any, t: type) -> None:
        """The slow path: subclasses, paths, dataclasses, NumPy and the unsupported."""
        registered = digester_of(t)
        if registered is not None:
            self.registered(v, t, registered)
            return
        if isinstance(v, enum.Enum):
            self.out += _ENUM
            self.text(t.__qualname__)
            self.enc(v.value)
        elif t.__module__ == "numpy":
            self.numpy(v, t)
        elif isinstance(v, (File, Dir)):
            if v.is_absolute() and self.anchors:
                rel = self.relative(v)
                if rel is not None:
                    v = rel
            self.content_path(v)
        elif isinstance(v, pathlib.PurePath):
            if v.is_absolute():
                rel = self.relative(v) if self.anchors else None
                if rel is None:
                    raise _Failure(
                        f"the absolute path '{v}' (a fingerprint must not depend on where "
                        "the project lives); use a path relative to the project root, or "
                        "File/Dir"
                    )
                # Under the project root (Path(__file__).parent / "data"): relative, with
                # a tag of its own so it never equals the relative path it came from.
                self.out += _ANCHORED_PATH
                self.text(rel.as_posix())
                self.paths.append(rel)
                return
            self.out += _PATH
            self.text(v.as_posix())
            self.paths.append(v)
        elif hasattr(t, "__dataclass_fields__") and not isinstance(v, type):
            i = self.enter(v)
            try:
                names = _field_names(t)
                self.fields(_T_DATACLASS, t, names, [_field_value(v, t, n) for n in names])
            finally:
                self.active.discard(i)
        elif isinstance(v, tuple) and isinstance(getattr(t, "_fields", None), tuple):
            self.fields(_T_NAMEDTUPLE, t, t._fields, v)  # type: ignore[attr-defined]
        elif t is complex:
            self.out += _COMPLEX + _float_bytes(v.real) + _float_bytes(v.imag)
        elif t is bytearray:
            self.blob(_T_BYTEARRAY, v, len(v))
        elif t is memoryview:
            view = v.cast("B") if v.c_contiguous else memoryview(v.tobytes())
            self.blob(_T_BYTES, view, view.nbytes)
        else:
            form = canonical_form(v, t)
            if form is None:
                raise _Failure(
                    f"values of type '{_type_name(t)}' have no canonical encoding",
                    hint=f"supported: {_SUPPORTED}; or teach one with register_digest",
                    type_name=_type_name(t),
                )
            self.out += _EXTENDED
            self.text(form[0])
            self.enc(form[1])

    def registered(self, v: Any, t: type, fn: Callable[[Any], Any]) -> None:
        try:
            form = fn(v)
        except Exception as exc:
            raise _Failure(
                f"the register_digest function for '{_type_name(t)}' raised {exc!r}",
                fallback=False,
            ) from exc
        i = self.enter(v)
        try:
            self.out += _REGISTERED_FORM
            self.text(t.__qualname__)  # not the module: a task file's is a private name
            self.enc(form)
        finally:
            self.active.discard(i)

    def content_path(self, v: File | Dir) -> None:
        from taskrun.files import external_key

        kind = type(v).__name__
        # Under a declared external root, a path is encoded by the root's name and the
        # path below it, so machines that mount the data elsewhere share entries.
        shown = external_key(v) if v.is_absolute() else v.as_posix()
        if shown is None:
            raise _Failure(
                f"the absolute {kind} '{v}'; a {kind} is relative to the project root "
                f"(write {kind}('data/in.csv'), not an absolute path), or under a folder"
                " declared in [tool.taskrun] external",
                fallback=False,
            )
        digest = (self.hash_path or _default_hash_path)(v)
        self.out += _FILE if isinstance(v, File) else _DIR
        self.text(shown)
        self.text(digest)

    def numpy(self, v: Any, t: type) -> None:
        import numpy as np  # perf: only when a NumPy value is actually met

        if isinstance(v, (np.ndarray, np.generic)) and v.dtype.hasobject:
            raise _Failure(
                "NumPy values of object dtype hold references, not data; convert the "
                "array to a numeric/string dtype or a list"
            )
        if isinstance(v, np.ndarray) and t is np.ndarray:
            if v.dtype.byteorder == ">":  # equal values, whatever their byte order
                v = v.astype(v.dtype.newbyteorder("<"))
            self.out += _NDARRAY
            self.dtype(v.dtype)
            self.enc(tuple(int(n) for n in v.shape))
            flat = np.ascontiguousarray(v).reshape(-1).view(np.uint8)
            self.blob(_T_BYTES, memoryview(flat), flat.nbytes)  # type: ignore[arg-type]
        elif isinstance(v, np.generic):
            self.out += _NPSCALAR
            self.dtype(v.dtype)
            data = v.tobytes()
            self.out += _HDR(_T_BYTES, len(data))
            self.out += data
        else:
            raise _Failure(f"values of type '{_type_name(t)}' have no canonical encoding")

    def dtype(self, dt: Any) -> None:
        # dtype.str loses the field names of structured dtypes; descr keeps them.
        self.enc(dt.descr if dt.fields is not None else dt.str)


def _anchors(root: pathlib.Path | str | None) -> tuple[str, ...]:
    """The texts of the project root an absolute path may start with (given, resolved)."""
    if root is None:
        return ()
    text = os.fspath(root)
    if text[:1] == "/":
        # perf: asked for every value digest with a root; a relative root depends on the
        # working directory, so only absolute ones are remembered.
        return _absolute_anchors(text)
    return _compute_anchors(text)


@functools.lru_cache(maxsize=64)
def _absolute_anchors(root: str) -> tuple[str, ...]:
    return _compute_anchors(root)


def _compute_anchors(root: str) -> tuple[str, ...]:
    given = pathlib.Path(root)
    if not given.is_absolute():
        given = given.absolute()
    texts = [given.as_posix().rstrip("/"), _resolved(given).as_posix().rstrip("/")]
    # "/" as a root would anchor every absolute path; there is no project there.
    return tuple(dict.fromkeys(t for t in texts if t))


def _run(
    sink: Sink | None,
    out: bytearray,
    value: Any,
    hash_path: HashPath | None,
    anchors: tuple[str, ...] = (),
) -> _Encoder:
    encoder = _Encoder(out, sink, hash_path, anchors)
    try:
        encoder.enc(value)
    except RecursionError:
        raise FingerprintError("cannot fingerprint: the value is nested too deeply") from None
    return encoder


def encode_into(
    sink: Sink | bytearray,
    value: Any,
    *,
    hash_path: HashPath | None = None,
    root: pathlib.Path | str | None = None,
) -> None:
    """Write the canonical encoding of ``value`` into ``sink`` (a hasher or a bytearray).

    ``hash_path`` gives the content digest of a relative ``File``/``Dir``; by default the
    file's bytes (or the directory's sorted tree) are hashed from the working directory.
    With ``root``, absolute paths and path strings under it are encoded relative to it.
    Raises FingerprintError for a value without a canonical encoding.
    """
    anchors = _anchors(root)
    try:
        if isinstance(sink, bytearray):
            _run(None, sink, value, hash_path, anchors)
            return
        out = bytearray()
        _run(sink, out, value, hash_path, anchors)
        if out:
            sink.update(out)
    except _Failure as e:
        raise e.error() from None


def encode(
    value: Any, *, hash_path: HashPath | None = None, root: pathlib.Path | str | None = None
) -> bytes:
    """Return the canonical encoding of ``value`` as bytes (see the module docstring)."""
    out = bytearray()
    encode_into(out, value, hash_path=hash_path, root=root)
    return bytes(out)


def value_digest(
    value: Any, *, hash_path: HashPath | None = None, root: pathlib.Path | str | None = None
) -> str:
    """Return the xxh3-128 hex digest of ``encode(value)``; FingerprintError if impossible."""
    hasher = xxhash.xxh3_128()
    encode_into(hasher, value, hash_path=hash_path, root=root)
    return hasher.hexdigest()


# The first two parts of every task fingerprint, encoded once.
_TASK_HEAD = encode("taskrun.task") + encode(SCHEME_VERSION)


def product_digest(
    value: Any,
    *,
    hash_path: HashPath | None = None,
    root: pathlib.Path | str | None = None,
    warned: set[str] | None = None,
) -> str:
    """Return the digest of a task's product, for early cutoff downstream.

    Canonical (equal values, equal digests, in any process) for every type the encoding
    supports. Anything else falls back to a digest of its cloudpickle bytes, with a
    :class:`NonCanonicalProductWarning` naming ``register_digest``: such bytes can differ
    for equal values, which costs cache misses downstream, never wrong hits. ``File``/
    ``Dir`` objects inside are hashed by content even then.

    With ``root``, paths under it are encoded relative to it, and a plain ``Path`` to a
    file in the project gives a :class:`PathProductWarning` (it is hashed by its text).
    ``warned`` holds the type names already warned about in this run: one warning each.
    """
    # perf: tasks often return the same few values (None, True, 0, "ok"); their digests
    # are remembered, in the memo of option values (see _scalar_digest).
    found = _scalar_digest(value)
    if found is not None:
        return found
    hasher = xxhash.xxh3_128()
    out = bytearray()
    try:
        encoder = _run(hasher, out, value, hash_path, _anchors(root))
    except _Failure as e:
        if not e.fallback:
            raise e.error() from None
        reason = e.brief()
        culprit = e.type_name or _type_name(type(value))
    except FingerprintError:
        raise
    except Exception as e:  # the product's own code (a property, __eq__) raised
        name = _type_name(type(value))
        raise FingerprintError(
            f"cannot digest a product of type '{name}': reading it raised"
            f" {type(e).__name__}: {e}; give the type a canonical form with"
            f" taskrun.register_digest({name.rpartition('.')[2]}, lambda v: <plain data>)"
        ) from e
    else:
        if out:
            hasher.update(out)
        if root is not None and encoder.paths:
            _warn_plain_paths(encoder.paths, pathlib.Path(root))
        return hasher.hexdigest()
    if warned is None or culprit not in warned:
        if warned is not None:
            warned.add(culprit)
        warnings.warn(
            f"a product holding '{culprit}' is hashed by its cloudpickle bytes ({reason});"
            " equal values may then get different digests, which only costs cache misses"
            " downstream, never wrong hits; give the type a canonical form with"
            f" taskrun.register_digest({culprit.rpartition('.')[2]}, lambda v: <plain data>)",
            NonCanonicalProductWarning,
            stacklevel=2,
        )
    return _pickled_digest(value, hash_path)


# perf: a product listing many paths is checked for the first few only.
_PATHS_CHECKED = 64


def _warn_plain_paths(paths: Sequence[pathlib.PurePath], root: pathlib.Path) -> None:
    for path in paths[:_PATHS_CHECKED]:
        if ".." in path.parts:
            continue
        try:
            is_file = (root / path).is_file()
        except OSError:
            continue
        if is_file:
            more = len(paths) - 1
            others = f" (and {more} more path{'s' if more != 1 else ''})" if more else ""
            warnings.warn(
                f"the product is a plain Path to the project file '{path.as_posix()}'"
                f"{others}: a Path is hashed by its text, so when the file's content"
                f" changes, dependents stay cached; return File('{path.as_posix()}')"
                " instead to hash it by content",
                PathProductWarning,
                stacklevel=3,
            )
            return


def _pickled_digest(value: Any, hash_path: HashPath | None) -> str:
    import cloudpickle  # perf: only the fallback needs it

    hasher = xxhash.xxh3_128(_PICKLED)

    class _HashWriter:
        def write(self, data: bytes) -> int:
            hasher.update(data)
            return len(data)

    class _ContentPickler(cloudpickle.CloudPickler):  # type: ignore[misc]
        # Pickle bytes hold a File's path, not its content: hash the content instead,
        # so a rewritten file under the same name still changes the digest.
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, (File, Dir)):
                return value_digest(obj, hash_path=hash_path)
            return None

    try:
        _ContentPickler(_HashWriter(), protocol=5).dump(value)
    except FingerprintError:
        raise
    except Exception as e:  # cloudpickle raises many kinds for the unpicklable
        raise FingerprintError(
            f"cannot digest a product of type '{_type_name(type(value))}': it has no "
            f"canonical encoding and cannot be pickled either ({e})"
        ) from e
    return hasher.hexdigest()


def _default_hash_path(path: pathlib.Path, base: pathlib.Path | None = None) -> str:
    """Content digest of a file (its bytes) or directory (sorted relative paths + bytes)."""
    real = base / path if base is not None else path
    try:
        if real.is_dir():
            if isinstance(path, File):
                raise _Failure(f"File '{path}' is a directory; use Dir", fallback=False)
            tree = []
            for dirpath, dirnames, filenames in os.walk(real):
                dirnames.sort()
                for name in sorted(filenames):
                    full = pathlib.Path(dirpath, name)
                    tree.append((full.relative_to(real).as_posix(), _file_digest(full)))
            tree.sort()
            return value_digest(tree)
        if not real.exists():
            return "missing"  # an absent file is a state too: its appearance reruns
        if isinstance(path, Dir):
            raise _Failure(f"Dir '{path}' is a file; use File", fallback=False)
        return _file_digest(real)
    except OSError as e:
        raise _Failure(f"cannot read '{path}' to hash its content: {e}", fallback=False) from e


def _file_digest(path: pathlib.Path) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


# --------------------------------------------------------------------------- code


@dataclass(frozen=True, slots=True)
class CodeFingerprint:
    """The code fingerprint of a task function.

    ``parts`` maps each piece of code to its digest: the task function first (under its
    qualname), then the project's helpers and constants it uses, transitively. Names from
    the task's own module are bare (``helper``, ``CONST``); others carry their module
    (``helpers.normalize``). ``digest`` covers all parts.
    """

    digest: str
    parts: Mapping[str, str]


def code_fingerprint(
    fn: Callable[..., Any],
    *,
    root: pathlib.Path,
    memo: SourceMemo | None = None,
    shared: dict[Any, Any] | None = None,
) -> CodeFingerprint:
    """Fingerprint ``fn``'s source and the project code under ``root`` that it uses.

    Comments, docstrings and the task's decorators do not count; a helper's body or a
    module constant does. Standard library, installed packages and other tasks are left
    out (other tasks are covered by their product digests). ``shared``: a dict kept for
    one run (one ``root``), in which functions sharing a code object share their walk
    (see :func:`taskrun.codewalk.code_parts`); their closures' values still count.
    """
    if shared is not None:
        # perf: a function without a closure is fully described by what code_parts keys
        # its walk by; tasks made in a loop then cost one dict look-up here.
        target = inspect.unwrap(fn)  # a wrapper's code says nothing of what it wraps
        key = _shared_key(target)
        if key is not None and not target.__code__.co_freevars:
            done = shared.get(("fingerprint", key))
            if done is None:
                done = shared[("fingerprint", key)] = _code_fingerprint(fn, root, memo, shared)
            result: CodeFingerprint = done
            return result
    return _code_fingerprint(fn, root, memo, shared)


def _code_fingerprint(
    fn: Callable[..., Any],
    root: pathlib.Path,
    memo: SourceMemo | None,
    shared: dict[Any, Any] | None,
) -> CodeFingerprint:
    base = _resolved(pathlib.Path(root))

    anchors = _anchors(root)
    hash_path: HashPath = functools.partial(_default_hash_path, base=base)

    def digest(value: Any) -> str:
        # Module constants such as __file__ or Path(__file__).parent / "data" are
        # encoded relative to the root: a copy of the project elsewhere hits.
        hasher = xxhash.xxh3_128()
        out = bytearray()
        try:
            _run(hasher, out, value, hash_path, anchors)
        except _Failure as e:
            raise e.error() from None
        hasher.update(out)
        return hasher.hexdigest()

    parts = code_parts(fn, root=base, digest=digest, memo=memo, shared=shared)
    return CodeFingerprint(digest=value_digest(parts), parts=parts)


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class FingerprintInputs:
    """Everything a task's fingerprint is made of (``code_parts`` only explains ``code``)."""

    task: str
    code: str  # CodeFingerprint.digest, or "version:<v>" when the task gives version=
    code_parts: Mapping[str, str]
    options: Mapping[str, object]
    upstream: Mapping[str, str]  # parameter name -> upstream product digest
    inputs: Mapping[str, str]  # relative posix path -> content digest
    env: Mapping[str, str | None]  # declared variable -> value, None when unset
    runtime: Mapping[str, str]
    # The declared output globs: a new output must reach the cache even if no code changed.
    outputs: tuple[str, ...] = ()


# perf: option values are mostly small scalars repeated across tasks (defaults); their
# digests do not depend on the root or on files (strings starting with "/" might).
# Floats are left out: 0.0 and -0.0 are equal dict keys with different encodings.
_SCALAR_DIGESTS: dict[tuple[type, object], str] = {}
_SCALARS = (int, bool, type(None))


def _scalar_digest(value: Any) -> str | None:
    """``value_digest(value)`` of a small scalar, remembered; None for anything else."""
    t = type(value)
    if t in _SCALARS or (t is str and value[:1] != "/" and len(value) < 256):
        key = (t, value)
        found = _SCALAR_DIGESTS.get(key)
        if found is None:
            found = value_digest(value)
            if len(_SCALAR_DIGESTS) >= 4096:
                _SCALAR_DIGESTS.clear()
            _SCALAR_DIGESTS[key] = found
        return found
    return None


def _option_digests(
    inputs: FingerprintInputs, hash_path: HashPath | None, root: pathlib.Path | None
) -> dict[str, str]:
    digests = {}
    value: Any  # an option's value: checked against its type, any object
    for name, value in inputs.options.items():
        found = _scalar_digest(value)
        if found is not None:
            digests[name] = found
            continue
        try:
            # A default such as Path(__file__).parent / "out" is under the root: relative.
            digests[name] = value_digest(value, hash_path=hash_path, root=root)
        except FingerprintError as e:
            raise FingerprintError(
                f"option '{name}' of task '{inputs.task}': {e.message}"
            ) from None
    return digests


def task_fingerprint(
    inputs: FingerprintInputs,
    *,
    hash_path: HashPath | None = None,
    root: pathlib.Path | None = None,
) -> str:
    """Return the task's fingerprint: xxh3-128 of the canonical encoding of its inputs."""
    options = _option_digests(inputs, hash_path, root)
    # perf: the fast encoder reads the mappings as they are; the general one needs them
    # copied into plain dicts, only when the fast one declines.
    fast = _fast_task_encoding(_task_parts(inputs, options, plain=False))
    if fast is not None:
        return xxhash.xxh3_128_hexdigest(fast)
    return value_digest(_task_parts(inputs, options))


def _task_parts(
    inputs: FingerprintInputs, options: dict[str, str], *, plain: bool = True
) -> tuple[Any, ...]:
    """What a task's fingerprint is the value digest of (pinned by the golden tests).

    ``plain``: the mappings copied into dicts (the general encoder takes nothing else);
    else as they are, for :func:`_fast_task_encoding`.
    """
    # Options enter as their value digests (the same ones describe() shows), so the
    # fingerprint changes exactly when some part that diff() compares changes.
    mappings = (inputs.upstream, inputs.inputs, inputs.env, inputs.runtime)
    parts: tuple[Any, ...] = (
        "taskrun.task",
        SCHEME_VERSION,
        inputs.task,
        inputs.code,
        options,
        *(map(dict, mappings) if plain else mappings),
    )
    if inputs.outputs:  # appended only when declared: other tasks' fingerprints stay as they were
        parts += (("outputs", inputs.outputs),)
    return parts


# perf: the strings of task fingerprints (names, digests, runtime facts) repeat across
# the tasks of a run: each upstream product digest is encoded once, by its first
# consumer, not by every consumer.
_ENCODED_STR: dict[str, bytes] = {}


def _encoded_str(text: str) -> bytes:
    b = _ENCODED_STR.get(text)
    if b is None:
        raw = text.encode("utf-8", "surrogatepass")
        b = _HDR(_T_STR, len(raw)) + raw
        if len(_ENCODED_STR) >= 1 << 16:
            _ENCODED_STR.clear()
        _ENCODED_STR[text] = b
    return b


def _fast_task_encoding(parts: tuple[Any, ...]) -> bytes | None:
    """``encode(parts)`` for the usual shape (str keys, str or None values), else None.

    The same bytes as the general encoder (tests compare the two), without its per-value
    dispatch: a warm run computes one fingerprint per task and little else.
    """
    task, code = parts[2], parts[3]
    if type(task) is not str or type(code) is not str:
        return None
    enc = _encoded_str
    # perf: the option digests and the runtime facts repeat across the tasks of a run:
    # their encodings are remembered by value; the upstream digests differ per task.
    options, runtime = _fast_dict_memo(parts[4]), _fast_dict_memo(parts[8])
    upstream, files, env = _fast_dict(parts[5]), _fast_dict(parts[6]), _fast_dict(parts[7])
    if options is None or runtime is None or upstream is None or files is None or env is None:
        return None
    out = [_HDR(_T_TUPLE, len(parts)), _TASK_HEAD, enc(task), enc(code)]
    out += (options, upstream, files, env, runtime)
    if len(parts) > 9:
        out.append(encode(parts[9]))
    return b"".join(out)


_EMPTY_DICT = _HDR(_T_DICT, 0)


def _fast_dict(d: Mapping[Any, Any]) -> bytes | None:
    """``encode(d)`` for str keys and str or None values, else None."""
    if not d:
        return _EMPTY_DICT
    enc = _encoded_str
    items = []
    for k, v in d.items():
        if type(k) is not str:
            return None
        if type(v) is str:
            items.append((enc(k), enc(v)))
        elif v is None:
            items.append((enc(k), _NONE))
        else:
            return None
    items.sort()  # distinct str keys: distinct encodings, so the keys alone decide
    return _HDR(_T_DICT, len(items)) + b"".join([b for item in items for b in item])


_DICT_ENCODINGS: dict[tuple[tuple[Any, Any], ...], bytes] = {}


def _fast_dict_memo(d: Mapping[Any, Any]) -> bytes | None:
    """``_fast_dict(d)``, remembered by d's items (the value, never the object).

    Equal items of other types (a str subclass) must not share an encoding: the types
    are checked on every use, which is cheaper than encoding.
    """
    key = tuple(d.items())
    found = _DICT_ENCODINGS.get(key)
    if found is not None:
        for k, v in key:
            if type(k) is not str or (type(v) is not str and v is not None):
                return _fast_dict(d)
    else:
        found = _fast_dict(d)
        if found is None:
            return None
        if len(_DICT_ENCODINGS) >= 4096:
            _DICT_ENCODINGS.clear()
        _DICT_ENCODINGS[key] = found
    return found


def describe(
    inputs: FingerprintInputs,
    *,
    hash_path: HashPath | None = None,
    root: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Return the fingerprint's components as JSON-able data, for ``explain`` and diff().

    Environment values appear only as digests: this lands in cache metadata, and a
    declared variable may hold a secret.
    """
    digests = _option_digests(inputs, hash_path, root)
    return {
        "scheme": SCHEME_VERSION,
        "task": inputs.task,
        "code": inputs.code,
        "code_parts": dict(inputs.code_parts),
        # The task function's part name: cached components come back as JSON objects
        # whose key order is not to be relied on.
        "function": next(iter(inputs.code_parts), None),
        "options": {
            name: _option_record(value, digests[name], hash_path)
            for name, value in inputs.options.items()
        },
        "upstream": dict(inputs.upstream),
        "inputs": dict(inputs.inputs),
        "env": {
            name: None if value is None else value_digest(value)
            for name, value in inputs.env.items()
        },
        "runtime": dict(inputs.runtime),
        "outputs": list(inputs.outputs),
    }


_LISTED_FILES = 2000  # perf: a Dir option's files are listed in describe() up to this many


def _option_record(value: Any, digest: str, hash_path: HashPath | None) -> dict[str, Any]:
    """An option in describe(): its text and digest; for a ``Dir``, each file's digest too,
    so a change of content can name the file that changed."""
    record: dict[str, Any] = {"repr": _shown(value), "digest": digest}
    if isinstance(value, Dir) and not value.is_absolute() and os.path.isdir(value):
        files: dict[str, str] = {}
        # Relative to the working directory, which is the project root while tasks are
        # fingerprinted (loader.project_context).
        for directory, subdirs, names in os.walk(value):
            subdirs.sort()
            for n in sorted(names):
                path = pathlib.Path(directory, n)
                if len(files) >= _LISTED_FILES or not os.path.isfile(path):
                    continue
                try:
                    files[path.as_posix()] = (hash_path or _default_hash_path)(path)
                except (OSError, FingerprintError):
                    continue
        if len(files) < _LISTED_FILES:
            record["files"] = files
    return record


def _files_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``src/b.txt changed, src/c.txt added`` between two describe() option records."""
    before, after = old.get("files"), new.get("files")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    words = [f"{p} changed" for p in after if p in before and before[p] != after[p]]
    words += [f"{p} added" for p in after if p not in before]
    words += [f"{p} removed" for p in before if p not in after]
    if len(words) > 3:
        words = [*words[:3], f"and {len(words) - 3} more"]
    return ", ".join(words)


def _shown(value: Any) -> str:
    """How an option value reads in a reason: ``'md'``, ``3``, ``Level.DEBUG``, ``'a.txt'``."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, pathlib.PurePath):
        from taskrun.files import external_key

        return repr((value.is_absolute() and external_key(value)) or value.as_posix())
    return repr(value)


_CATEGORY_TEXT = {
    "helper": "helper",
    "option": "option",
    "upstream": "upstream",
    "input": "input",
    "env": "env",
    "runtime": "runtime",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two fingerprints, renderable as a reason to rerun.

    ``kind`` is one of ``scheme``, ``task``, ``code`` (the task function, or its
    ``version:``), ``helper``, ``option``, ``upstream``, ``input``, ``env``, ``runtime``,
    or ``<category>-added`` / ``<category>-removed`` for those from ``helper`` on.
    """

    kind: str
    name: str
    old: Any
    new: Any
    detail: str = ""  # for a Dir option whose content changed: which files

    def __str__(self) -> str:
        kind, name = self.kind, self.name
        if kind == "scheme":
            return f"fingerprint scheme changed: {self.old} -> {self.new}"
        if kind == "task":
            return f"task name changed: {self.old!r} -> {self.new!r}"
        if kind == "code":
            old, new = str(self.old or ""), str(self.new or "")
            if old.startswith("version:") and new.startswith("version:"):
                return f"version changed: {old[8:]!r} -> {new[8:]!r}"
            if old.startswith("version:") or new.startswith("version:"):
                return f"code changed: {_code_label(old)} -> {_code_label(new)}"
            return f"code of '{name}' changed"
        if kind == "helper":
            return f"code of helper '{name}' changed"
        if kind == "option":
            if self.old == self.new:  # same path, other content
                which = f" ({self.detail})" if self.detail else ""
                return f"option '{name}' changed: the content of {self.new} changed{which}"
            return f"option '{name}' changed: {self.old} -> {self.new}"
        if kind == "outputs":
            return f"declared outputs changed: {self.old} -> {self.new}"
        if kind == "runtime":
            return f"runtime '{name}' changed: {self.old!r} -> {self.new!r}"
        if kind == "upstream" and name.endswith("[item]"):  # an item call (mapping.py)
            return f"the item (of '{name[:-6]}') changed"
        category, _, action = kind.partition("-")
        if action:
            return f"{_CATEGORY_TEXT.get(category, category)} '{name}' {action}"
        return f"{_CATEGORY_TEXT.get(kind, kind)} '{name}' changed"


def _code_label(code: str) -> str:
    return f"version {code[8:]!r}" if code.startswith("version:") else "source fingerprint"


def _diff_mapping(
    kind: str, old: Mapping[str, Any], new: Mapping[str, Any], key: Callable[[Any], Any]
) -> list[Change]:
    changes = []
    for name in old:
        if name not in new:
            changes.append(Change(f"{kind}-removed", name, old[name], None))
        elif key(old[name]) != key(new[name]):
            changes.append(Change(kind, name, old[name], new[name]))
    changes += [Change(f"{kind}-added", n, None, new[n]) for n in new if n not in old]
    return changes


def _same(x: Any) -> Any:
    return x


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Compare two describe() dicts and return what changed, in fingerprint order."""
    if old.get("scheme") != new.get("scheme"):
        # Every digest was made differently: nothing finer is meaningful.
        return [Change("scheme", "", old.get("scheme"), new.get("scheme"))]
    changes: list[Change] = []
    if old.get("task") != new.get("task"):
        changes.append(Change("task", str(new.get("task")), old.get("task"), new.get("task")))
    if old.get("code") != new.get("code"):
        changes += _diff_code(old, new)
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    for change in _diff_mapping("option", old_opts, new_opts, lambda o: o["digest"]):
        if change.kind == "option":  # show the values, not their digests
            before, after = old_opts[change.name], new_opts[change.name]
            change = Change(
                "option",
                change.name,
                before["repr"],
                after["repr"],
                _files_changed(before, after) if before["repr"] == after["repr"] else "",
            )
        changes.append(change)
    for kind, field in (
        ("upstream", "upstream"),
        ("input", "inputs"),
        ("env", "env"),
        ("runtime", "runtime"),
    ):
        changes += _diff_mapping(kind, old.get(field, {}), new.get(field, {}), _same)
    if old.get("outputs", []) != new.get("outputs", []):
        changes.append(Change("outputs", "", old.get("outputs", []), new.get("outputs", [])))
    return changes


def _diff_code(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    old_code, new_code = str(old.get("code", "")), str(new.get("code", ""))
    old_parts, new_parts = old.get("code_parts") or {}, new.get("code_parts") or {}
    # The task function is named by describe() (it may have been renamed); components
    # recorded before that field existed fall back to the first part.
    old_fn = old.get("function", next(iter(old_parts), None))
    new_fn = new.get("function", next(iter(new_parts), None))
    functions = {old_fn, new_fn} - {None}
    function = new_fn or old_fn or new.get("task")
    if (
        old_code.startswith("version:")
        or new_code.startswith("version:")
        or not (old_parts and new_parts)
    ):
        return [Change("code", str(function), old_code, new_code)]
    changes = (
        [Change("code", str(function), old_code, new_code)]
        if any(old_parts.get(f) != new_parts.get(f) for f in functions)
        else []
    )
    for change in _diff_mapping("helper", old_parts, new_parts, _same):
        if change.name not in functions:
            changes.append(change)
    return changes or [Change("code", str(function), old_code, new_code)]
