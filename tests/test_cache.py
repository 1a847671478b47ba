"""The result cache: round trips, verification before unpickling, modes, limits, gc, locks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import warnings

import cloudpickle
import diskcache
import pytest
import xxhash

from taskrun.cache import (
    Cache,
    CacheWarning,
    EntryMeta,
    OutputRecord,
    StoreResult,
    blob_digest,
)
from taskrun.errors import CacheError, ConfigError, IntegrityError, UsageError


def fp_of(n: object) -> str:
    """A fingerprint-shaped name for test entry ``n``."""
    return xxhash.xxh3_128_hexdigest(f"entry-{n}".encode())


def meta_for(
    fp: str,
    *,
    task: str = "t",
    product_digest: str = "p",
    created: float | None = None,
    outputs: tuple[OutputRecord, ...] = (),
) -> EntryMeta:
    return EntryMeta(
        fingerprint=fp,
        task=task,
        components={"option": {"n": 1}},
        product_digest=product_digest,
        compute_time=1.5,
        created=time.time() if created is None else created,
        outputs=outputs,
        size=0,
    )


def output(path: str, data: bytes) -> OutputRecord:
    return OutputRecord(path, blob_digest(data), 0o644, len(data))


class Boom:
    """Unpickling this raises."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (_boom, ())


def _boom() -> None:
    raise RuntimeError("unpickled")


class Evil:
    """Unpickling this writes a marker file: the attack a signature must stop."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.write_text, (self.marker, "pwned"))


@pytest.fixture
def warned() -> list[str]:
    return []


@pytest.fixture
def cache_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: pathlib.Path, warned: list[str]):
    with Cache(cache_dir, on_warning=warned.append) as c:
        yield c


def raw_set(directory: pathlib.Path, key: str, value: object, tag: str = "entry") -> None:
    with diskcache.Cache(str(directory)) as dc:
        dc.set(key, value, tag=tag)


def raw_get(directory: pathlib.Path, key: str) -> bytes:
    with diskcache.Cache(str(directory)) as dc:
        value = dc.get(key)
    assert isinstance(value, bytes)
    return value


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(directory.rglob("*"))
    }


# ---- round trips


def test_round_trip(cache: Cache) -> None:
    """A stored product comes back equal, with its metadata."""
    fp = fp_of(1)
    assert cache.store(meta_for(fp), cloudpickle.dumps({"a": [1, 2]})) is StoreResult.STORED
    entry = cache.lookup(fp)
    assert entry is not None
    assert entry.load() == {"a": [1, 2]}
    assert entry.meta.task == "t" and entry.meta.components == {"option": {"n": 1}}
    assert entry.meta.size == len(cloudpickle.dumps({"a": [1, 2]}))


def test_round_trip_signed_large(cache_dir: pathlib.Path) -> None:
    """A signed product large enough to live in its own file comes back equal."""
    product = list(range(50_000))
    with Cache(cache_dir, key=b"secret") as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(product))
        entry = c.lookup(fp_of(1))
        assert entry is not None and entry.load() == product


def test_absent_entry_is_a_silent_miss(cache: Cache, warned: list[str]) -> None:
    """Looking up an unknown fingerprint gives None and no warning."""
    assert cache.lookup(fp_of("nothing")) is None
    assert warned == []


def test_outputs_round_trip_and_dedup(cache: Cache) -> None:
    """Output blobs come back verified; equal outputs of two entries are stored once."""
    data = b"report\n" * 10_000
    out = output("build/report.txt", data)
    for n in (1, 2):
        cache.store(meta_for(fp_of(n), outputs=(out,)), cloudpickle.dumps(n), {out.digest: data})
    assert cache.get_blob(out.digest) == data
    assert cache.info().blobs == 1
    assert cache.put_blob(data) == out.digest and cache.info().blobs == 1


def test_lookup_does_not_unpickle(cache: Cache) -> None:
    """A hit is not unpickled until load(); an unloadable product fails only then."""
    cache.store(meta_for(fp_of(1)), cloudpickle.dumps(Boom()))
    entry = cache.lookup(fp_of(1))
    assert entry is not None
    with pytest.raises(CacheError, match="cannot unpickle"):
        entry.load()


def test_bad_fingerprint_is_a_usage_error(cache: Cache) -> None:
    """Fingerprints must be 32 hex digits (they name files and archive members)."""
    with pytest.raises(UsageError, match="32 lowercase hex"):
        cache.lookup("../../etc/passwd")


def test_store_rejects_a_blob_under_the_wrong_digest(cache: Cache) -> None:
    """A blob handed in under another digest is a caller error."""
    out = output("a.txt", b"a")
    with pytest.raises(UsageError, match="has digest"):
        cache.store(meta_for(fp_of(1), outputs=(out,)), b"", {out.digest: b"b"})


def test_store_rejects_an_output_outside_the_project(cache: Cache) -> None:
    """An output path that climbs out of the project is refused."""
    bad = OutputRecord("../outside.txt", blob_digest(b"x"), 0o644, 1)
    with pytest.raises(UsageError, match="relative path"):
        cache.store(meta_for(fp_of(1), outputs=(bad,)), b"", {bad.digest: b"x"})


# ---- verification


def test_corrupt_entry_is_a_miss_and_replaced(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """A flipped byte makes a miss with a warning; the entry is removed and can be stored again."""
    fp = fp_of(1)
    with Cache(cache_dir, on_warning=warned.append) as c:
        c.store(meta_for(fp), cloudpickle.dumps("first"))
    raw = raw_get(cache_dir, fp)
    raw_set(cache_dir, fp, flip(raw, len(raw) - 3))
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp) is None
        assert "digest mismatch" in warned[0]
        assert c.info().entries == 0
        assert c.store(meta_for(fp), cloudpickle.dumps("again")) is StoreResult.STORED
        entry = c.lookup(fp)
        assert entry is not None and entry.load() == "again"


def test_corrupt_file_on_disk_is_a_miss(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """A flipped byte in a large entry's value file on disk is caught."""
    fp = fp_of(1)
    with Cache(cache_dir, on_warning=warned.append) as c:
        c.store(meta_for(fp), cloudpickle.dumps(b"x" * 100_000))
    (value_file,) = cache_dir.glob("??/??/*.val")
    data = value_file.read_bytes()
    value_file.write_bytes(flip(data, 5000))
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp) is None
    assert len(warned) == 1 and fp in warned[0]


