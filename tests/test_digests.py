"""Canonical product digests: dates, Decimal, UUID, NumPy, pandas, register_digest.

Equal values give equal digests in any process (whatever PYTHONHASHSEED or memory
layout); goldens pin the encodings of scheme 2; a value with no canonical form falls back
to its pickle with one warning per type per run.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taskrun
from taskrun import events as ev
from taskrun.digests import register_digest
from taskrun.errors import DefinitionError, FingerprintError
from taskrun.fingerprint import (
    NonCanonicalProductWarning,
    PathProductWarning,
    encode,
    product_digest,
    value_digest,
)
from taskrun.loader import load_task_file

TESTS = Path(__file__).parent

# --------------------------------------------------------------------------- goldens

GOLDEN_VALUES: dict[str, Any] = {
    "date": datetime.date(2024, 2, 29),
    "datetime-naive": datetime.datetime(2024, 2, 29, 13, 45, 30, 123456),
    "datetime-aware": datetime.datetime(
        2024,
        2,
        29,
        13,
        45,
        tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30)),
    ),
    "time": datetime.time(23, 59, 58, 7),
    "timedelta": datetime.timedelta(days=-1, seconds=5, microseconds=6),
    "decimal": decimal.Decimal("-12.3400"),
    "decimal-nan": decimal.Decimal("NaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "fraction": fractions.Fraction(-6, 4),
}
GOLDEN_DIGESTS = {
    "date": "66a4f3c518f7f39d1534d01a0389db69",
    "datetime-naive": "d2c2998dd33fd26bae5c0a8335fd5ef4",
    "datetime-aware": "97e46f8490adc7670aee19145cb55195",
    "time": "b273a47fb5c73467bce807980df7c5bd",
    "timedelta": "fe5716f410a32149033d6b365b43cb27",
    "decimal": "9a34f476b74d5628e0a37e80aa839199",
    "decimal-nan": "582ef97ef34f353fc7d01b7034abb80c",
    "uuid": "499ef108f723bb1d1e599b113ae0b151",
    "fraction": "950470f3c946499a1c724bb90c79b45b",
}
GOLDEN_ANCHORED = "29e400d481a3cc9ce48be5925965150c"
GOLDEN_DATAFRAME = "0fa3fcde53b0b2e8d0a59b969721ada2"
GOLDEN_SERIES = "14860e69098386f7172faf61a5b09a76"
GOLDEN_REGISTERED = "53af1629d9a3b68cf15edba710e0595f"


@pytest.mark.parametrize("name", sorted(GOLDEN_VALUES))
def test_golden_digests_of_canonical_forms(name: str) -> None:
    """Dates, times, Decimal, UUID and Fraction digests are pinned in scheme 2."""
    assert value_digest(GOLDEN_VALUES[name]) == GOLDEN_DIGESTS[name]


def test_golden_bytes_of_a_date() -> None:
    """A canonical form is `E`, its kind as a str, then the form's own encoding."""
    assert (
        encode(datetime.date(2024, 2, 29)).hex()
        == (
            "45" + "73" + "0400000000000000" + "64617465"  # E, str "date"
            "74" + "0300000000000000"  # tuple of 3
            "69" + "0200000000000000" + "e807"  # 2024
            "69" + "0100000000000000" + "02"  # 2
            "69" + "0100000000000000" + "1d"  # 29
        )
    )


def test_golden_anchored_paths() -> None:
    """Text and paths under the root are encoded relative to it; others as they are."""
    value = ["/proj/a/b.txt", pathlib.PurePosixPath("/proj/data"), "/elsewhere"]
    assert value_digest(value, root="/proj") == GOLDEN_ANCHORED
    assert encode("/proj/a/b.txt", root="/proj") == b"r" + encode("a/b.txt")[0:]
    assert encode("/proj", root="/proj") == b"r" + encode(".")
    assert encode("/project-2/x", root="/proj") == encode("/project-2/x")


