"""Tests for taskrun.fingerprint: canonical encoding, digests, code fingerprints, diffs."""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import importlib
import itertools
import json
import math
import pathlib
import random
import shlex
import struct
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import taskrun.runtime
from taskrun.errors import ConfigError, FingerprintError, ProbeError
from taskrun.files import Dir, File
from taskrun.fingerprint import (
    SCHEME_VERSION,
    Change,
    FingerprintInputs,
    NonCanonicalProductWarning,
    code_fingerprint,
    describe,
    diff,
    encode,
    encode_into,
    product_digest,
    runtime_facts,
    task_fingerprint,
    value_digest,
)

# --------------------------------------------------------------------------- goldens
#
# These digests pin fingerprint scheme 2 (scheme 1 had the same value encodings, without
# the E/R/r/o forms; the version enters every task fingerprint). If one of these tests
# fails, you changed the encoding: every digest in every user's cache changes with it.
# That can be right, but then bump SCHEME_VERSION in taskrun/fingerprint.py and update
# the digests here in the same commit (print them with value_digest / task_fingerprint).


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


Pair = collections.namedtuple("Pair", "name count")


def _fixed_hash(path: pathlib.Path) -> str:
    return "f" * 32


GOLDEN_VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int-zero": 0,
    "int-negative": -129,
    "int-big": 2**200 - 1,
    "float": 1.5,
    "float-negative-zero": -0.0,
    "float-nan": math.nan,
    "float-inf": math.inf,
    "complex": 1 - 2j,
    "str": "héllo ✓",
    "bytes": b"\x00\xff",
    "bytearray": bytearray(b"ab"),
    "bytes-big": bytes(range(256)) * 300,
    "list": [1, "a", None],
    "tuple": (1, "a", None),
    "dict": {"b": 1, "a": [2, 3], 3: "x"},
    "set": {3, "a", 1.5},
    "frozenset": frozenset({"x", "y"}),
    "enum": Color.RED,
    "dataclass": Point(1, 2.5),
    "namedtuple": Pair("a", 1),
    "path": pathlib.PurePosixPath("data/in.txt"),
    "file": File("data/in.txt"),
    "dir": Dir("data"),
    "nested": {"rows": [{"id": i, "tags": {"x", "y"}} for i in range(3)]},
}

GOLDEN_DIGESTS = {
    "none": "626d368fe0e74b4f1a038927df1311d6",
    "true": "1d33c0bd3511c80d20948828081ddcb4",
    "false": "ccebad3393972e4a79bf233aa9bae29f",
    "int-zero": "8e7ba4744620b77b6c623212875f97ee",
    "int-negative": "fdf28bcb0e9f2af9d18b33e078585234",
    "int-big": "bcb1d842e8ac8696bdf841e87bb2de0d",
    "float": "770487274eba5d21f254a1028442cd27",
    "float-negative-zero": "f6b43928ce5e5192820ab6b29963bd6b",
    "float-nan": "1420def684ff33195e46be79eb2f1aac",
    "float-inf": "7a8db524dbae2e094b793d59b1f88687",
    "complex": "d85f76db5ceba3083424d63f7da2546c",
    "str": "04a802e437896bb46fd39f3518f818bf",
    "bytes": "24251eb20df7680b752b6c4fb861d3de",
    "bytearray": "5b9b2bddc78d11c8a3106bbb9f381edf",
    "bytes-big": "531cbf40267df338b106e963217c05e5",
    "list": "1863025ed8225d0c4bc44e74590f401d",
    "tuple": "336228f7028509c137a3fff06667d261",
    "dict": "dff9137e38d5fb905939cf011e3df95b",
    "set": "411f5a21b4589eac08fcb382b4f21d4b",
    "frozenset": "1dd10fa01cfaca3c60e63542a12830cc",
    "enum": "79e58ae9bcd651a9167b780d5da7e024",
    "dataclass": "708eaf158709fc16d661919aca61a23c",
    "namedtuple": "31a16b879e733601f69bb57b23baf6bf",
    "path": "b08d7e06c9a629914c9d7a8bab17b4a7",
    "file": "b24bbffba014c10b72366008dd0ff05a",
    "dir": "e876f7b9d3382743f076c5fec51b5054",
    "nested": "4a0c10f4b69b38a2ad02b914ad3628a7",
}

GOLDEN_INPUTS = FingerprintInputs(
    task="report",
    code="0123456789abcdef0123456789abcdef",
    code_parts={"report": "0" * 32, "helper": "1" * 32},
    options={"style": "plain", "top": 10, "src": File("src/a.py")},
    upstream={"sources": "2" * 32},
    inputs={"data/in.txt": "3" * 32},
    env={"CC": "gcc", "TOKEN": None},
    runtime={"python": "cpython-3.11", "platform": "linux-x86_64"},
)
GOLDEN_TASK_FINGERPRINT = "29c6c2d66bd7cd438aaa80789acff812"
# np.arange(6, dtype="<i4").reshape(2, 3), checked when NumPy is installed
GOLDEN_NUMPY_DIGEST = "006ebf7509e3ded3fbabe12bc68bce5b"


@pytest.mark.parametrize("name", sorted(GOLDEN_VALUES))
def test_golden_value_digests(name: str) -> None:
    """Digests of a fixed set of values never change within scheme 2."""
    assert value_digest(GOLDEN_VALUES[name], hash_path=_fixed_hash) == GOLDEN_DIGESTS[name]


def test_golden_encoding_bytes() -> None:
    """The exact bytes of a small structure are pinned: tag, u64 length, payload."""
    assert (
        encode([1, "a"]).hex()
        == (
            "6c" + "0200000000000000"  # list of 2
            "69" + "0100000000000000" + "01"  # int 1
            "73" + "0100000000000000" + "61"  # str "a"
        )
    )