def test_truncated_entry_is_a_miss(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """An entry cut short is a miss with a warning, and removed."""
    fp = fp_of(1)
    with Cache(cache_dir, on_warning=warned.append) as c:
        c.store(meta_for(fp), cloudpickle.dumps("product"))
    raw_set(cache_dir, fp, raw_get(cache_dir, fp)[:-4])
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp) is None
        assert c.info().entries == 0
    assert "truncated" in warned[0]


def test_mis_signed_entry_is_a_miss(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """An entry signed with another key is a miss with a warning."""
    with Cache(cache_dir, key=b"theirs") as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(1))
    with Cache(cache_dir, key=b"ours", on_warning=warned.append) as c:
        assert c.lookup(fp_of(1)) is None
    assert "bad signature" in warned[0]


def test_unsigned_entry_with_a_key_is_a_miss(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """With a key set, an unsigned entry is refused; a later signed store replaces it."""
    with Cache(cache_dir) as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(1))
    with Cache(cache_dir, key=b"ours", on_warning=warned.append) as c:
        assert c.lookup(fp_of(1)) is None
        assert c.store(meta_for(fp_of(1)), cloudpickle.dumps(2)) is StoreResult.STORED
        entry = c.lookup(fp_of(1))
        assert entry is not None and entry.load() == 2
    assert "unsigned" in warned[0]


def test_signed_entry_is_read_without_a_key(cache_dir: pathlib.Path) -> None:
    """Without a key, a signed entry is checked by its digest alone."""
    with Cache(cache_dir, key=b"k") as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(1))
    with Cache(cache_dir) as c:
        entry = c.lookup(fp_of(1))
        assert entry is not None and entry.load() == 1


@pytest.mark.parametrize("writer_key", [b"attacker", None], ids=["mis-signed", "unsigned"])
def test_malicious_payload_is_never_unpickled(
    tmp_path: pathlib.Path, cache_dir: pathlib.Path, warned: list[str], writer_key: bytes | None
) -> None:
    """A payload that runs code on unpickling, not signed with our key, never runs."""
    marker = tmp_path / "pwned"
    with Cache(cache_dir, key=writer_key) as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(Evil(marker)))
    with Cache(cache_dir, key=b"ours", on_warning=warned.append) as c:
        assert c.lookup(fp_of(1)) is None
        assert list(c.entries()) == []
    assert not marker.exists()
    assert len(warned) == 1


def test_payload_swapped_after_lookup_is_never_unpickled(
    tmp_path: pathlib.Path, cache_dir: pathlib.Path
) -> None:
    """load() re-verifies: bytes replaced after the lookup are refused, not unpickled."""
    marker = tmp_path / "pwned"
    with Cache(cache_dir, key=b"ours") as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps("good"))
        entry = c.lookup(fp_of(1))
        assert entry is not None
        with Cache(tmp_path / "other", key=b"attacker") as evil:
            evil.store(meta_for(fp_of(1)), cloudpickle.dumps(Evil(marker)))
            forged = raw_get(tmp_path / "other", fp_of(1))
        raw_set(cache_dir, fp_of(1), forged)
        with pytest.raises(IntegrityError, match="bad signature"):
            entry.load()
    assert not marker.exists()


def test_pickled_diskcache_row_is_never_unpickled(
    tmp_path: pathlib.Path, cache_dir: pathlib.Path, warned: list[str]
) -> None:
    """A row diskcache would unpickle on get() is refused unread (we never use its get)."""
    marker = tmp_path / "pwned"
    Cache(cache_dir).close()
    raw_set(cache_dir, fp_of(1), Evil(marker))
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp_of(1)) is None
    assert not marker.exists()
    assert "diskcache mode" in warned[0]


def test_entry_copied_to_another_fingerprint_is_refused(
    cache_dir: pathlib.Path, warned: list[str]
) -> None:
    """An envelope stored under a fingerprint that is not its own is a miss."""
    with Cache(cache_dir) as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(1))
    raw_set(cache_dir, fp_of(2), raw_get(cache_dir, fp_of(1)))
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp_of(2)) is None
        assert c.lookup(fp_of(1)) is not None
    assert "stored under" in warned[0]