def test_anchored_path_never_equals_the_relative_one() -> None:
    """`/root/x` under root and the relative `x` differ: injectivity is kept."""
    rel, anchored = pathlib.PurePosixPath("x"), pathlib.PurePosixPath("/r/x")
    assert encode(anchored, root="/r") != encode(rel, root="/r")
    assert encode("/r/x", root="/r") != encode("x", root="/r")


def test_the_same_value_under_two_roots_has_one_digest() -> None:
    """A copy of the project elsewhere encodes its own paths the same."""
    a = {"data": pathlib.PurePosixPath("/home/a/p/data"), "cfg": "/home/a/p/c.toml"}
    b = {"data": pathlib.PurePosixPath("/ci/w/x/p/data"), "cfg": "/ci/w/x/p/c.toml"}
    assert value_digest(a, root="/home/a/p") == value_digest(b, root="/ci/w/x/p")


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
        (decimal.Decimal("100"), decimal.Decimal("1E+2")),
        (decimal.Decimal("0"), decimal.Decimal("-0.000")),
        (fractions.Fraction(2, 4), fractions.Fraction(1, 2)),
        (datetime.timedelta(hours=24), datetime.timedelta(days=1)),
    ],
    ids=repr,
)
def test_equal_values_share_a_digest(a: Any, b: Any) -> None:
    """Values that compare equal get one digest, whatever their spelling."""
    assert a == b
    assert value_digest(a) == value_digest(b)


DIFFERENT = [
    datetime.date(2024, 1, 2),
    datetime.datetime(2024, 1, 2),
    datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
    datetime.time(0, 0),
    datetime.timedelta(0),
    decimal.Decimal("1"),
    decimal.Decimal("1.5"),
    decimal.Decimal("-1.5"),
    decimal.Decimal("Infinity"),
    fractions.Fraction(1, 3),
    uuid.UUID(int=1),
    1,
    "2024-01-02",
    (2024, 1, 2),
    1 + 0j,
]


def test_different_kinds_never_collide() -> None:
    """Each of these values has a digest of its own."""
    digests = [value_digest(v) for v in DIFFERENT]
    assert len(set(digests)) == len(digests)


@dataclasses.dataclass(frozen=True)
class Reading:
    sensor: str
    tags: frozenset[str]
    when: datetime.date


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Span(NamedTuple):
    start: int
    end: int


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.floats(allow_nan=True)
    | st.dates()
    | st.decimals(allow_nan=False)
    | st.sampled_from(Level),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.frozensets(st.text(max_size=5) | st.integers(), max_size=5)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.builds(Span, st.integers(), st.integers())
    ),
    max_leaves=12,
)
readings = st.builds(
    Reading, st.text(max_size=6), st.frozensets(st.text(max_size=4), max_size=6), st.dates()
)


@given(st.sets(st.text(max_size=6), max_size=12), st.randoms())
def test_set_digest_ignores_insertion_order(items: set[str], rnd: Any) -> None:
    """A set built in any order digests the same."""
    order = list(items)
    rnd.shuffle(order)
    assert value_digest(set(order)) == value_digest(items)
    assert value_digest(frozenset(reversed(order))) == value_digest(frozenset(items))


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=10), st.randoms())
def test_dict_digest_ignores_insertion_order(d: dict[str, int], rnd: Any) -> None:
    """A dict built in any order digests the same."""
    items = list(d.items())
    rnd.shuffle(items)
    assert value_digest(dict(items)) == value_digest(d)