def test_golden_task_fingerprint() -> None:
    """The fingerprint of a fixed set of task inputs never changes within scheme 2."""
    assert SCHEME_VERSION == 2
    assert task_fingerprint(GOLDEN_INPUTS, hash_path=_fixed_hash) == GOLDEN_TASK_FINGERPRINT


_names = st.text(min_size=0, max_size=12)
_digests = st.one_of(_names, st.sampled_from(["0" * 32, "f" * 32, "skipped:x", "failed:"]))


@settings(max_examples=200, deadline=None)
@given(
    task=_names,
    code=_digests,
    options=st.dictionaries(_names, st.one_of(st.integers(), st.booleans(), st.none(), _names)),
    upstream=st.dictionaries(_names, _digests, max_size=4),
    inputs=st.dictionaries(_names, _digests, max_size=3),
    env=st.dictionaries(_names, st.one_of(st.none(), _names), max_size=3),
    runtime=st.dictionaries(_names, _names, max_size=3),
    outputs=st.lists(_names, max_size=3).map(tuple),
)
def test_task_fingerprint_fast_path_matches_the_encoding(**fields: Any) -> None:
    """The fast encoding of task fingerprints gives the general encoder's digest."""
    from taskrun.fingerprint import _fast_task_encoding, _option_digests, _task_parts

    inputs = FingerprintInputs(code_parts={}, **fields)
    parts = _task_parts(inputs, _option_digests(inputs, None, None))
    fast = _fast_task_encoding(parts)
    assert fast == encode(parts)
    assert _fast_task_encoding(parts) == fast  # options and runtime from the memo now
    assert task_fingerprint(inputs) == value_digest(parts)
    # Read-only mappings (as the scheduler shares them) are read as they are: same digest.
    proxied = dataclasses.replace(
        inputs,
        **{
            name: types.MappingProxyType(dict(getattr(inputs, name)))
            for name in ("upstream", "inputs", "env", "runtime")
        },
    )
    assert task_fingerprint(proxied) == value_digest(parts)
    assert all(
        value_digest(v) == d
        for v, d in zip(inputs.options.values(), parts[4].values(), strict=True)
    )


def test_remembered_dict_encodings_are_not_shared_with_equal_values_of_other_types() -> None:
    """The option and runtime encodings are remembered by value; a str subclass equal to a
    remembered str still gets the general encoder's bytes."""
    from taskrun.fingerprint import _fast_dict_memo

    class Text(str):
        pass

    plain = {"python": "cpython-3.12", "platform": "linux-x86_64"}
    assert _fast_dict_memo(plain) == encode(plain)
    assert _fast_dict_memo(dict(plain)) == encode(plain)  # remembered
    assert _fast_dict_memo({"python": Text("cpython-3.12"), "platform": "linux-x86_64"}) is None
    assert _fast_dict_memo({Text("python"): "cpython-3.12", "platform": "linux-x86_64"}) is None


def test_task_fingerprint_fast_path_leaves_other_values_to_the_encoder() -> None:
    """A part the fast path does not know (a non-str value) goes the general way."""
    from taskrun.fingerprint import _fast_task_encoding, _option_digests, _task_parts

    inputs = dataclasses.replace(GOLDEN_INPUTS, upstream={"sources": 1})  # type: ignore[dict-item]
    parts = _task_parts(inputs, _option_digests(inputs, _fixed_hash, None))
    assert _fast_task_encoding(parts) is None
    assert task_fingerprint(inputs, hash_path=_fixed_hash) == value_digest(parts)


# --------------------------------------------------------------------------- encoding

DISTINCT = [
    1, True, 1.0, 1 + 0j, "1", b"1", bytearray(b"1"), [1], (1,), {1}, frozenset({1}),
    {1: None}, None, 0, False, -0.0, 0.0, "", b"", [], (), {}, set(), frozenset(),
    pathlib.PurePosixPath("1"), Pair("1", 1), ("1", 1), Point(1, 1.0),
]  # fmt: skip


def test_distinct_values_encode_differently() -> None:
    """Values of different types or values never share an encoding (1, True, 1.0, "1")."""
    encodings = collections.Counter(encode(v) for v in DISTINCT)
    assert [v for v in DISTINCT if encodings[encode(v)] > 1] == []


def test_dict_digest_ignores_insertion_order() -> None:
    """A dict's digest does not depend on the order its keys were inserted."""
    keys = [f"k{i}" for i in range(50)] + [3, 1.5, ("t", 1), None]
    forward = {k: i for i, k in enumerate(keys)}
    backward = {k: forward[k] for k in reversed(keys)}
    assert list(forward) != list(backward)
    assert value_digest(forward) == value_digest(backward)


def test_set_digest_ignores_iteration_order() -> None:
    """Sets with the same elements digest the same, however they were built."""
    items = [f"e{i}" for i in range(100)] + [1, 2.5, (1, "x")]
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    assert value_digest(set(items)) == value_digest(set(shuffled))
    assert value_digest(frozenset(items)) == value_digest(frozenset(reversed(items)))


def test_all_nans_encode_alike() -> None:
    """Every NaN encodes as the one canonical NaN, whatever its payload."""
    other_nan = struct.unpack("<d", bytes.fromhex("0100000000f8ffff"))[0]
    assert math.isnan(other_nan)
    assert encode(other_nan) == encode(math.nan) == encode(float("nan"))


def test_dict_with_nan_keys_is_canonical() -> None:
    """Distinct NaN keys (equal encodings) are ordered by value, not insertion."""
    a, b = float("nan"), float("nan")
    assert value_digest({a: 1, b: 2}) == value_digest({b: 2, a: 1})


def test_memoryview_encodes_as_bytes() -> None:
    """A memoryview encodes as the bytes it shows, contiguous or not."""
    data = bytes(range(200))
    assert encode(memoryview(data)) == encode(data)
    assert encode(memoryview(data)[::2]) == encode(data[::2])