def test_default_warning_is_a_cache_warning(cache_dir: pathlib.Path) -> None:
    """Without on_warning, problems are emitted as CacheWarning."""
    with Cache(cache_dir, key=b"a") as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(1))
    with Cache(cache_dir, key=b"b") as c, pytest.warns(CacheWarning, match="bad signature"):
        assert c.lookup(fp_of(1)) is None


def test_corrupt_blob_is_none_with_warning(
    cache: Cache, cache_dir: pathlib.Path, warned: list[str]
) -> None:
    """A corrupt blob reads as None with a warning, and its entry is then a miss."""
    data = b"output"
    out = output("out.txt", data)
    cache.store(meta_for(fp_of(1), outputs=(out,)), cloudpickle.dumps(1), {out.digest: data})
    raw_set(cache_dir, out.digest, flip(raw_get(cache_dir, out.digest), -1), tag="blob")
    assert cache.get_blob(out.digest) is None
    assert "blob" in warned[0]
    assert cache.lookup(fp_of(1)) is None


# ---- modes


def test_read_mode_writes_nothing(cache_dir: pathlib.Path, warned: list[str]) -> None:
    """In read mode every operation leaves the directory unchanged byte for byte."""
    data = b"blob"
    out = output("o.txt", data)
    with Cache(cache_dir) as c:
        c.store(meta_for(fp_of(2), task="u"), cloudpickle.dumps(2))
        c.store(meta_for(fp_of(1), outputs=(out,)), cloudpickle.dumps(1), {out.digest: data})
        c.record_run([fp_of(1)])
    raw_set(cache_dir, fp_of(2), raw_get(cache_dir, fp_of(2))[:-1])  # one corrupt entry
    before = snapshot(cache_dir)
    with Cache(cache_dir, mode="read", on_warning=warned.append) as c:
        entry = c.lookup(fp_of(1))
        assert entry is not None and entry.load() == 1
        assert c.lookup(fp_of(2)) is None
        assert c.get_blob(out.digest) == data
        assert [m.fingerprint for m in c.entries()] == [fp_of(1)]
        assert c.latest("t") is not None
        assert c.info().entries == 2
        assert not c.verify().removed
        with c.lock(fp_of(3)):
            pass
        c.record_run([fp_of(1)])
        assert c.store(meta_for(fp_of(3)), b"") is StoreResult.NOT_WRITABLE
        for action in (lambda: c.put_blob(b"x"), c.gc, c.clear):
            with pytest.raises(UsageError, match="'read' mode"):
                action()
    assert snapshot(cache_dir) == before
    assert warned  # the corrupt entry was reported, not removed


def test_read_mode_on_a_missing_directory_creates_nothing(cache_dir: pathlib.Path) -> None:
    """A read-mode cache whose directory does not exist is empty and stays absent."""
    with Cache(cache_dir, mode="read") as c:
        assert c.lookup(fp_of(1)) is None
        assert c.info().entries == 0
    assert not cache_dir.exists()


def test_off_mode_creates_nothing(cache_dir: pathlib.Path) -> None:
    """With the cache off, nothing is looked up, stored or created."""
    with Cache(cache_dir, mode="off") as c:
        assert c.store(meta_for(fp_of(1)), b"") is StoreResult.NOT_WRITABLE
        assert not c.store(meta_for(fp_of(1)), b"")
        assert c.lookup(fp_of(1)) is None
        with c.lock(fp_of(1)):
            pass
        c.record_run([fp_of(1)])
    assert not cache_dir.exists()


def test_unknown_mode_is_a_usage_error(cache_dir: pathlib.Path) -> None:
    """A misspelt mode is refused with a suggestion."""
    with pytest.raises(UsageError, match="did you mean 'read'"):
        Cache(cache_dir, mode="raed")  # type: ignore[arg-type]


def test_settings_from_the_environment() -> None:
    """The key and mode come from TASKRUN_CACHE_KEY and TASKRUN_CACHE_MODE."""
    assert Cache.key_from_env({"TASKRUN_CACHE_KEY": "sécret"}) == "sécret".encode()
    assert Cache.key_from_env({"TASKRUN_CACHE_KEY": ""}) is None
    assert Cache.mode_from_env(environ={"TASKRUN_CACHE_MODE": "read"}) == "read"
    assert Cache.mode_from_env(environ={}) == "rw"
    with pytest.raises(ConfigError, match="TASKRUN_CACHE_MODE"):
        Cache.mode_from_env(environ={"TASKRUN_CACHE_MODE": "write"})


# ---- non-determinism and incomplete entries


def test_store_keeps_the_first_entry(cache: Cache) -> None:
    """Storing again keeps the first entry and says whether the product digest differed."""
    fp = fp_of(1)
    cache.store(meta_for(fp, product_digest="d1"), cloudpickle.dumps("first"))
    assert (
        cache.store(meta_for(fp, product_digest="d1"), cloudpickle.dumps("first"))
        is StoreResult.KEPT_SAME
    )
    assert (
        cache.store(meta_for(fp, product_digest="d2"), cloudpickle.dumps("second"))
        is StoreResult.KEPT_DIFFERENT
    )
    assert str(StoreResult.KEPT_DIFFERENT) == "kept-existing-different"
    entry = cache.lookup(fp)
    assert entry is not None and entry.load() == "first"