def _digests_in_a_process(batch: list[Any], seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(TESTS)}
    code = (
        "import sys, json, cloudpickle\n"
        "from taskrun.fingerprint import value_digest\n"
        "batch = cloudpickle.loads(sys.stdin.buffer.read())\n"
        "print(json.dumps([value_digest(v) for v in batch]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=cloudpickle.dumps(batch),
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    result: list[str] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(st.lists(values | readings, min_size=1, max_size=25))
def test_digests_are_the_same_in_other_processes_and_hash_seeds(batch: list[Any]) -> None:
    """Random nested values (sets, dicts, dataclasses) digest alike under 2 hash seeds."""
    here = [value_digest(v) for v in batch]
    assert _digests_in_a_process(batch, "1") == here
    assert _digests_in_a_process(batch, "4242") == here


# --------------------------------------------------------------------------- numpy


@pytest.fixture
def np() -> Any:
    return pytest.importorskip("numpy")


def test_numpy_digest_ignores_memory_layout(np: Any) -> None:
    """C order, Fortran order, a strided view and swapped bytes of equal arrays agree."""
    a = np.arange(12, dtype="<i8").reshape(3, 4)
    fortran = np.asfortranarray(a)
    strided = np.arange(24, dtype="<i8").reshape(3, 8)[:, ::2] // 2
    swapped = a.astype(">i8")
    assert np.array_equal(a, strided)
    digests = {value_digest(x) for x in (a, fortran, strided, swapped)}
    assert len(digests) == 1


def test_numpy_digest_sees_dtype_shape_and_values(np: Any) -> None:
    """Same bytes, other dtype or shape; one other value: all different digests."""
    a = np.zeros(4, dtype="int32")
    others = [a, a.view("float32"), a.reshape(2, 2), np.array([0, 0, 0, 1], "int32")]
    assert len({value_digest(x) for x in others}) == 4


# --------------------------------------------------------------------------- pandas


@pytest.fixture
def pd() -> Any:
    return pytest.importorskip("pandas")


def _frame(pd: Any, np: Any) -> Any:
    # Explicit object dtypes: pandas 3 infers its "str" dtype where pandas 2 says object.
    df = pd.DataFrame(
        {
            "id": np.arange(3, dtype="int64"),
            "name": pd.Series(["a", "b", None], dtype=object),
            "x": [0.5, np.nan, 2.0],
        },
        index=pd.Index([10, 20, 30], name="k"),
    )
    df.columns = pd.Index(["id", "name", "x"], dtype=object)
    return df


def test_pandas_golden_digests(pd: Any, np: Any) -> None:
    """A DataFrame's and a Series' digests are pinned in scheme 2."""
    df = _frame(pd, np)
    assert value_digest(df) == GOLDEN_DATAFRAME
    assert value_digest(df["x"]) == GOLDEN_SERIES


def test_equal_frames_in_other_layouts_share_a_digest(pd: Any, np: Any) -> None:
    """Built by columns, from one 2-D block, copied, or round-tripped through CSV: one digest."""
    by_columns = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    block = pd.DataFrame(
        np.asfortranarray([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]), columns=["a", "b"]
    )
    consolidated = by_columns.copy()
    sliced = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [0.0, 4.0, 5.0, 6.0]}).iloc[1:]
    sliced = sliced.reset_index(drop=True)
    assert all(by_columns.equals(f) for f in (block, consolidated, sliced))
    assert len({value_digest(f) for f in (by_columns, block, consolidated, sliced)}) == 1


def test_a_range_index_digests_like_its_values(pd: Any) -> None:
    """A frame read back from a file (an int64 index) digests like the RangeIndex one."""
    a = pd.DataFrame({"v": [1, 2]})
    b = pd.DataFrame({"v": [1, 2]}, index=pd.Index([0, 1], dtype="int64"))
    assert value_digest(a) == value_digest(b)


def test_frame_digest_sees_names_dtypes_index_and_values(pd: Any, np: Any) -> None:
    """Each change a reader would notice gives another digest."""
    df = _frame(pd, np)
    variants = [
        df,
        df.rename(columns={"x": "y"}),
        df.astype({"id": "int32"}),
        df.set_axis([10, 20, 31]),
        df.rename_axis("key"),
        df.assign(x=[0.5, np.nan, 2.5]),
        df[["x", "id", "name"]],
        df.assign(name=pd.Series(["a", "b", "c"], index=df.index, dtype=object)),
    ]
    assert len({value_digest(v) for v in variants}) == len(variants)


