"""Cache archives: export, verified all-or-nothing import, and refusal of tampered archives."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import tarfile
import time

import cloudpickle
import pytest
import xxhash

from taskrun.archive import export_archive, import_archive
from taskrun.cache import Cache, EntryMeta, OutputRecord, blob_digest
from taskrun.errors import UsageError


def fp_of(n: object) -> str:
    """A fingerprint-shaped name for test entry ``n``."""
    return xxhash.xxh3_128_hexdigest(f"entry-{n}".encode())


def store(cache: Cache, n: int, *, output: bytes | None = None) -> str:
    """Store entry ``n`` (product ``n * 10``), optionally with one output file."""
    outs = (
        ()
        if output is None
        else (OutputRecord(f"out/{n}.txt", blob_digest(output), 0o644, len(output)),)
    )
    meta = EntryMeta(fp_of(n), f"task{n}", {"n": n}, f"digest{n}", 1.0, time.time(), outs, 0)
    blobs = {} if output is None else {blob_digest(output): output}
    cache.store(meta, cloudpickle.dumps(n * 10), blobs)
    return fp_of(n)


@pytest.fixture
def source(tmp_path: pathlib.Path):
    """A signed cache with three entries, two of them sharing an output, and a recorded run."""
    with Cache(tmp_path / "a" / "cache", key=b"ci-secret") as c:
        for n in range(3):
            store(c, n, output=b"shared output\n" if n else b"own output\n")
        c.record_run([fp_of(0), fp_of(1)])
        yield c


@pytest.fixture
def archive(source: Cache, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "cache.tar.gz"
    export_archive(source, path)
    return path


@pytest.fixture
def dest(tmp_path: pathlib.Path):
    """An empty signed cache at another path."""
    with Cache(tmp_path / "b" / "cache", key=b"ci-secret") as c:
        yield c


def members(path: pathlib.Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path, "r:gz") as tar:
        return [
            (m, tar.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
            for m in tar
        ]


def rewrite(path: pathlib.Path, items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def assert_untouched(cache: Cache) -> None:
    info = cache.info()
    assert (info.entries, info.blobs) == (0, 0)


def test_round_trip_into_a_cache_elsewhere(archive: pathlib.Path, dest: Cache) -> None:
    """The last run's entries and their blobs arrive whole in a cache at another path."""
    report = import_archive(dest, archive)
    assert report.ok and set(report.taken) == {fp_of(0), fp_of(1)} and report.blobs == 2
    for n in (0, 1):
        entry = dest.lookup(fp_of(n))
        assert entry is not None and entry.load() == n * 10
        assert dest.get_blob(entry.meta.outputs[0].digest) is not None
    assert dest.lookup(fp_of(2)) is None
    assert dest.latest("task1") is not None


def test_export_names_entries_and_reports_the_missing(
    source: Cache, tmp_path: pathlib.Path
) -> None:
    """Named fingerprints are exported; absent ones are reported as skipped."""
    report = export_archive(source, tmp_path / "x.tgz", [fp_of(2), fp_of(9)])
    assert report.entries == (fp_of(2),)
    assert report.skipped == ((fp_of(9), "not in the cache (or unusable)"),)
    assert len(report.blobs) == 1


def test_export_is_reproducible(source: Cache, tmp_path: pathlib.Path) -> None:
    """Exporting the same entries twice gives the same bytes."""
    export_archive(source, tmp_path / "1.tgz")
    export_archive(source, tmp_path / "2.tgz")
    assert (tmp_path / "1.tgz").read_bytes() == (tmp_path / "2.tgz").read_bytes()


def test_export_without_a_recorded_run_is_refused(dest: Cache, tmp_path: pathlib.Path) -> None:
    """With no run recorded and nothing named, export says what to do."""
    with pytest.raises(UsageError, match="no run is recorded"):
        export_archive(dest, tmp_path / "x.tgz")
    assert not list(tmp_path.glob("*.tgz*"))


def test_import_keeps_entries_already_present(archive: pathlib.Path, source: Cache) -> None:
    """Entries the cache already has are reported present and left alone."""
    report = import_archive(source, archive)
    assert report.ok and report.taken == () and set(report.present) == {fp_of(0), fp_of(1)}