def test_entry_missing_a_blob_is_a_miss_and_replaced(
    cache: Cache, cache_dir: pathlib.Path, warned: list[str]
) -> None:
    """An entry whose output blob was evicted is a silent miss; a new store replaces it."""
    first, second = output("o.txt", b"first"), output("o.txt", b"second")
    cache.store(
        meta_for(fp_of(1), product_digest="d1", outputs=(first,)),
        cloudpickle.dumps(1),
        {first.digest: b"first"},
    )
    with diskcache.Cache(str(cache_dir)) as dc:
        dc.delete(first.digest)
    assert cache.lookup(fp_of(1)) is None
    assert warned == []
    assert (
        cache.store(
            meta_for(fp_of(1), product_digest="d2", outputs=(second,)),
            cloudpickle.dumps(2),
            {second.digest: b"second"},
        )
        is StoreResult.STORED
    )
    entry = cache.lookup(fp_of(1))
    assert entry is not None and entry.load() == 2


# ---- size, gc, clear, verify


def test_size_limit_keeps_the_volume_bounded(cache_dir: pathlib.Path) -> None:
    """Past the size limit the oldest entries are evicted and the newest stays."""
    limit = 400_000
    with Cache(cache_dir, size_limit=limit, on_warning=lambda _: None) as c:
        for n in range(25):
            c.store(meta_for(fp_of(n)), cloudpickle.dumps(os.urandom(40_000)))
            assert c.info().size_bytes <= limit
        assert c.lookup(fp_of(24)) is not None
        assert c.lookup(fp_of(0)) is None
        assert c.info().entries < 25


def test_eviction_keeps_what_fits_and_says_what_went(cache_dir: pathlib.Path) -> None:
    """Over the limit, only the least recently stored entries go, never the one just
    stored nor the tasks' pointers, and a warning says how many and how much."""
    warned: list[str] = []
    with Cache(cache_dir, size_limit=1_000_000, on_warning=warned.append) as c:
        for n in range(8):  # 300 kB each (kept in value files): three fit
            c.store(meta_for(fp_of(n), task=f"t{n % 2}"), cloudpickle.dumps(os.urandom(300_000)))
            assert c.lookup(fp_of(n)) is not None
            assert c.info().entries == min(n + 1, 3)
            assert c.info().size_bytes <= 1_000_000
        assert [fp for fp in map(fp_of, range(8)) if c.has_entry(fp)] == [
            fp_of(5),
            fp_of(6),
            fp_of(7),
        ]
        assert c.latest("t1") is not None and c.latest("t1").fingerprint == fp_of(7)
    assert len(warned) == 5
    assert all(
        w.startswith("the cache is over its size limit (976.6 KiB): evicted 1 entry, the least")
        and "raise cache-size in [tool.taskrun]" in w
        for w in warned
    ), warned


def test_gc_max_size_shrinks_a_cache_of_small_entries(cache: Cache) -> None:
    """Small entries live in the database itself: gc removes the oldest until the cache
    fits, and keeps the rest."""
    for n in range(60):  # 20 kB each: stored in the database itself
        cache.store(meta_for(fp_of(n)), cloudpickle.dumps(os.urandom(20_000)))
    report = cache.gc(max_size=400_000)
    info = cache.info()
    assert info.size_bytes <= 400_000
    assert info.entries == report.kept >= 12, (info, report)  # about 400 kB / 20 kB
    assert cache.lookup(fp_of(59)) is not None and cache.lookup(fp_of(0)) is None


def test_eviction_of_entries_kept_in_the_database(cache_dir: pathlib.Path) -> None:
    """Small entries live in the database itself: eviction keeps about as many as fit."""
    limit = 600_000
    with Cache(cache_dir, size_limit=limit, on_warning=lambda _: None) as c:
        for n in range(120):  # 20 kB each: stored in the database itself
            c.store(meta_for(fp_of(n)), cloudpickle.dumps(os.urandom(20_000)))
            assert c.lookup(fp_of(n)) is not None
        info = c.info()
        assert info.size_bytes <= limit
        assert info.entries >= 20, info  # about limit / 20 kB, not a few


def test_a_result_larger_than_the_limit_is_kept_with_a_warning(cache_dir: pathlib.Path) -> None:
    warned: list[str] = []
    with Cache(cache_dir, size_limit=100_000, on_warning=warned.append) as c:
        c.store(meta_for(fp_of(1)), cloudpickle.dumps(os.urandom(50_000)))
        c.store(meta_for(fp_of(2)), cloudpickle.dumps(os.urandom(300_000)))
        assert c.lookup(fp_of(2)) is not None and c.lookup(fp_of(1)) is None
    assert "evicted 1 entry" in warned[0]
    assert warned[1].startswith("the results just stored (")
    assert "are larger than the cache size limit (97.7 KiB); they are kept" in warned[1]


def test_size_limit_counts_output_blobs(cache_dir: pathlib.Path) -> None:
    """Output blobs count toward the size limit too (it is checked once per stored batch)."""
    limit = 400_000
    warned: list[str] = []
    with Cache(cache_dir, size_limit=limit, on_warning=warned.append) as c:
        for n in range(25):
            data = os.urandom(40_000)
            meta = meta_for(fp_of(n), outputs=(output(f"o{n}.bin", data),))
            c.store_many([(meta, cloudpickle.dumps(n), {blob_digest(data): data})])
            assert c.info().size_bytes <= limit
        assert c.lookup(fp_of(24)) is not None
        assert c.info().entries == c.info().blobs  # an entry's output goes with it
    assert "evicted 1 entry and 1 output file, the least recently stored" in warned[-1]