def _rebuilt(value: Any, rng: random.Random) -> Any:
    """A deep copy of ``value`` whose dicts and sets are rebuilt in shuffled order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _rebuilt(v, rng) for k, v in items}
    if isinstance(value, (set, frozenset)):
        items = list(value)
        rng.shuffle(items)
        return type(value)(items)
    if isinstance(value, list):
        return [_rebuilt(v, rng) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuilt(v, rng) for v in value)
    return value


def _canon(value: Any) -> Any:
    """A form equal exactly when two values are equal type-strictly (-0.0 != 0.0)."""
    t = type(value)
    if t is float:
        return (t.__name__, struct.pack("<d", value))
    if t in (list, tuple):
        return (t.__name__, tuple(_canon(v) for v in value))
    if t is dict:
        return ("dict", frozenset((_canon(k), _canon(v)) for k, v in value.items()))
    if t in (set, frozenset):
        return (t.__name__, frozenset(_canon(v) for v in value))
    return (t.__name__, value)


hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(values, st.randoms(use_true_random=False))
def test_equal_values_have_equal_digests(value: Any, rng: random.Random) -> None:
    """A value and a rebuilt copy (other dict/set order) always encode the same."""
    assert encode(_rebuilt(value, rng)) == encode(value)


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_encoding_is_injective(a: Any, b: Any) -> None:
    """Two values share an encoding only if they are equal, type for type."""
    assert (encode(a) == encode(b)) == (_canon(a) == _canon(b))


class _Chunks:
    """A sink that keeps every chunk it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, data: Any) -> None:
        self.chunks.append(bytes(data))


def test_streamed_encoding_equals_collected_encoding() -> None:
    """Big blobs stream straight into the sink, yet the byte stream is the same."""
    big = b"x" * (1 << 17)
    value = {"a": [big, Point(1, 2.0)], "b": (big, bytearray(big), "tail")}
    sink = _Chunks()
    encode_into(sink, value)
    assert len(sink.chunks) > 1  # the big blobs were passed through, not buffered
    assert b"".join(sink.chunks) == encode(value)
    assert value_digest(value) == xxhash.xxh3_128(encode(value)).hexdigest()


def test_unsupported_type_names_the_type_and_where() -> None:
    """An object without a canonical form fails, naming its type and its place."""

    class Opaque:
        pass

    with pytest.raises(FingerprintError, match=r"at value\['k'\]\[1\]: .*Opaque"):
        value_digest({"k": [1, Opaque()]})


def test_absolute_path_is_refused() -> None:
    """An absolute path never enters a fingerprint; the error says what to use."""
    with pytest.raises(FingerprintError, match="relative to the project root, or File/Dir"):
        value_digest({"out": pathlib.Path("/tmp/out.txt")})


def test_absolute_file_is_refused() -> None:
    """A File must be relative to the project root."""
    with pytest.raises(FingerprintError, match="absolute File"):
        value_digest(File("/etc/hostname"))


def test_self_referencing_list_is_refused() -> None:
    """A list that contains itself fails instead of recursing forever."""
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(FingerprintError, match="contains itself"):
        value_digest(loop)


def test_shared_references_are_not_cycles() -> None:
    """The same list twice in a value is fine: only a true cycle fails."""
    shared = [1, 2]
    assert value_digest([shared, shared]) == value_digest([[1, 2], [1, 2]])


# --------------------------------------------------------------------------- files