def test_import_needs_rw_mode(archive: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Importing into a read-only cache is a usage error."""
    with Cache(tmp_path / "ro", mode="read") as ro, pytest.raises(UsageError, match="'read'"):
        import_archive(ro, archive)


def test_flipped_byte_in_the_gzip_is_refused(archive: pathlib.Path, dest: Cache) -> None:
    """One flipped byte anywhere in the compressed file refuses the whole archive."""
    data = bytearray(archive.read_bytes())
    for at in (len(data) // 2, len(data) - 6):  # in the deflate stream, in the CRC trailer
        tampered = bytearray(data)
        tampered[at] ^= 0x40
        archive.write_bytes(bytes(tampered))
        report = import_archive(dest, archive)
        assert not report.ok and report.taken == ()
        assert_untouched(dest)


def test_flipped_byte_in_an_entry_is_refused(archive: pathlib.Path, dest: Cache) -> None:
    """A tampered envelope is refused even when the manifest is fixed up to match it."""
    items = members(archive)
    manifest_at = next(i for i, (m, _) in enumerate(items) if m.name == "manifest.json")
    entry_at = next(i for i, (m, _) in enumerate(items) if m.name.startswith("entries/"))
    info, raw = items[entry_at]
    assert raw is not None
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    items[entry_at] = (info, tampered)
    manifest = json.loads(items[manifest_at][1] or b"")
    manifest["entries"][info.name.split("/")[1]]["digest"] = xxhash.xxh3_128_hexdigest(tampered)
    items[manifest_at] = (items[manifest_at][0], json.dumps(manifest).encode())
    rewrite(archive, items)
    report = import_archive(dest, archive)
    assert report.refused == ((info.name, "digest mismatch (corrupt)"),)
    assert_untouched(dest)


def test_path_escaping_member_is_refused(
    archive: pathlib.Path, dest: Cache, tmp_path: pathlib.Path
) -> None:
    """An extra ``../evil`` member refuses the archive and writes nothing anywhere."""
    rewrite(archive, [*members(archive), (tarfile.TarInfo("../evil"), b"gotcha")])
    report = import_archive(dest, archive)
    assert (
        "../evil",
        "unexpected name (only manifest.json, entries/<hex>, blobs/<hex>)",
    ) in report.refused
    assert report.taken == ()
    assert not (tmp_path / "evil").exists() and not (archive.parent.parent / "evil").exists()
    assert_untouched(dest)


def test_absolute_member_is_refused(archive: pathlib.Path, dest: Cache) -> None:
    """An absolute member name refuses the archive."""
    rewrite(archive, [*members(archive), (tarfile.TarInfo(f"/entries/{fp_of(5)}"), b"x")])
    assert not import_archive(dest, archive).ok
    assert_untouched(dest)


@pytest.mark.parametrize(
    ("link_type", "kind"), [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link")]
)
def test_link_member_is_refused(
    archive: pathlib.Path, dest: Cache, link_type: bytes, kind: str
) -> None:
    """A symlink or hard link member, even under a valid name, refuses the archive."""
    link = tarfile.TarInfo(f"blobs/{fp_of(7)}")
    link.type = link_type
    link.linkname = "/etc/passwd"
    rewrite(archive, [*members(archive), (link, None)])
    report = import_archive(dest, archive)
    assert report.refused == ((f"blobs/{fp_of(7)}", f"not a regular file ({kind})"),)
    assert_untouched(dest)


def test_wrong_key_is_refused(archive: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Entries signed with another key are refused, each named."""
    with Cache(tmp_path / "other", key=b"not-the-ci-secret") as other:
        report = import_archive(other, archive)
        assert not report.ok and report.taken == ()
        assert {reason for _, reason in report.refused} == {
            "bad signature (signed with another key, or tampered with)"
        }
        assert len(report.refused) == 4  # two entries, two blobs
        assert_untouched(other)


def test_unsigned_archive_into_a_keyed_cache_is_refused(
    dest: Cache, tmp_path: pathlib.Path
) -> None:
    """An archive exported without a key cannot enter a cache that requires signatures."""
    with Cache(tmp_path / "unsigned") as plain:
        fp = store(plain, 1)
        export_archive(plain, tmp_path / "plain.tgz", [fp])
    report = import_archive(dest, tmp_path / "plain.tgz")
    assert report.refused == ((f"entries/{fp}", "unsigned, but a signing key is set"),)
    assert_untouched(dest)


def test_member_not_in_the_manifest_is_refused(
    archive: pathlib.Path, dest: Cache, source: Cache
) -> None:
    """A valid envelope smuggled in without a manifest line is refused."""
    got = source.read_entry_envelope(fp_of(2))
    assert got is not None
    rewrite(archive, [*members(archive), (tarfile.TarInfo(f"entries/{fp_of(2)}"), got[1])])
    report = import_archive(dest, archive)
    assert report.refused == ((f"entries/{fp_of(2)}", "not listed in the manifest"),)
    assert_untouched(dest)


def test_missing_manifest_is_refused(archive: pathlib.Path, dest: Cache) -> None:
    """An archive without its manifest is refused."""
    rewrite(archive, [(m, d) for m, d in members(archive) if m.name != "manifest.json"])
    report = import_archive(dest, archive)
    assert report.refused == (("manifest.json", "unusable manifest: missing"),)
    assert_untouched(dest)


def test_not_a_tar_is_refused(dest: Cache, tmp_path: pathlib.Path) -> None:
    """A gzip file that holds no tar is refused as such."""
    path = tmp_path / "junk.tgz"
    path.write_bytes(gzip.compress(b"hello, not a tar"))
    report = import_archive(dest, path)
    assert report.refused[0][0] == "junk.tgz" and "not a valid tar" in report.refused[0][1]
    assert_untouched(dest)


def test_archive_larger_than_the_cache_is_refused(tmp_path: pathlib.Path) -> None:
    """An archive that decompresses past the cache's size limit is refused unread."""
    with Cache(tmp_path / "big") as big:
        meta = EntryMeta(fp_of(1), "t", {}, "d", 1.0, time.time(), (), 0)
        big.store(meta, bytes(3 * 2**20))  # compresses to almost nothing
        export_archive(big, tmp_path / "big.tgz", [fp_of(1)])
    with Cache(tmp_path / "small", size_limit=2**20) as small:
        report = import_archive(small, tmp_path / "big.tgz")
        assert "uncompressed" in report.refused[0][1]
        assert_untouched(small)