def test_gc_max_age(cache: Cache) -> None:
    """gc(max_age=) removes exactly the entries created longer ago."""
    now = time.time()
    for n, age in enumerate([1000, 10, 2000, 5]):
        cache.store(meta_for(fp_of(n), created=now - age), cloudpickle.dumps(n))
    report = cache.gc(max_age=500)
    assert set(report.removed) == {fp_of(0), fp_of(2)}
    assert {m.fingerprint for m in cache.entries()} == {fp_of(1), fp_of(3)}


def test_gc_max_size_removes_the_oldest(cache: Cache) -> None:
    """gc(max_size=) removes the oldest entries until the cache fits."""
    for n in range(5):
        cache.store(meta_for(fp_of(n), created=1000.0 + n), cloudpickle.dumps(os.urandom(100_000)))
    report = cache.gc(max_size=260_000)
    assert {m.fingerprint for m in cache.entries()} == {fp_of(3), fp_of(4)}
    assert report.kept == 2 and report.freed_bytes > 250_000
    assert cache.info().size_bytes <= 260_000


def test_gc_keep_last_run(cache: Cache) -> None:
    """gc(keep_last_run=True) keeps exactly the used entries and the blobs they need."""
    shared, own = b"shared", b"own"
    for n in range(4):
        outs = (output("s.txt", shared), output(f"o{n}.txt", own + bytes([n])))
        cache.store(
            meta_for(fp_of(n), outputs=outs),
            cloudpickle.dumps(n),
            {o.digest: d for o, d in zip(outs, (shared, own + bytes([n])), strict=True)},
        )
    cache.record_run([fp_of(1), fp_of(3)])
    report = cache.gc(keep_last_run=True)
    assert {m.fingerprint for m in cache.entries()} == {fp_of(1), fp_of(3)}
    assert report.removed_blobs == 2 and cache.info().blobs == 3
    assert cache.lookup(fp_of(1)) is not None and cache.lookup(fp_of(3)) is not None


def test_gc_keep_last_run_without_a_record_refuses(cache: Cache) -> None:
    """With no recorded run, --keep-last-run refuses rather than empty the cache."""
    cache.store(meta_for(fp_of(1)), b"")
    with pytest.raises(UsageError, match="no completed run is recorded"):
        cache.gc(keep_last_run=True)
    assert cache.info().entries == 1


def test_gc_keeps_held_locks_held(cache: Cache, cache_dir: pathlib.Path) -> None:
    """gc never removes a lock that is held: another opener still cannot take it."""
    with cache.lock(fp_of(1)):
        pass
    other = Cache(cache_dir)
    try:
        with cache.lock(fp_of(2)):
            cache.gc()
            assert other.try_lock(fp_of(2)) is None
            free = other.try_lock(fp_of(1))
            assert free is not None
            free.release()
        taken = other.try_lock(fp_of(2))
        assert taken is not None
        taken.release()
    finally:
        other.close()


def test_locks_do_not_create_a_file_per_fingerprint(cache: Cache, cache_dir: pathlib.Path) -> None:
    """Locking many fingerprints leaves one small lock file, not one file each (Linux)."""
    import sys

    if sys.platform != "linux":
        pytest.skip("open-file-description locks are Linux-only; elsewhere one file each")
    for i in range(50):
        with cache.lock(fp_of(i)):
            pass
    # `writers` is held shared by each process with the cache open rw (gc's orphan sweep)
    names = sorted(p.name for p in (cache_dir / "locks").iterdir())
    assert names == ["fingerprints.lock", "writers"]


def test_clear_one_task(cache: Cache) -> None:
    """clear(task) removes that task's entries and their blobs, nothing else."""
    data = b"a-out"
    out = output("a.txt", data)
    cache.store(meta_for(fp_of(1), task="a", outputs=(out,)), b"", {out.digest: data})
    cache.store(meta_for(fp_of(2), task="a"), b"")
    cache.store(meta_for(fp_of(3), task="b"), b"")
    assert cache.clear("a") == 2
    assert [m.task for m in cache.entries()] == ["b"]
    assert cache.info().blobs == 0 and cache.latest("a") is None


def test_clear_everything(cache: Cache) -> None:
    """clear() empties the cache and forgets the last run."""
    cache.store(meta_for(fp_of(1)), b"")
    cache.record_run([fp_of(1)])
    assert cache.clear() == 1
    assert cache.info().entries == 0 and cache.last_run() is None


def test_verify_reports_and_removes_bad_items(cache: Cache, cache_dir: pathlib.Path) -> None:
    """verify() names every bad entry and blob, removes them, and keeps the good ones."""
    data = b"blob"
    out = output("o.txt", data)
    cache.store(meta_for(fp_of(1), outputs=(out,)), b"", {out.digest: data})
    cache.store(meta_for(fp_of(2)), b"")
    cache.store(meta_for(fp_of(3)), b"")
    raw_set(cache_dir, fp_of(2), flip(raw_get(cache_dir, fp_of(2)), 40))
    raw_set(cache_dir, out.digest, raw_get(cache_dir, out.digest)[:-1], tag="blob")
    report = cache.verify()
    assert {(p.kind, p.name) for p in report.problems} == {
        ("entry", fp_of(1)),
        ("entry", fp_of(2)),
        ("blob", out.digest),
    }
    assert report.entries == 3 and report.blobs == 1 and report.removed
    assert cache.verify().ok
    assert [m.fingerprint for m in cache.entries()] == [fp_of(3)]


