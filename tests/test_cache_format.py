"""The cache's on-disk format: auditing restored directories, and the read-only reader."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import xxhash

from taskrun.cache import Cache, EntryMeta
from taskrun.cache_format import StoreReader, audit_store
from taskrun.errors import IntegrityError


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A cache directory holding one entry, closed (no -wal or -shm left behind)."""
    directory = tmp_path / "cache"
    fp = xxhash.xxh3_128_hexdigest(b"one")
    with Cache(directory) as cache:
        meta = EntryMeta(fp, "t", {}, "p", 0.1, time.time(), (), 0)
        cache.store(meta, cloudpickle.dumps(1))
    return directory


def test_closing_leaves_no_wal_files(cache_dir: Path) -> None:
    """A closed rw cache leaves only cache.db, so read mode can open it touching nothing."""
    assert not (cache_dir / "cache.db-wal").exists()
    assert not (cache_dir / "cache.db-shm").exists()


def test_audit_passes_what_taskrun_wrote(cache_dir: Path, tmp_path: Path) -> None:
    """A cache taskrun made, and a directory that does not exist, are both fine."""
    assert audit_store(cache_dir) == []
    assert audit_store(tmp_path / "nothing-here") == []


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE Cache SET filename = '../../x', mode = 2", "a row names the file '../../x'"),
        (
            "UPDATE Cache SET filename = '/etc/passwd', mode = 2",
            "a row names the file '/etc/passwd'",
        ),
        ("CREATE VIEW v AS SELECT 1", "unexpected view 'v'"),
        (
            "DROP TRIGGER Settings_count_insert; CREATE TRIGGER Settings_count_insert AFTER INSERT"
            " ON Cache BEGIN DELETE FROM Cache; END",
            "unexpected trigger 'Settings_count_insert'",
        ),
        ("INSERT INTO Settings VALUES ('disk_store', 1)", "unknown setting 'disk_store'"),
        (
            "UPDATE Settings SET value = 'wal; DROP' WHERE key = 'sqlite_journal_mode'",
            "setting sqlite_journal_mode = 'wal; DROP'",
        ),
        (
            "UPDATE Settings SET value = 'evict-all' WHERE key = 'eviction_policy'",
            "eviction policy 'evict-all'",
        ),
    ],
)
def test_audit_finds_crafted_databases(cache_dir: Path, sql: str, problem: str) -> None:
    """Stray file names, views, altered triggers and odd settings are each reported."""
    with sqlite3.connect(cache_dir / "cache.db") as db:
        db.executescript(sql)
    db.close()
    assert any(p.startswith(problem) for p in audit_store(cache_dir))


def test_audit_finds_symlinked_value_directories(cache_dir: Path, tmp_path: Path) -> None:
    """A value directory that is a symlink (writes would land elsewhere) is reported."""
    (cache_dir / "ab").symlink_to(tmp_path)
    assert audit_store(cache_dir) == ["ab is not a plain directory"]


class _FailingOnce:
    """A connection whose first query fails the way a file changed under it does."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.failed = False

    def execute(self, sql: str, args: Any = ()) -> Any:
        if not self.failed:
            self.failed = True
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self.real.execute(sql, args)

    def close(self) -> None:
        self.real.close()


def test_immutable_reader_reconnects_when_the_file_changes(cache_dir: Path) -> None:
    """A read-mode reader whose immutable view breaks looks again the ordinary way."""
    reader = StoreReader(cache_dir, live=False)
    assert reader.count("entry") == 1  # opens immutable: no -wal exists
    reader._conn = _FailingOnce(reader._conn)  # type: ignore[arg-type,assignment]
    assert reader.count("entry") == 1
    assert reader._immutable is False
    reader.close()


def _opened_or_error(source: bytes | io.BytesIO, key: bytes | None) -> object:
    from taskrun.cache_format import KIND_ENTRY, open_envelope

    try:
        return open_envelope(source, kind=KIND_ENTRY, name="n", key=key)
    except IntegrityError as exc:
        return f"IntegrityError: {exc}"


@pytest.mark.parametrize("key", [None, b"k" * 32], ids=["unsigned", "signed"])
def test_envelope_bytes_and_stream_are_checked_alike(key: bytes | None) -> None:
    """open_envelope of bytes (a hit's fast path) says exactly what the stream form says,
    for the intact envelope and every cut, extension and flipped byte of it."""
    from taskrun.cache_format import KIND_ENTRY, seal

    good = seal(KIND_ENTRY, "n", b'{"meta": 1}', b"payload bytes", key, version=2)
    variants = [good[:n] for n in range(len(good))] + [good + b"x", good + good]
    variants += [good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1 :] for i in range(len(good))]
    outcomes = set()
    for raw in [good, *variants]:
        from_bytes = _opened_or_error(raw, key)
        assert from_bytes == _opened_or_error(io.BytesIO(raw), key), raw
        outcomes.add(from_bytes if isinstance(from_bytes, str) else "opened")
    assert _opened_or_error(good, key) != _opened_or_error(good[:-1], key)
    assert {"opened", "IntegrityError: digest mismatch (corrupt)"} <= outcomes
    assert any("payload bytes missing" in o for o in outcomes)
    assert "IntegrityError: trailing bytes after the payload" in outcomes
    if key is not None:
        assert any("bad signature" in o for o in outcomes)
        assert _opened_or_error(good, None) == _opened_or_error(io.BytesIO(good), None)