@pytest.fixture
def in_tmp(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Run the test in a fresh directory, as tasks run in the project root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_file_digest_follows_content(in_tmp: pathlib.Path) -> None:
    """A File hashes by content: same bytes same digest, new bytes new digest."""
    (in_tmp / "a.txt").write_text("one")
    first = value_digest(File("a.txt"))
    assert value_digest(File("a.txt")) == first
    (in_tmp / "a.txt").write_text("two")
    assert value_digest(File("a.txt")) != first


def test_dir_digest_follows_tree(in_tmp: pathlib.Path) -> None:
    """A Dir hashes its sorted tree: a new or changed file changes it."""
    (in_tmp / "d" / "sub").mkdir(parents=True)
    (in_tmp / "d" / "sub" / "x.txt").write_text("x")
    first = value_digest(Dir("d"))
    (in_tmp / "d" / "y.txt").write_text("y")
    second = value_digest(Dir("d"))
    (in_tmp / "d" / "sub" / "x.txt").write_text("changed")
    assert len({first, second, value_digest(Dir("d"))}) == 3


def test_missing_file_has_a_stable_digest(in_tmp: pathlib.Path) -> None:
    """A File that does not exist yet digests as missing, and changes once it appears."""
    missing = value_digest(File("later.txt"))
    assert value_digest(File("later.txt")) == missing
    (in_tmp / "later.txt").write_text("")
    assert value_digest(File("later.txt")) != missing


def test_hash_path_callback_gets_the_relative_path() -> None:
    """A custom hash_path is asked for each File by its relative path."""
    seen: list[pathlib.Path] = []

    def hash_path(path: pathlib.Path) -> str:
        seen.append(path)
        return "a" * 32

    value_digest([File("x/y.txt"), Dir("z")], hash_path=hash_path)
    assert [p.as_posix() for p in seen] == ["x/y.txt", "z"]


# --------------------------------------------------------------------------- products


def test_product_digest_is_the_value_digest_for_canonical_values() -> None:
    """Canonical products digest like any value, without a warning."""
    assert product_digest({"a": [1, 2]}) == value_digest({"a": [1, 2]})


def test_product_digest_of_repeated_scalars_is_their_value_digest() -> None:
    """The remembered digests of scalar products are their value digests."""
    values = [None, True, False, 0, 1, -1, 2**80, 1, True, None, 0, "ok", "", "/x", "ok"]
    for v in values * 2:
        assert product_digest(v, root="/somewhere") == value_digest(v)
    assert len({product_digest(v) for v in (0, False, 1, True, None)}) == 5


class Opaque:
    """A product type without a canonical encoding (picklable by reference)."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload


def test_product_digest_falls_back_to_pickle_with_a_warning() -> None:
    """An unsupported product warns that it only costs misses, and still digests."""
    with pytest.warns(NonCanonicalProductWarning, match="only costs cache misses"):
        first = product_digest(Opaque([1, 2]))
    with pytest.warns(NonCanonicalProductWarning):
        assert product_digest(Opaque([1, 2])) == first
    with pytest.warns(NonCanonicalProductWarning):
        assert product_digest(Opaque([1, 3])) != first


def test_product_fallback_hashes_files_by_content(in_tmp: pathlib.Path) -> None:
    """A File inside a pickled product still counts by content, not just by name."""
    (in_tmp / "out.txt").write_text("v1")
    with pytest.warns(NonCanonicalProductWarning):
        first = product_digest(Opaque(File("out.txt")))
    (in_tmp / "out.txt").write_text("v2")
    with pytest.warns(NonCanonicalProductWarning):
        assert product_digest(Opaque(File("out.txt"))) != first


def test_product_with_absolute_file_fails() -> None:
    """An absolute File product fails rather than falling back to its path's bytes."""
    with pytest.raises(FingerprintError, match="absolute File"):
        product_digest([File("/etc/hostname")])


def _digest_in_subprocess(seed: str) -> list[str]:
    code = textwrap.dedent(
        """
        from taskrun.fingerprint import value_digest
        words = {f"w{i}" for i in range(40)}
        value = {
            "words": words,
            "frozen": frozenset(words),
            "index": {w: len(w) for w in sorted(words)},
            "pairs": {(w, i) for i, w in enumerate(sorted(words))},
        }
        print(value_digest(value))
        print(",".join(words))
        """
    )
    env = {"PYTHONHASHSEED": seed, "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_digest_is_stable_across_hash_seeds() -> None:
    """Two processes with different PYTHONHASHSEED give the same digest for sets/dicts."""
    digest1, order1 = _digest_in_subprocess("1")
    digest2, order2 = _digest_in_subprocess("2")
    assert order1 != order2  # the seeds really changed set iteration order
    assert digest1 == digest2


def test_importing_fingerprint_does_not_import_numpy() -> None:
    """NumPy is imported only when a NumPy value is met, never at import time."""
    code = "import sys, taskrun.fingerprint; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------- numpy


@pytest.fixture
def np() -> Any:
    """NumPy, or skip."""
    return pytest.importorskip("numpy")


def test_numpy_golden_digest(np: Any) -> None:
    """An array's digest is pinned: dtype, shape, C-order bytes."""
    array = np.arange(6, dtype="<i4").reshape(2, 3)
    assert value_digest(array) == GOLDEN_NUMPY_DIGEST


def test_numpy_layout_does_not_matter(np: Any) -> None:
    """Equal arrays in C or Fortran order, or as a view, digest the same."""
    array = np.arange(12, dtype="<f8").reshape(3, 4)
    assert value_digest(np.asfortranarray(array)) == value_digest(array)
    assert value_digest(array[:, ::2]) == value_digest(array[:, ::2].copy())


def test_numpy_dtype_and_shape_count(np: Any) -> None:
    """The same bytes with another dtype or shape digest differently."""
    array = np.arange(6, dtype="<i4")
    digests = {
        value_digest(array),
        value_digest(array.reshape(2, 3)),
        value_digest(array.view("<f4")),
        value_digest(array.tolist()),
    }
    assert len(digests) == 4


def test_numpy_object_arrays_are_refused(np: Any) -> None:
    """Object arrays hold references, not data: they cannot be fingerprinted."""
    with pytest.raises(FingerprintError, match="object dtype"):
        value_digest(np.array([1, "a"], dtype=object))


def test_numpy_scalars_are_typed(np: Any) -> None:
    """NumPy scalars encode with their dtype: int32(1) differs from int64(1) and 1."""
    digests = {value_digest(np.int32(1)), value_digest(np.int64(1)), value_digest(1)}
    assert len(digests) == 3


# --------------------------------------------------------------------------- code

Loader = Callable[..., Any]


@pytest.fixture
def load(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[Loader]:
    """Write modules into a fresh directory and import them under per-test names.

    ``MOD_`` in a source becomes this test's module prefix, so ``import MOD_helpers``
    imports the helper written beside it. Each call uses a new directory; loading the
    same names again replaces the old modules, as a new taskrun process would.
    """
    prefix = "fp_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10] + "_"
    counter = itertools.count()

    def load_project(files: dict[str, str], main: str = "tasks", sub: str = "") -> Any:
        root = tmp_path / f"project{next(counter)}"
        for name, source in files.items():  # "pkg/util" is module util of package pkg
            path = root / sub / f"{prefix}{name}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source).replace("MOD_", prefix))
            for module_name in itertools.accumulate(name.split("/"), lambda a, b: f"{a}.{b}"):
                sys.modules.pop(prefix + module_name, None)
        sys.path.insert(0, str(root / sub))
        try:
            importlib.invalidate_caches()
            module: Any = importlib.import_module(prefix + main)
        finally:
            sys.path.remove(str(root / sub))
        module.ROOT = root
        module.PREFIX = prefix
        return module

    yield load_project
    for name in [n for n in sys.modules if n.startswith(prefix)]:
        del sys.modules[name]


HELPERS = '''
"""Helpers of the project."""
SCALE = 3

def normalize(text):
    """Lower-case TEXT."""
    return text.strip().lower() * SCALE
'''

TASKS = '''
"""Tasks of the project."""
import json
import os.path
import MOD_helpers as helpers
from MOD_helpers import normalize

LIMIT = 10

def task(**kwargs):
    def mark(fn):
        fn.__taskrun_task__ = kwargs  # what the registry's @task leaves on a task
        return fn
    return mark

def local_helper(x):
    return x[:LIMIT]

@task()
def upstream():
    return "text"

@task(retries=1)
def report(upstream: str, style: str = "plain") -> str:
    """Write the report."""
    # a comment
    data = json.dumps([normalize(upstream), helpers.SCALE])
    return local_helper(os.path.join(style, data))
'''


def _fingerprint(module: Any, name: str = "report") -> Any:
    return code_fingerprint(getattr(module, name), root=module.ROOT)


def test_code_parts_name_the_function_helpers_and_constants(load: Loader) -> None:
    """Parts are the task, then the project's helpers and constants it uses, transitively."""
    module = load({"helpers": HELPERS, "tasks": TASKS})
    parts = _fingerprint(module).parts
    p = module.PREFIX
    assert next(iter(parts)) == "report"
    assert set(parts) == {
        "report",
        "local_helper",
        "LIMIT",
        f"{p}helpers.normalize",
        f"{p}helpers.SCALE",
    }


def test_comments_and_docstrings_do_not_count(load: Loader) -> None:
    """Changing comments and docstrings of the task, helpers and modules keeps the digest."""
    before = _fingerprint(load({"helpers": HELPERS, "tasks": TASKS}))
    helpers = HELPERS.replace('"""Lower-case TEXT."""', '"""Lower-case it, now better."""')
    tasks = (
        TASKS.replace("# a comment", "# another comment\n    # and one more")
        .replace('"""Write the report."""', '"""Write the report, nicely."""')
        .replace('"""Tasks of the project."""', "# no docstring any more")
    )
    after = _fingerprint(load({"helpers": helpers, "tasks": tasks}))
    assert after == before


def test_task_decorator_arguments_do_not_count(load: Loader) -> None:
    """The task's own decorator is not code: its arguments are checked elsewhere."""
    before = _fingerprint(load({"helpers": HELPERS, "tasks": TASKS}))
    tasks = TASKS.replace("@task(retries=1)", "@task(retries=3)")
    assert _fingerprint(load({"helpers": HELPERS, "tasks": tasks})) == before


def test_fingerprint_does_not_depend_on_project_location(load: Loader) -> None:
    """The same code in two directories has the same fingerprint."""
    first = load({"helpers": HELPERS, "tasks": TASKS})
    second = load({"helpers": HELPERS, "tasks": TASKS})
    assert first.ROOT != second.ROOT
    assert _fingerprint(first) == _fingerprint(second)


def test_helper_body_change_counts(load: Loader) -> None:
    """Changing a helper's body in another module changes the digest and that part only."""
    before = _fingerprint(load({"helpers": HELPERS, "tasks": TASKS}))
    helpers = HELPERS.replace("text.strip().lower()", "text.strip().upper()")
    module = load({"helpers": helpers, "tasks": TASKS})
    after = _fingerprint(module)
    assert after.digest != before.digest
    changed = {k for k in before.parts if before.parts[k] != after.parts[k]}
    assert changed == {f"{module.PREFIX}helpers.normalize"}


def test_local_helper_change_counts(load: Loader) -> None:
    """Changing a helper in the task's own module changes the digest."""
    before = _fingerprint(load({"helpers": HELPERS, "tasks": TASKS}))
    tasks = TASKS.replace("return x[:LIMIT]", "return x[LIMIT:]")
    after = _fingerprint(load({"helpers": HELPERS, "tasks": tasks}))
    assert after.digest != before.digest
    assert after.parts["local_helper"] != before.parts["local_helper"]


def test_module_constant_change_counts(load: Loader) -> None:
    """Changing a module-level constant a helper uses changes the digest."""
    before = _fingerprint(load({"helpers": HELPERS, "tasks": TASKS}))
    module = load({"helpers": HELPERS.replace("SCALE = 3", "SCALE = 4"), "tasks": TASKS})
    after = _fingerprint(module)
    assert after.digest != before.digest
    assert (
        after.parts[f"{module.PREFIX}helpers.SCALE"]
        != before.parts[f"{module.PREFIX}helpers.SCALE"]
    )


def test_other_tasks_are_left_out(load: Loader) -> None:
    """A task's code does not include other tasks: their products cover them."""
    tasks = TASKS.replace("return local_helper(", "upstream()\n    return local_helper(")
    before = _fingerprint(load({"helpers": HELPERS, "tasks": tasks}))
    changed = tasks.replace('return "text"', 'return "other text"')
    after = _fingerprint(load({"helpers": HELPERS, "tasks": changed}))
    assert "upstream" not in after.parts
    assert after == before


def test_stdlib_and_installed_packages_are_left_out(load: Loader) -> None:
    """Standard-library and installed-package code never enters the parts."""
    tasks = """
    import json, os, click, xxhash
    from collections import OrderedDict

    def report():
        click.echo(json.dumps(OrderedDict(a=os.sep)))
        return xxhash.xxh3_128(b"").hexdigest()
    """
    assert set(_fingerprint(load({"tasks": tasks})).parts) == {"report"}


def test_virtualenv_inside_the_project_is_left_out(load: Loader) -> None:
    """Modules under a venv in the project root (a pyvenv.cfg above them) are not project code."""
    vendored = "def helper():\n    return 1\n"
    tasks = "from MOD_vendored import helper\n\ndef report():\n    return helper()\n"
    module = load({"vendored": vendored, "tasks": tasks}, sub=".venv/lib")
    (module.ROOT / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert set(_fingerprint(module).parts) == {"report"}


def test_local_names_shadowing_globals_are_not_dependencies(load: Loader) -> None:
    """A parameter named like a module constant does not pull the constant in."""
    tasks = "data = [1, 2]\n\ndef report(data):\n    return len(data)\n"
    assert set(_fingerprint(load({"tasks": tasks})).parts) == {"report"}


def test_recursive_helpers_terminate(load: Loader) -> None:
    """Mutually recursive helpers are each fingerprinted once."""
    tasks = """
    def even(n):
        return n == 0 or odd(n - 1)

    def odd(n):
        return n != 0 and even(n - 1)

    def report(n: int = 3):
        return even(n)
    """
    assert set(_fingerprint(load({"tasks": tasks})).parts) == {"report", "even", "odd"}


def test_class_helper_method_change_counts(load: Loader) -> None:
    """A project class a task uses counts with its methods."""
    tasks = """
    class Scaler:
        def apply(self, x):
            return x * 2

    def report():
        return Scaler().apply(1)
    """
    before = _fingerprint(load({"tasks": tasks}))
    after = _fingerprint(load({"tasks": tasks.replace("x * 2", "x * 3")}))
    assert "Scaler" in before.parts
    assert after.parts["Scaler"] != before.parts["Scaler"]


def test_closure_values_count(load: Loader) -> None:
    """A task made by a factory depends on the values it closed over."""
    tasks = """
    def make(n):
        def report():
            return n * 2
        return report

    report_one = make(1)
    report_two = make(2)
    """
    module = load({"tasks": tasks})
    one, two = _fingerprint(module, "report_one"), _fingerprint(module, "report_two")
    assert one.digest != two.digest


def test_shared_walks_keep_closure_values_apart(load: Loader) -> None:
    """Functions sharing a code object share one walk per run, but not their closures."""
    tasks = """
    LIMIT = 3

    def helper(x):
        return x + LIMIT

    def make(n, f):
        def report():
            return f(n) * 2
        return report

    def plain():
        def report():
            return helper(1)
        return report

    report_one = make(1, helper)
    report_two = make(2, helper)
    report_abs = make(1, abs)
    plain_one, plain_two = plain(), plain()
    """
    module = load({"tasks": tasks})
    names = ["report_one", "report_two", "report_abs", "plain_one", "plain_two"]
    alone = {n: _fingerprint(module, n) for n in names}
    shared: dict[Any, Any] = {}
    together = {
        n: code_fingerprint(getattr(module, n), root=module.ROOT, shared=shared) for n in names
    }
    assert together == alone  # digests and parts, in the same order
    assert [list(together[n].parts) for n in names] == [list(alone[n].parts) for n in names]
    assert len({alone[n].digest for n in names[:3]}) == 3
    assert alone["plain_one"] == alone["plain_two"]
    assert together["plain_one"] is together["plain_two"]  # walked once


def test_lambdas_and_factory_made_helpers_are_kept_apart(load: Loader) -> None:
    """Helpers sharing a qualname (lambdas, factory products) are each tracked."""
    tasks = """
    def make(n):
        def scale(x):
            return x * n
        return scale

    double = make(2)
    triple = make(3)
    inc = lambda x: x + 1
    dec = lambda x: x - 1

    def report():
        return double(inc(1)) + triple(dec(1))
    """
    before = _fingerprint(load({"tasks": tasks}))
    assert {"double", "triple", "inc", "dec"} <= set(before.parts)
    assert _fingerprint(load({"tasks": tasks.replace("make(3)", "make(4)")})) != before
    assert _fingerprint(load({"tasks": tasks.replace("x - 1", "x - 2")})) != before


def test_partial_helpers_count(load: Loader) -> None:
    """A functools.partial counts by its function's code and its bound arguments."""
    tasks = """
    import functools

    def scale(x, n):
        return x * n

    scaled = functools.partial(scale, n=2)

    def report():
        return scaled(1)
    """
    before = _fingerprint(load({"tasks": tasks}))
    assert "scale" in before.parts
    assert _fingerprint(load({"tasks": tasks.replace("n=2", "n=3")})) != before
    assert _fingerprint(load({"tasks": tasks.replace("x * n", "x + n")})) != before


def test_namespace_package_helpers_count(load: Loader) -> None:
    """Helpers in a package without __init__.py are still the project's own."""
    util = "def twice(x):\n    return 2 * x\n"
    tasks = "import MOD_pkg.util\n\ndef report():\n    return MOD_pkg.util.twice(1)\n"
    module = load({"pkg/util": util, "tasks": tasks})
    before = _fingerprint(module)
    assert f"{module.PREFIX}pkg.util.twice" in before.parts
    changed = load({"pkg/util": util.replace("2 * x", "3 * x"), "tasks": tasks})
    assert _fingerprint(changed) != before


def test_code_without_source_falls_back_to_bytecode(tmp_path: pathlib.Path) -> None:
    """A function with no retrievable source is fingerprinted by its bytecode."""

    def compiled(body: str, doc: str = "") -> Any:
        namespace: dict[str, Any] = {}
        exec(
            compile(f"def report(x):\n    {doc!r}\n    return {body}\n", "<gen>", "exec"), namespace
        )
        return namespace["report"]

    first = code_fingerprint(compiled("x + 1"), root=tmp_path)
    assert code_fingerprint(compiled("x + 1", doc="other doc"), root=tmp_path) == first
    assert code_fingerprint(compiled("x + 2"), root=tmp_path) != first


# --------------------------------------------------------------------------- tasks


def _inputs(**changes: Any) -> FingerprintInputs:
    return dataclasses.replace(GOLDEN_INPUTS, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"task": "report2"},
        {"code": "f" * 32},
        {"code": "version:2"},
        {"options": {"style": "fancy", "top": 10, "src": File("src/a.py")}},
        {"options": {"style": "plain", "top": 10.0, "src": File("src/a.py")}},
        {"upstream": {"sources": "9" * 32}},
        {"inputs": {"data/in.txt": "9" * 32}},
        {"env": {"CC": "clang", "TOKEN": None}},
        {"env": {"CC": "gcc", "TOKEN": ""}},
        {"runtime": {"python": "cpython-3.12", "platform": "linux-x86_64"}},
    ],
    ids=lambda c: ",".join(c),
)
def test_each_component_changes_the_fingerprint(changes: dict[str, Any]) -> None:
    """Changing any one component of a task's inputs changes its fingerprint."""
    before = task_fingerprint(GOLDEN_INPUTS, hash_path=_fixed_hash)
    assert task_fingerprint(_inputs(**changes), hash_path=_fixed_hash) != before


def test_code_parts_do_not_enter_the_fingerprint() -> None:
    """code_parts only explains code: the code digest already covers it."""
    before = task_fingerprint(GOLDEN_INPUTS, hash_path=_fixed_hash)
    after = task_fingerprint(_inputs(code_parts={}), hash_path=_fixed_hash)
    assert after == before


def test_option_order_does_not_matter() -> None:
    """Mappings in the inputs are compared as mappings, whatever their order."""
    reordered = _inputs(options=dict(reversed(list(GOLDEN_INPUTS.options.items()))))
    assert task_fingerprint(reordered, hash_path=_fixed_hash) == task_fingerprint(
        GOLDEN_INPUTS, hash_path=_fixed_hash
    )


def test_unencodable_option_names_the_option() -> None:
    """An option value without a canonical form fails, naming task and option."""
    with pytest.raises(FingerprintError, match="option 'when' of task 'report'"):
        task_fingerprint(_inputs(options={"when": object()}))


def test_describe_is_json_and_hides_env_values() -> None:
    """describe() is JSON-able and shows env values only as digests (they may be secret)."""
    described = describe(_inputs(env={"TOKEN": "s3cret"}), hash_path=_fixed_hash)
    text = json.dumps(described)
    assert "s3cret" not in text
    assert json.loads(text)["options"]["style"] == {
        "repr": "'plain'",
        "digest": value_digest("plain"),
    }
    assert described["scheme"] == SCHEME_VERSION


# --------------------------------------------------------------------------- diff


def _reasons(old: FingerprintInputs, new: FingerprintInputs) -> list[str]:
    # through JSON, as explain reads them back from the cache metadata
    before = json.loads(json.dumps(describe(old, hash_path=_fixed_hash)))
    return [str(c) for c in diff(before, describe(new, hash_path=_fixed_hash))]


def test_diff_of_identical_inputs_is_empty() -> None:
    """Nothing changed, nothing to say."""
    assert _reasons(GOLDEN_INPUTS, GOLDEN_INPUTS) == []


def test_diff_renders_an_option_change_with_values() -> None:
    """An option change names the option and both values."""
    new = _inputs(options={**GOLDEN_INPUTS.options, "style": "fancy"})
    assert _reasons(GOLDEN_INPUTS, new) == ["option 'style' changed: 'plain' -> 'fancy'"]


def test_diff_renders_helper_and_function_changes() -> None:
    """A changed code part is the task's code or one helper's, by name."""
    new = _inputs(code="e" * 32, code_parts={"report": "9" * 32, "helper": "8" * 32})
    assert _reasons(GOLDEN_INPUTS, new) == [
        "code of 'report' changed",
        "code of helper 'helper' changed",
    ]


def test_diff_of_a_renamed_function_is_a_code_change() -> None:
    """Renaming the task function (same task name) is its code changing, not helpers."""
    new = _inputs(code="e" * 32, code_parts={"build": "9" * 32, "helper": "1" * 32})
    assert _reasons(GOLDEN_INPUTS, new) == ["code of 'build' changed"]


def test_diff_renders_inputs_upstream_and_env() -> None:
    """Input files, upstream products and env variables are named, values not shown."""
    new = _inputs(
        upstream={"sources": "9" * 32},
        inputs={"data/in.txt": "9" * 32},
        env={"CC": "clang", "TOKEN": None},
    )
    assert _reasons(GOLDEN_INPUTS, new) == [
        "upstream 'sources' changed",
        "input 'data/in.txt' changed",
        "env 'CC' changed",
    ]


def test_diff_renders_additions_removals_and_runtime() -> None:
    """Added and removed parts are named as such; runtime facts show both values."""
    new = _inputs(
        options={"style": "plain", "top": 10, "src": File("src/a.py"), "dry": True},
        code="e" * 32,
        code_parts={"report": "0" * 32},
        runtime={"python": "cpython-3.12", "platform": "linux-x86_64"},
    )
    assert _reasons(GOLDEN_INPUTS, new) == [
        "helper 'helper' removed",
        "option 'dry' added",
        "runtime 'python' changed: 'cpython-3.11' -> 'cpython-3.12'",
    ]


def test_diff_renders_version_changes() -> None:
    """With version= the reason is the version, not the code."""
    old = _inputs(code="version:1", code_parts={})
    assert _reasons(old, _inputs(code="version:2", code_parts={})) == [
        "version changed: '1' -> '2'"
    ]


def test_diff_of_another_scheme_says_only_that() -> None:
    """Across scheme versions only the scheme change is reported."""
    old = {**describe(GOLDEN_INPUTS, hash_path=_fixed_hash), "scheme": 0}
    changes = diff(old, describe(_inputs(task="x"), hash_path=_fixed_hash))
    assert changes == [Change("scheme", "", 0, SCHEME_VERSION)]
    assert str(changes[0]) == f"fingerprint scheme changed: 0 -> {SCHEME_VERSION}"


# --------------------------------------------------------------------------- runtime


def test_runtime_facts_default_to_python_and_platform() -> None:
    """By default the facts are the Python implementation/version and the platform."""
    facts = runtime_facts()
    major, minor = sys.version_info[:2]
    assert facts == {
        "python": f"{sys.implementation.name}-{major}.{minor}",
        "platform": facts["platform"],
    }
    assert facts["platform"].startswith(sys.platform + "-")


def test_runtime_facts_record_declared_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declared variables are recorded by value, unset ones as <unset>."""
    monkeypatch.setenv("FP_SET", "1")
    monkeypatch.delenv("FP_UNSET", raising=False)
    facts = runtime_facts(python=False, platform=False, env=["FP_SET", "FP_UNSET"])
    assert facts == {"env:FP_SET": "1", "env:FP_UNSET": "<unset>"}


PY = shlex.quote(sys.executable)


def test_probe_records_first_line_of_output() -> None:
    """A probe's fact is the first non-empty line its command prints."""
    facts = runtime_facts(python=False, platform=False, probes={"py": f"{PY} --version"})
    assert facts == {"py": f"Python {sys.version.split()[0]}"}


def test_probe_reads_stderr_when_stdout_is_empty() -> None:
    """Tools that print their version on stderr (java -version) still work."""
    command = f"{PY} -c \"import sys; sys.stderr.write('\\n  tool 1.2\\n')\""
    assert runtime_facts(python=False, platform=False, probes={"t": command}) == {"t": "tool 1.2"}


def test_failing_probe_names_probe_command_and_fix() -> None:
    """A probe exiting non-zero raises ProbeError with its name, command and a fix."""
    command = f"{PY} -c \"import sys; sys.exit('broken toolchain')\""
    with pytest.raises(ProbeError) as caught:
        runtime_facts(probes={"cc": command})
    message = str(caught.value)
    assert "probe 'cc'" in message and "exited with status 1: broken toolchain" in message
    assert command in message and "remove the probe" in message


def test_missing_probe_command_says_not_found() -> None:
    """A probe whose program does not exist says so."""
    with pytest.raises(ProbeError, match="'no-such-tool-xyz' was not found"):
        runtime_facts(probes={"tool": "no-such-tool-xyz --version"})


def test_hung_probe_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that does not finish in time fails instead of hanging the run."""
    monkeypatch.setattr(taskrun.runtime, "_PROBE_TIMEOUT", 0.5)
    with pytest.raises(ProbeError, match=r"did not finish within 0\.5 s"):
        runtime_facts(probes={"slow": f'{PY} -c "import time; time.sleep(30)"'})


def test_probe_cannot_shadow_a_builtin_fact() -> None:
    """A probe named like a built-in fact is a configuration error."""
    with pytest.raises(ConfigError, match="clashes"):
        runtime_facts(probes={"python": f"{PY} --version"})


def _load_source(tmp_path: pathlib.Path, name: str, source: str) -> Any:
    import importlib.util
    import linecache

    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    linecache.checkcache(str(path))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_source_memo_persists_and_still_sees_changes(tmp_path: pathlib.Path) -> None:
    """A memo saved by one run gives the same digests; helper edits still change them."""
    from taskrun.codewalk import SourceMemo

    memo_path = tmp_path / "memo.json"
    source = """
        def helper(x):
            return x + 1

        def task_fn(n):
            '''Doc.'''
            return helper(n)  # a comment
    """
    first = SourceMemo(memo_path)
    before = code_fingerprint(
        _load_source(tmp_path, "memo_a", source).task_fn, root=tmp_path, memo=first
    )
    first.flush()
    assert memo_path.exists()
    second = SourceMemo(memo_path)
    assert second.items, "the memo was read back"
    again = code_fingerprint(
        _load_source(tmp_path, "memo_b", source).task_fn, root=tmp_path, memo=second
    )
    assert again.digest == before.digest
    recomment = source.replace("# a comment", "# another").replace("Doc.", "Docs.")
    same = code_fingerprint(
        _load_source(tmp_path, "memo_c", recomment).task_fn, root=tmp_path, memo=second
    )
    assert same.digest == before.digest
    edited = source.replace("x + 1", "x + 2")
    changed = code_fingerprint(
        _load_source(tmp_path, "memo_d", edited).task_fn, root=tmp_path, memo=second
    )
    assert changed.digest != before.digest
    assert changed.parts["helper"] != before.parts["helper"]


def test_damaged_source_memo_is_ignored(tmp_path: pathlib.Path) -> None:
    """A torn or foreign memo file is treated as empty, never trusted."""
    from taskrun.codewalk import SourceMemo

    path = tmp_path / "memo.json"
    path.write_text('{"header": "something else", "items": {"k": [1, [], {}]}}')
    assert SourceMemo(path).items == {}
    path.write_text("{not json")
    assert SourceMemo(path).items == {}


def test_probes_run_in_the_given_directory(tmp_path: pathlib.Path) -> None:
    """A probe reading a project file works wherever taskrun was started."""
    import sys as _sys

    from taskrun.fingerprint import runtime_facts

    (tmp_path / "lock.txt").write_text("pinned-1\n")
    command = f"{_sys.executable} -c \"print(open('lock.txt').read().strip())\""
    facts = runtime_facts(python=False, platform=False, probes={"lock": command}, cwd=tmp_path)
    assert facts == {"lock": "pinned-1"}


def test_a_reloaded_edit_is_seen_in_the_same_process(tmp_path: pathlib.Path) -> None:
    """In one long-lived process, an edited and reloaded module is fingerprinted anew."""
    import os
    import time

    from taskrun.codewalk import SourceMemo

    source = """
        def task_fn(n):
            return n + 1
    """
    before = code_fingerprint(_load_source(tmp_path, "reload_a", source).task_fn, root=tmp_path)
    path = tmp_path / "reload_a.py"
    path.write_text(textwrap.dedent(source.replace("n + 1", "n + 2")))
    later = time.time() + 5
    os.utime(path, (later, later))  # a different mtime, as any real edit later has
    import importlib.util

    spec = importlib.util.spec_from_file_location("reload_a", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    after = code_fingerprint(module.task_fn, root=tmp_path, memo=SourceMemo())
    assert after.digest != before.digest