# ---- bookkeeping


def test_latest_is_the_last_stored(cache: Cache) -> None:
    """latest(task) is the entry stored last for that task, whatever its creation time."""
    cache.store(meta_for(fp_of(1), created=1.0), b"")
    cache.store(meta_for(fp_of(2), created=3.0), b"")
    cache.store(meta_for(fp_of(3), created=2.0), b"")
    cache.store(meta_for(fp_of(4), task="other"), b"")
    latest = cache.latest("t")
    assert latest is not None and latest.fingerprint == fp_of(3)
    assert cache.latest("nobody") is None


def test_meta_json_is_sorted_compact_ascii_json() -> None:
    """Entry metadata is json.dumps(sort_keys, compact, no NaN): the bytes older entries have."""
    import json

    from taskrun.cache_values import meta_json

    meta = dataclasses.replace(
        meta_for(fp_of(1), task="tâche"),
        components={"z": {"b": [1, 2.5, None], "a": "é\u2028"}, "a": True},
        outputs=(output("out/ü.txt", b"data"),),
    )
    expected = json.dumps(meta.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert meta_json(meta) == expected.encode() and meta_json(meta).isascii()
    with pytest.raises(UsageError, match="not JSON-able"):
        meta_json(dataclasses.replace(meta, compute_time=float("nan")))


def test_latest_is_the_last_of_a_batch(cache: Cache) -> None:
    """In one store_many, the task's pointer ends at its last item (and moves on later)."""
    cache.store_many([(meta_for(fp_of(n)), b"x", {}) for n in (1, 2, 3)])
    latest = cache.latest("t")
    assert latest is not None and latest.fingerprint == fp_of(3)
    cache.store_many([(meta_for(fp_of(4)), b"x", {}), (meta_for(fp_of(5), task="u"), b"", {})])
    latest = cache.latest("t")
    assert latest is not None and latest.fingerprint == fp_of(4)


def test_primed_latest_serves_one_read(cache: Cache) -> None:
    """A pointer read by prime_latest() answers the next latest() only; then it is read anew."""
    cache.store(meta_for(fp_of(1)), b"")
    cache.prime_latest(["t", "nobody"])
    cache.store(meta_for(fp_of(2)), b"")  # a store of a new entry keeps what was primed
    first, second = cache.latest("t"), cache.latest("t")
    assert first is not None and first.fingerprint == fp_of(1)  # as read at prime time
    assert second is not None and second.fingerprint == fp_of(2)
    assert cache.latest("nobody") is None
    cache.prime_latest(["t"])
    cache.unprime()
    cache.store(meta_for(fp_of(3)), b"")
    latest = cache.latest("t")
    assert latest is not None and latest.fingerprint == fp_of(3)


def test_batched_rows_are_the_rows_diskcache_writes(cache_dir: pathlib.Path) -> None:
    """Entries and pointers written in bulk read back through diskcache; its books balance."""
    small = [(meta_for(fp_of(n), task=f"t{n % 3}"), cloudpickle.dumps(n), {}) for n in range(20)]
    product = {fp_of(n): n for n in range(20)}
    large = (meta_for(fp_of("big"), task="t0"), os.urandom(100_000), {})  # a value file
    with Cache(cache_dir) as c:
        c.store_many([(meta_for(fp_of(0), task="t0"), b"first", {})])  # an entry kept
        results = c.store_many([*small, large, small[5]])
        assert [str(r) for r in results] == ["kept-existing-same"] + ["stored"] * 21
        for meta, *_ in small[1:]:
            entry = c.lookup(meta.fingerprint)
            assert entry is not None and entry.load() == product[meta.fingerprint]
    columns = "key, raw, expire_time, access_count, tag, size, mode, filename"
    with diskcache.Cache(str(cache_dir)) as dc:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dc.check()  # count, size and value files against the rows (and our lock files)
        assert [str(w.message) for w in caught if "/locks/" not in str(w.message)] == []
        rows = {r[0]: r[1:] for r in dc._sql(f"SELECT {columns} FROM Cache").fetchall()}
        assert len(dc) == len(rows) == 21 + 3  # entries + one pointer per task
        for meta, *_ in small[1:]:
            assert rows[meta.fingerprint] == (1, None, 0, "entry", 0, diskcache.core.MODE_RAW, None)
        for task, n in (("t0", "big"), ("t1", 19), ("t2", 5)):
            assert rows[f"task:{task}"][:6] == (1, None, 0, "task", 0, diskcache.core.MODE_RAW)
            assert dc.get(f"task:{task}") == fp_of(n).encode()
        assert rows[fp_of("big")][6] is not None  # kept in a file, as diskcache does


def test_latest_after_gc_is_the_newest_remaining(cache: Cache) -> None:
    """When gc removes a task's latest entry, latest() moves to its newest remaining one."""
    now = time.time()
    cache.store(meta_for(fp_of(1), created=now - 10), b"")
    cache.store(meta_for(fp_of(2), created=now - 5), b"")
    cache.store(meta_for(fp_of(3), created=now - 1000), b"")
    cache.gc(max_age=500)
    latest = cache.latest("t")
    assert latest is not None and latest.fingerprint == fp_of(2)
    cache.gc(max_age=0)
    assert cache.latest("t") is None


def test_record_run_counts_hits_and_misses(cache: Cache, cache_dir: pathlib.Path) -> None:
    """The last run's used fingerprints and hit rate are recorded in last-run.json."""
    cache.store(meta_for(fp_of(1)), b"")
    with Cache(cache_dir) as run:
        assert run.lookup(fp_of(1)) is not None
        assert run.lookup(fp_of(2)) is None
        run.store(meta_for(fp_of(2)), b"")
        run.record_run([fp_of(1), fp_of(2)])
    info = cache.info()
    assert (info.last_run_hits, info.last_run_misses, info.hit_rate) == (1, 1, 0.5)
    last = cache.last_run()
    assert last is not None and last.used == {fp_of(1), fp_of(2)}
    assert not list(cache_dir.glob(".last-run.json.*"))  # no temporary file left behind


# ---- processes


LOCKER = """
import pathlib, sys, time
import cloudpickle
from taskrun.cache import Cache, EntryMeta
directory, fp, counter = sys.argv[1:4]
with Cache(pathlib.Path(directory)) as cache, cache.lock(fp):
    if cache.lookup(fp) is None:
        with open(counter, "a") as f:
            f.write("computed\\n")
        time.sleep(0.5)
        meta = EntryMeta(fp, "t", {}, "p", 0.5, time.time(), (), 0)
        cache.store(meta, cloudpickle.dumps("product"))
    print(cache.lookup(fp).load())
"""


def test_two_processes_compute_once(tmp_path: pathlib.Path, cache_dir: pathlib.Path) -> None:
    """Two processes wanting one fingerprint: one computes, the other waits and hits."""
    counter = tmp_path / "counter"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(cache_dir), fp_of(1), str(counter)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["product\n", "product\n"]
    assert counter.read_text() == "computed\n"


HOLDER = """
import pathlib, sys, time
from taskrun.cache import Cache
cache = Cache(pathlib.Path(sys.argv[1]))
with cache.lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_killed_lock_holder_does_not_block(cache: Cache, cache_dir: pathlib.Path) -> None:
    """A lock holder killed with SIGKILL releases the lock for the next one."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache_dir), fp_of(1)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    assert cache.try_lock(fp_of(1)) is None  # held by the other process
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    acquired = threading.Event()

    def take() -> None:
        with cache.lock(fp_of(1)):
            acquired.set()

    # A daemon thread so a regression fails the test instead of hanging the suite.
    threading.Thread(target=take, daemon=True).start()
    assert acquired.wait(timeout=60)


def test_try_lock_does_not_wait(cache: Cache) -> None:
    """try_lock gives None while the lock is held and a lock once it is released."""
    held = cache.try_lock(fp_of(1))
    assert held is not None
    assert cache.try_lock(fp_of(1)) is None
    held.release()
    held.release()  # idempotent
    with cache.try_lock(fp_of(1)) as again:
        assert again is not None


WRITER = """
import pathlib, sys, time
import cloudpickle
from taskrun.cache import Cache, EntryMeta, OutputRecord, blob_digest
directory, start = sys.argv[1], int(sys.argv[2])
shared = b"shared output" * 100
with Cache(pathlib.Path(directory)) as cache:
    for n in range(start, start + 20):
        fp = f"{n:032x}"
        out = OutputRecord("s.txt", blob_digest(shared), 0o644, len(shared))
        meta = EntryMeta(fp, "t", {}, str(n), 0.0, time.time(), (out,), 0)
        cache.store(meta, cloudpickle.dumps(n), {out.digest: shared})
        cache.record_run([fp])
"""


def test_concurrent_writers(cache_dir: pathlib.Path) -> None:
    """Processes storing into one cache at once leave every entry whole and readable."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(start)])
        for start in (0, 10)
    ]  # they overlap on fingerprints 10..19
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with Cache(cache_dir) as c:
        assert c.verify().ok
        assert {m.fingerprint for m in c.entries()} == {f"{n:032x}" for n in range(30)}
        assert c.info().blobs == 1
        assert c.last_run() is not None


def test_a_relative_directory_opens_in_every_mode(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cache("rel/dir", mode="read") works like an absolute path."""
    monkeypatch.chdir(tmp_path)
    with Cache(pathlib.Path("rel")) as writer:
        writer.store(meta_for(fp_of(1)), b"x")
    with Cache(pathlib.Path("rel"), mode="read") as reader:
        assert reader.lookup(fp_of(1)) is not None


# ---- format 2: the hit head, legacy entries, primed look-ups


def _legacy_store(directory: pathlib.Path, meta: EntryMeta, payload: bytes, key=None) -> None:
    """Store an entry the way taskrun did before format 2 (TRC1, meta JSON only)."""
    from taskrun.cache_format import KIND_ENTRY, seal
    from taskrun.cache_values import meta_json

    meta = dataclasses.replace(meta, size=len(payload))
    raw_set(
        directory,
        meta.fingerprint,
        seal(KIND_ENTRY, meta.fingerprint, meta_json(meta), payload, key),
    )


def test_entries_are_stored_in_format_2_with_a_hit_head(cache: Cache, cache_dir) -> None:
    """A new entry is a TRC2 envelope whose hit head gives what a hit reads."""
    from taskrun.cache_format import split_entry_meta

    fp = fp_of("v2")
    cache.store(meta_for(fp, task="build", product_digest="d" * 32), cloudpickle.dumps(7))
    raw = raw_get(cache_dir, fp)
    assert raw[:4] == b"TRC2"
    entry = cache.lookup(fp)
    assert entry is not None
    assert (entry.fingerprint, entry.task, entry.product_digest, entry.compute_time) == (
        fp,
        "build",
        "d" * 32,
        1.5,
    )
    assert entry.outputs == () and entry.load() == 7
    assert entry.meta.components == {"option": {"n": 1}}  # parsed only when asked for
    opened_meta = raw[35 : 35 + int.from_bytes(raw[7:11], "big")]
    head, rest = split_entry_meta(opened_meta)
    assert head.fingerprint == fp and rest.startswith(b"{")


def test_legacy_format_1_entries_still_hit(cache_dir: pathlib.Path, warned) -> None:
    """An entry written before format 2 (TRC1) is read the old way: a hit, outputs too."""
    data = b"old output"
    fp = fp_of("legacy")
    with Cache(cache_dir, on_warning=warned.append) as c:
        c.put_blob(data)
    _legacy_store(
        cache_dir, meta_for(fp, outputs=(output("out.txt", data),)), cloudpickle.dumps("old")
    )
    plain = fp_of("legacy-plain")
    _legacy_store(cache_dir, meta_for(plain), cloudpickle.dumps("plain"))
    with Cache(cache_dir, on_warning=warned.append) as c:
        entry = c.lookup(fp)
        assert entry is not None and entry.load() == "old"
        assert [o.path for o in entry.outputs] == ["out.txt"]
        lean = c.lookup(plain)
        assert lean is not None and lean.outputs == () and lean.load() == "plain"
        assert lean.meta.components == {"option": {"n": 1}}  # re-read when asked for
        assert c.verify().problems == ()
    assert warned == []


def test_a_hit_head_that_disagrees_with_the_metadata_is_refused(cache_dir, warned) -> None:
    """A TRC2 entry whose head and JSON disagree is corrupt: a miss, never a hit."""
    from taskrun.cache_format import KIND_ENTRY, HitHead, entry_head, seal
    from taskrun.cache_values import meta_json

    fp = fp_of("liar")
    meta = meta_for(fp, outputs=())
    head = HitHead(fp, 1.5, 1, "t", "p")  # claims an output the JSON does not have
    raw_set(
        cache_dir,
        fp,
        seal(
            KIND_ENTRY,
            fp,
            entry_head(head) + meta_json(meta),
            cloudpickle.dumps(1),
            None,
            version=2,
        ),
    )
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp) is None
    assert any("hit head does not match" in w for w in warned)