def test_pandas_kinds_digest_canonically(pd: Any) -> None:
    """Categoricals, tz-aware times, strings, nullable ints and MultiIndex digest, stably."""
    frames = [
        pd.DataFrame({"c": pd.Categorical(["x", "y", "x"], categories=["y", "x"])}),
        pd.DataFrame({"t": pd.date_range("2024-01-01", periods=3, tz="UTC")}),
        pd.DataFrame({"s": pd.array(["a", None, "c"], dtype="string")}),
        pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64")}),
        pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)])),
    ]
    with _no_fallback():
        first = [value_digest(f) for f in frames]
        again = [value_digest(f.copy(deep=True)) for f in frames]
    assert first == again and len(set(first)) == len(first)


def test_pandas_is_never_imported_for_a_digest() -> None:
    """Digesting plain values and dates leaves pandas and NumPy unimported."""
    code = (
        "import sys, datetime, decimal\n"
        "from taskrun.fingerprint import value_digest, product_digest\n"
        "value_digest([datetime.date(2024, 1, 1), decimal.Decimal('1'), {1, 2}])\n"
        "product_digest({'a': datetime.datetime(2024, 1, 1)})\n"
        "print(sorted({'pandas', 'numpy'} & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- register_digest


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


class Model:
    def __init__(self, name: str, weights: list[float]) -> None:
        self.name = name
        self.weights = weights


class TinyModel(Model):
    pass


@pytest.fixture
def registered() -> Iterator[None]:
    from taskrun import digests

    saved = dict(digests._REGISTERED)
    register_digest(Model, lambda m: (m.name, tuple(m.weights)))
    yield
    digests._REGISTERED.clear()
    digests._REGISTERED.update(saved)
    digests._LOOKUP.clear()


def test_register_digest_is_public() -> None:
    """`taskrun.register_digest` is exported and is the digests module's function."""
    assert "register_digest" in taskrun.__all__
    assert taskrun.register_digest is register_digest


def test_registered_class_digests_by_its_form(registered: None) -> None:
    """Equal models share a digest; its encoding is pinned; a subclass is named apart."""
    with _no_fallback():
        a = product_digest(Model("m", [1.0, 2.0]))
        b = product_digest(Model("m", [1.0, 2.0]))
        other = product_digest(Model("m", [1.0, 2.5]))
        tiny = product_digest(TinyModel("m", [1.0, 2.0]))
    assert a == b == GOLDEN_REGISTERED
    assert len({a, other, tiny}) == 3


def test_a_failing_registered_function_is_an_error(registered: None) -> None:
    """A register_digest function that raises fails the digest, naming the class."""
    with pytest.raises(FingerprintError, match=r"register_digest function for .*Model"):
        product_digest(Model("m", None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "fn", "words"),
    [
        (int, repr, "already has a canonical encoding"),
        ("Model", repr, "is not a class"),
        (Model, 3, "is not a function"),
    ],
)
def test_register_digest_refuses_what_it_cannot_use(cls: Any, fn: Any, words: str) -> None:
    """Built-in types, non-classes and non-functions are refused with what to do."""
    with pytest.raises(DefinitionError, match=words):
        register_digest(cls, fn)


def test_fallback_warns_once_per_type_and_names_register_digest() -> None:
    """Two unknown products of one type in one run: one warning, naming register_digest."""
    warned: set[str] = set()
    # PT031 on purpose: two digests of one type in the block are the point: one warning.
    with pytest.warns(NonCanonicalProductWarning, match="register_digest") as caught:  # noqa: PT031
        product_digest([Opaque(1)], warned=warned)
        product_digest(Opaque(2), warned=warned)
    assert len(caught) == 1
    assert "test_digests.Opaque" in str(caught[0].message)


def test_fallback_warning_once_per_run_through_the_scheduler(
    tmp_path: Path, write_project: Any
) -> None:
    """Tasks returning one opaque class give one warning event in a run, and again next run."""
    write_project(
        tmp_path,
        """
        from taskrun import task

        class Blob:
            def __init__(self, n):
                self.n = n

        @task
        def one() -> Blob:
            return Blob(1)

        @task
        def two() -> Blob:
            return Blob(2)
        """,
    )
    reg = load_task_file(tmp_path / "tasks.py")
    for _ in range(2):
        seen: list[Any] = []
        taskrun.run(
            ["one", "two"],
            registry=reg,
            root=tmp_path,
            executor="inline",
            force_all=True,
            on_event=seen.append,
        )
        warnings = [e.message for e in seen if isinstance(e, ev.Warned)]
        assert len(warnings) == 1, warnings
        assert "tasks.Blob" in warnings[0] and "register_digest(Blob" in warnings[0]


# --------------------------------------------------------------------------- Path products


def test_a_plain_path_to_a_project_file_warns(tmp_path: Path) -> None:
    """A product that is a Path to an existing file in the project suggests File."""
    (tmp_path / "out.txt").write_text("x")
    with pytest.warns(PathProductWarning, match=r"return File\('out.txt'\)"):
        product_digest(pathlib.Path("out.txt"), root=tmp_path)
    with pytest.warns(PathProductWarning, match="out.txt"):
        product_digest({"report": tmp_path / "out.txt"}, root=tmp_path)


def test_a_path_to_nothing_or_a_directory_does_not_warn(tmp_path: Path) -> None:
    """Paths to missing files or directories, and File products, are quiet."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "f.txt").write_text("x")
    with _no_fallback():
        product_digest([pathlib.Path("missing.txt"), pathlib.Path("sub")], root=tmp_path)
        product_digest(taskrun.File("f.txt"), root=tmp_path)


def test_path_product_warning_reaches_the_run(tmp_path: Path, write_project: Any) -> None:
    """The scheduler reports the warning against the task."""
    write_project(
        tmp_path,
        """
        from pathlib import Path
        from taskrun import task

        @task
        def report() -> Path:
            Path("report.txt").write_text("hi")
            return Path("report.txt")
        """,
    )
    reg = load_task_file(tmp_path / "tasks.py")
    seen: list[Any] = []
    taskrun.run(["report"], registry=reg, root=tmp_path, executor="inline", on_event=seen.append)
    warned = [e for e in seen if isinstance(e, ev.Warned)]
    assert [e.task for e in warned] == ["report"]
    assert "File('report.txt')" in warned[0].message


# --------------------------------------------------------------------------- early cutoff

CUTOFF = """
    import dataclasses
    from taskrun import task
    {imports}

    @dataclasses.dataclass(frozen=True)
    class Summary:
        total: int
        names: frozenset[str]

    @task
    def upstream(n: int = 1) -> {product}:
        return {value}

    @task(deps=[upstream])
    def downstream(upstream: {product}) -> str:
        return repr(upstream)
"""


@pytest.mark.parametrize(
    ("imports", "product", "value"),
    [
        ("", "Summary", 'Summary(total=min(n, 1), names=frozenset({"b", "a"}))'),
        (
            "import pandas as pd",
            "pd.DataFrame",
            'pd.DataFrame({"a": [min(n, 1), 2], "b": ["x", "y"]})',
        ),
    ],
    ids=["dataclass", "dataframe"],
)
def test_early_cutoff_on_an_equal_product(
    tmp_path: Path, write_project: Any, imports: str, product: str, value: str
) -> None:
    """An upstream that reruns and returns an equal dataclass/DataFrame leaves its user cached."""
    if "pandas" in imports:
        pytest.importorskip("pandas")
    write_project(tmp_path, CUTOFF.format(imports=imports, product=product, value=value))
    reg = load_task_file(tmp_path / "tasks.py")
    first = taskrun.run(["downstream"], registry=reg, root=tmp_path, executor="inline")
    assert first.names("ran") == ["upstream", "downstream"]
    with _no_fallback():
        second = taskrun.run(
            ["downstream"],
            registry=reg,
            root=tmp_path,
            executor="inline",
            options={"upstream": {"n": 5}},
        )
    assert second.state("upstream") == "ran"
    assert second.state("downstream") == "cached"


class _no_fallback:  # noqa: N801 - reads as a statement
    """Fail if a digest falls back to pickle or warns about a path."""

    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", NonCanonicalProductWarning)
        warnings.simplefilter("error", PathProductWarning)

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)