def test_a_hit_head_under_another_fingerprint_is_refused(cache_dir, warned) -> None:
    """A TRC2 entry copied under another key is a miss, like a format-1 one."""
    with Cache(cache_dir, on_warning=warned.append) as c:
        c.store(meta_for(fp_of("a")), cloudpickle.dumps(1))
    raw_set(cache_dir, fp_of("b"), raw_get(cache_dir, fp_of("a")))
    with Cache(cache_dir, on_warning=warned.append) as c:
        assert c.lookup(fp_of("b")) is None
    assert any("is stored under" in w for w in warned)


def test_a_primed_answer_serves_one_lookup_only(cache: Cache, cache_dir) -> None:
    """prime() reads ahead for the next lookup of each key; later ones read again."""
    fp = fp_of("primed")
    cache.prime([fp])  # absent when primed
    with Cache(cache_dir) as other:
        other.store(meta_for(fp), cloudpickle.dumps(1))
    assert cache.lookup(fp) is None  # the primed answer
    assert cache.lookup(fp) is not None  # read again
    cache.prime([fp, fp_of("other")])
    cache.unprime()
    with Cache(cache_dir) as other:
        other.clear()
    assert cache.lookup(fp) is None  # unprime() dropped the read-ahead


def _open_cache_files(directory: pathlib.Path) -> list[str]:
    """Descriptors of this process open on ``directory``'s database files (Linux /proc)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory / "cache.db")):
                found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_close_closes_the_connections_of_every_thread_that_used_the_cache(
    tmp_path: pathlib.Path,
) -> None:
    """A cache opened on one thread, used on others and closed on yet another (as
    taskrun.start and the thread executor do) leaves no SQLite connection open: diskcache
    alone closes only the closing thread's (ResourceWarnings on Python 3.13)."""
    directory = tmp_path / "c"
    cache = Cache(directory)
    stored: list[str] = []

    def use(n: int) -> None:
        stored.append(cache.put_blob(f"blob {n}".encode()))

    users = [threading.Thread(target=use, args=(n,)) for n in range(3)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    assert len(stored) == 3 and _open_cache_files(directory)
    closer = threading.Thread(target=cache.close)
    closer.start()
    closer.join()
    assert _open_cache_files(directory) == []
    # A thread that uses the cache after close gets a fresh connection, not a closed one.
    assert cache.put_blob(b"after close") and cache.has_blob(stored[0])
    cache.close()
    assert _open_cache_files(directory) == []
