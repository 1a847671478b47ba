"""Tests for taskrun.files: content hashing, the stat cache, globs, capture, restore, clean."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path, PurePosixPath

import pytest
import xxhash

from taskrun import files
from taskrun.errors import CacheError, FingerprintError, IntegrityError, UsageError
from taskrun.files import (
    BlobMissingError,
    Dir,
    File,
    OutputError,
    StatCache,
    UnsafeEntryError,
    capture_outputs,
    clean_outputs,
    content_digest,
    file_digest,
    hashing,
    project_relative,
    restore_outputs,
    tree_digest,
)


def write(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file read by the hasher, in order."""
    calls: list[str] = []
    real = hashing._hash_file

    def counting(path: str) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashing, "_hash_file", counting)
    return calls


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing happens 10 s after the files were written, so stat entries are settled."""
    monkeypatch.setattr(hashing, "_now_ns", lambda: time.time_ns() + 10_000_000_000)


# --------------------------------------------------------------------------- File / Dir


def test_dir_glob_returns_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dir.glob yields File objects for files, so sorted(...) is a list[File]."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "src/b.py", "b")
    write(tmp_path / "src/pkg/a.py", "a")
    found = sorted(Dir("src").glob("**/*.py"))
    assert found == [File("src/b.py"), File("src/pkg/a.py")]
    assert all(type(p) is File for p in found)


def test_dir_iterdir_types_files_and_dirs(tmp_path: Path) -> None:
    """Dir.iterdir/rglob type files as File and directories as Dir."""
    write(tmp_path / "d/f.txt", "x")
    (tmp_path / "d/sub").mkdir()
    kinds = {p.name: type(p) for p in Dir(tmp_path / "d").iterdir()}
    assert kinds == {"f.txt": File, "sub": Dir}
    assert {type(p) for p in Dir(tmp_path).rglob("f.txt")} == {File}


# --------------------------------------------------------------------------- project_relative


def test_project_relative_normalizes_relative_paths(tmp_path: Path) -> None:
    """A relative path stays relative, normalized."""
    assert project_relative("a/./b/../c", tmp_path) == PurePosixPath("a/c")
    assert project_relative(File("src/x.py"), tmp_path) == PurePosixPath("src/x.py")


def test_project_relative_makes_inside_absolute_relative(tmp_path: Path) -> None:
    """An absolute path inside the root becomes relative to it."""
    assert project_relative(tmp_path / "build" / "out.txt", tmp_path) == PurePosixPath(
        "build/out.txt"
    )


@pytest.mark.parametrize("outside", ["/etc/passwd", "../elsewhere/x", "a/../../x"])
def test_project_relative_refuses_outside_paths(tmp_path: Path, outside: str) -> None:
    """A path outside the root is a usage error naming the path, the root and the fix."""
    with pytest.raises(UsageError) as info:
        project_relative(outside, tmp_path)
    message = str(info.value)
    assert outside in message and str(tmp_path) in message and "external" in message


def test_project_relative_external_ok_returns_absolute(tmp_path: Path) -> None:
    """With external_ok an outside path is returned absolute and normalized."""
    result = project_relative("../shared/data.csv", tmp_path / "proj", external_ok=True)
    assert result == PurePosixPath(tmp_path.as_posix()) / "shared/data.csv"


# --------------------------------------------------------------------------- file digests


def test_file_digest_is_xxh3_128_of_bytes(tmp_path: Path) -> None:
    """A file's digest is the xxh3-128 of its bytes (pinned)."""
    path = write(tmp_path / "f", b"hello taskrun\n")
    assert file_digest(path) == "e778159587fb63586fc60d7cdad84201"


def test_large_file_is_hashed_in_chunks(tmp_path: Path) -> None:
    """A file larger than one read chunk hashes like its whole bytes."""
    data = os.urandom(hashing._CHUNK * 2 + 12345)
    path = write(tmp_path / "big.bin", data)
    assert file_digest(path) == xxh(data)
    assert file_digest(path, stat_cache=StatCache(None)) == xxh(data)


def test_touch_keeps_digest(tmp_path: Path) -> None:
    """Touching a file (new mtime, same bytes) keeps its digest."""
    path = write(tmp_path / "f.txt", "same")
    cache = StatCache(None)
    before = cache.digest(path)
    os.utime(path, ns=(time.time_ns() + 5_000_000_000,) * 2)
    assert cache.digest(path) == before


def test_edit_changes_digest(tmp_path: Path) -> None:
    """Editing a file changes its digest."""
    path = write(tmp_path / "f.txt", "one")
    cache = StatCache(None)
    before = cache.digest(path)
    path.write_text("two, longer")
    assert cache.digest(path) != before


def test_unchanged_file_is_not_rehashed(tmp_path: Path, hash_calls: list[str], later: None) -> None:
    """A settled file whose stat did not change is answered from the stat cache."""
    path = write(tmp_path / "f.txt", "content")
    cache = StatCache(None)
    first = cache.digest(path)
    assert cache.digest(path) == first
    assert len(hash_calls) == 1


def test_stat_cache_persists_across_instances(
    tmp_path: Path, hash_calls: list[str], later: None
) -> None:
    """A flushed stat cache, reopened, still spares the read."""
    path = write(tmp_path / "f.txt", "content")
    cache_file = tmp_path / ".taskrun" / "stat-cache"
    StatCache(cache_file).digest(path)
    first = StatCache(cache_file)
    first.digest(path)
    first.flush()
    assert len(hash_calls) == 2  # nothing was flushed by the first instance
    assert StatCache(cache_file).digest(path) == xxh(b"content")
    assert len(hash_calls) == 2
    assert [p.name for p in cache_file.parent.iterdir()] == ["stat-cache"]  # no temp left


def test_racily_clean_entry_is_rehashed(tmp_path: Path, hash_calls: list[str]) -> None:
    """A file hashed within the time-stamp window of its mtime is read again next time."""
    path = write(tmp_path / "f.txt", "fresh")
    cache = StatCache(None)
    cache.digest(path)
    cache.digest(path)
    assert len(hash_calls) == 2


def test_same_size_same_mtime_edit_is_detected_when_racy(tmp_path: Path) -> None:
    """An edit keeping size and (forced) mtime right after hashing is still seen."""
    path = write(tmp_path / "f.txt", "aaaa")
    cache = StatCache(None)
    before = cache.digest(path)
    mtime = path.stat().st_mtime_ns
    path.write_text("bbbb")
    os.utime(path, ns=(mtime, mtime))
    assert path.stat().st_mtime_ns == mtime
    assert cache.digest(path) == xxh(b"bbbb") != before


def test_forged_mtime_edit_is_detected_on_settled_entry(tmp_path: Path, later: None) -> None:
    """Restoring the old mtime with os.utime after an edit cannot hide it (ctime counts)."""
    path = write(tmp_path / "f.txt", "aaaa")
    old = time.time_ns() - 60_000_000_000
    os.utime(path, ns=(old, old))
    cache = StatCache(None)
    assert cache.digest(path) == xxh(b"aaaa")
    time.sleep(0.01)  # so the edit's ctime differs even on a coarse clock tick
    path.write_text("bbbb")
    os.utime(path, ns=(old, old))
    assert cache.digest(path) == xxh(b"bbbb")


def test_damaged_stat_cache_file_is_ignored(tmp_path: Path) -> None:
    """A truncated or foreign stat-cache file is treated as empty, then replaced."""
    cache_file = write(tmp_path / "stat-cache", b'{"format": "taskrun-stat-ca')
    path = write(tmp_path / "f.txt", "x")
    cache = StatCache(cache_file)
    assert len(cache) == 0
    assert cache.digest(path) == xxh(b"x")


def test_flush_writes_settled_entries_only(tmp_path: Path, later: None) -> None:
    """flush persists the map; a reopened cache holds the entry."""
    cache_file = tmp_path / "sc"
    cache = StatCache(cache_file)
    cache.digest(write(tmp_path / "f.txt", "x"))
    cache.flush()
    assert len(StatCache(cache_file)) == 1


def test_digest_of_missing_file_is_fingerprint_error(tmp_path: Path) -> None:
    """Hashing a missing file is a FingerprintError naming it."""
    with pytest.raises(FingerprintError, match=r"nope\.txt"):
        file_digest(tmp_path / "nope.txt")
    with pytest.raises(FingerprintError, match=r"nope\.txt"):
        StatCache(None).digest(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- tree digests


def make_tree(root: Path, order: list[str]) -> Path:
    contents = {"a.txt": "a\n", "sub/b.txt": "b\n", "sub/deep/c.bin": "\x00c"}
    for name in order:
        write(root / name, contents[name])
    return root


def test_tree_digest_ignores_creation_order_and_location(tmp_path: Path) -> None:
    """Equal trees built in a different order, or copied elsewhere, hash the same."""
    one = make_tree(tmp_path / "one", ["a.txt", "sub/b.txt", "sub/deep/c.bin"])
    two = make_tree(tmp_path / "two", ["sub/deep/c.bin", "a.txt", "sub/b.txt"])
    copy = Path(shutil.copytree(one, tmp_path / "elsewhere" / "copy"))
    assert tree_digest(one) == tree_digest(two) == tree_digest(copy)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "a.txt").write_text("A\n"),
        lambda t: (t / "a.txt").rename(t / "a2.txt"),
        lambda t: (t / "a.txt").chmod(0o755),
        lambda t: write(t / "sub/new.txt", ""),
        lambda t: (t / "link").symlink_to("sub"),
    ],
    ids=["content", "rename", "exec-bit", "new-file", "new-symlink"],
)
def test_tree_digest_sees_changes(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Content, names, the executable bit and symlinks all change a tree's digest."""
    tree = make_tree(tmp_path / "t", ["a.txt", "sub/b.txt", "sub/deep/c.bin"])
    before = tree_digest(tree)
    change(tree)
    assert tree_digest(tree) != before


def test_tree_digest_does_not_follow_symlinks_out(tmp_path: Path) -> None:
    """A symlink inside a tree hashes as its target text; the target's content is not read."""
    outside = write(tmp_path / "outside" / "secret.txt", "v1")
    tree = make_tree(tmp_path / "t", ["a.txt"])
    (tree / "leak").symlink_to(outside.parent)
    before = tree_digest(tree)
    outside.write_text("v2")
    assert tree_digest(tree) == before


def test_tree_digest_is_pinned(tmp_path: Path) -> None:
    """The tree hashing scheme is pinned by a golden digest."""
    tree = tmp_path / "t"
    write(tree / "a.txt", "a\n")
    write(tree / "sub/run.sh", "#!/bin/sh\n", mode=0o755)
    (tree / "link").symlink_to("a.txt")
    assert tree_digest(tree) == "248841fa4ea8c0ffeffd5e58ca024909"


def test_tree_digest_with_stat_cache_agrees(
    tmp_path: Path, hash_calls: list[str], later: None
) -> None:
    """The stat cache changes how often files are read, never the tree digest."""
    tree = make_tree(tmp_path / "t", ["a.txt", "sub/b.txt", "sub/deep/c.bin"])
    cache = StatCache(None)
    plain = tree_digest(tree)
    assert tree_digest(tree, stat_cache=cache) == plain
    reads = len(hash_calls)
    assert tree_digest(tree, stat_cache=cache) == plain
    assert len(hash_calls) == reads


def test_content_digest_dispatches_on_disk(tmp_path: Path) -> None:
    """content_digest hashes a directory as a tree and a file as a file."""
    tree = make_tree(tmp_path / "t", ["a.txt"])
    assert content_digest(tree) == tree_digest(tree)
    assert content_digest(tree / "a.txt") == file_digest(tree / "a.txt")
    with pytest.raises(FingerprintError, match="missing"):
        content_digest(tmp_path / "missing")


# --------------------------------------------------------------------------- capture


def test_capture_collects_outputs_and_products(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared globs and File/Dir products are captured with digest, mode and bytes."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "build/a.o", "A", mode=0o644)
    write(tmp_path / "build/b.o", "B", mode=0o755)
    write(tmp_path / "site/index.html", "<p>")
    write(tmp_path / "report.txt", "R")
    captured = capture_outputs(["build/*.o"], tmp_path, extra=[Dir("site"), File("report.txt")])
    assert [(c.path, c.mode, c.data, c.digest) for c in captured] == [
        ("build/a.o", 0o644, b"A", xxh(b"A")),
        ("build/b.o", 0o755, b"B", xxh(b"B")),
        ("report.txt", 0o644, b"R", xxh(b"R")),
        ("site/index.html", 0o644, b"<p>", xxh(b"<p>")),
    ]


def test_capture_fails_when_declared_output_missing(tmp_path: Path) -> None:
    """A literal declared output the task did not write fails the task."""
    write(tmp_path / "build/other.txt", "")
    with pytest.raises(OutputError, match=r"declared output 'build/report\.txt' was not produced"):
        capture_outputs(["build/report.txt", "build/*.o"], tmp_path, task="report")


def test_capture_accepts_glob_matching_nothing(tmp_path: Path) -> None:
    """A glob that matches no file is not an error: the task produced none."""
    assert capture_outputs(["build/*.o"], tmp_path) == []


def test_capture_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    """An output that is a symlink leading outside the project fails the task."""
    secret = write(tmp_path / "outside.txt", "secret")
    root = tmp_path / "proj"
    (root / "build").mkdir(parents=True)
    (root / "build" / "leak.txt").symlink_to(secret)
    with pytest.raises(OutputError, match="outside the project"):
        capture_outputs(["build/*.txt"], root, task="t")


# --------------------------------------------------------------------------- restore


def stored(captured: list[files.CapturedFile]) -> tuple[list[tuple[str, str, int]], dict]:
    blobs = {c.digest: c.data for c in captured}
    return [(c.path, c.digest, c.mode) for c in captured], blobs


def test_restore_recreates_deleted_outputs(tmp_path: Path) -> None:
    """Deleted outputs come back byte-identical with the same mode."""
    write(tmp_path / "build/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(tmp_path / "build/deep/data.bin", os.urandom(3000), mode=0o640)
    records, blobs = stored(capture_outputs(["build"], tmp_path))
    originals = {r[0]: (tmp_path / r[0]).read_bytes() for r in records}
    shutil.rmtree(tmp_path / "build")
    report = restore_outputs(records, tmp_path, blobs.get)
    assert (report.restored, report.unchanged) == (2, 0)
    for rel, _, mode in records:
        assert (tmp_path / rel).read_bytes() == originals[rel]
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == mode


def test_restore_leaves_identical_files_untouched(tmp_path: Path) -> None:
    """A file already holding the recorded content and mode is not rewritten."""
    keep = write(tmp_path / "out/keep.txt", "same")
    gone = write(tmp_path / "out/gone.txt", "back")
    records, blobs = stored(capture_outputs(["out"], tmp_path))
    before = keep.stat()
    gone.unlink()
    report = restore_outputs(records, tmp_path, blobs.get, stat_cache=StatCache(None))
    after = keep.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (report.restored, report.unchanged, report.paths) == (1, 1, ("out/gone.txt",))


def test_restore_fixes_mode_without_rewriting(tmp_path: Path) -> None:
    """A file with the right content but the wrong mode is only chmod-ed."""
    path = write(tmp_path / "run.sh", "#!/bin/sh\n", mode=0o755)
    records, _ = stored(capture_outputs(["run.sh"], tmp_path))
    path.chmod(0o644)
    inode = path.stat().st_ino
    report = restore_outputs(records, tmp_path, lambda d: None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 and path.stat().st_ino == inode
    assert report.restored == 1


def test_restore_replaces_symlink_instead_of_writing_through(tmp_path: Path) -> None:
    """A symlink where an output belongs is replaced, its target left alone."""
    victim = write(tmp_path / "victim.txt", "precious")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "out.txt").symlink_to(victim)
    restore_outputs([("out.txt", xxh(b"new"), 0o644)], root, {xxh(b"new"): b"new"}.get)
    assert victim.read_text() == "precious"
    assert not (root / "out.txt").is_symlink() and (root / "out.txt").read_text() == "new"


def test_restore_rejects_malformed_records(tmp_path: Path) -> None:
    """A bad digest or mode in an entry is an IntegrityError, not a crash."""
    with pytest.raises(IntegrityError, match="digest"):
        restore_outputs([("a", "not-hex", 0o644)], tmp_path, lambda d: None)
    with pytest.raises(IntegrityError, match="mode"):
        restore_outputs([("a", xxh(b"a"), "0644")], tmp_path, lambda d: None)  # type: ignore[list-item]


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/../../x", "", "./."])
def test_restore_rejects_path_traversal(tmp_path: Path, bad: str) -> None:
    """Records escaping the root are refused before any file is written."""
    root = tmp_path / "proj"
    root.mkdir()
    records = [("ok.txt", xxh(b"ok"), 0o644), (bad, xxh(b"evil"), 0o644)]
    blobs = {xxh(b"ok"): b"ok", xxh(b"evil"): b"evil"}
    with pytest.raises(UnsafeEntryError):
        restore_outputs(records, root, blobs.get)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_restore_rejects_symlinked_parent_leading_outside(tmp_path: Path) -> None:
    """A parent directory that is a symlink out of the root makes the entry unsafe."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "proj"
    root.mkdir()
    (root / "build").symlink_to(outside)
    records = [("a.txt", xxh(b"a"), 0o644), ("build/evil.txt", xxh(b"e"), 0o644)]
    with pytest.raises(UnsafeEntryError, match="build"):
        restore_outputs(records, root, {xxh(b"a"): b"a", xxh(b"e"): b"e"}.get)
    assert list(outside.iterdir()) == []
    assert not (root / "a.txt").exists()


def test_restore_missing_blob_is_specific_error(tmp_path: Path) -> None:
    """A missing blob raises BlobMissingError and leaves no file or new directory behind."""
    records = [("x/a.txt", xxh(b"a"), 0o644), ("b/c.txt", xxh(b"c"), 0o644)]
    with pytest.raises(BlobMissingError) as info:
        restore_outputs(records, tmp_path, {xxh(b"a"): b"a"}.get)
    assert isinstance(info.value, CacheError) and info.value.path == "b/c.txt"
    assert list(tmp_path.iterdir()) == []


def test_restore_corrupt_blob_is_integrity_error(tmp_path: Path) -> None:
    """A blob whose bytes do not match the recorded digest is refused."""
    with pytest.raises(IntegrityError, match=r"a\.txt"):
        restore_outputs([("a.txt", xxh(b"a"), 0o644)], tmp_path, lambda d: b"tampered")
    assert list(tmp_path.iterdir()) == []


def test_restore_strips_setuid(tmp_path: Path) -> None:
    """Only permission bits are restored; setuid/setgid from an entry are dropped."""
    restore_outputs([("x", xxh(b"x"), 0o4755)], tmp_path, {xxh(b"x"): b"x"}.get)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o755


# --------------------------------------------------------------------------- clean


def test_clean_dry_run_then_real(tmp_path: Path) -> None:
    """A dry run lists what clean would remove; a real run removes exactly that."""
    write(tmp_path / "build/a.o", "")
    write(tmp_path / "build/sub/b.o", "")
    write(tmp_path / "report.txt", "")
    write(tmp_path / "src/main.c", "")
    specs = {"compile": ["build"], "report": ["report.txt", "*.log"]}
    expected = [PurePosixPath(p) for p in ["build/a.o", "build/sub/b.o", "report.txt"]]
    assert clean_outputs(specs, tmp_path, dry_run=True) == expected
    assert (tmp_path / "build/a.o").exists() and (tmp_path / "report.txt").exists()
    assert clean_outputs(specs, tmp_path, dry_run=False) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert (tmp_path / "src/main.c").exists()


def test_flush_drops_entries_of_deleted_files(tmp_path: Path, later: None) -> None:
    """Entries for files that no longer exist are not written back."""
    cache_file = tmp_path / "sc"
    gone = write(tmp_path / "gone.txt", "g")
    first = StatCache(cache_file)
    first.digest(gone)
    first.flush()
    gone.unlink()
    second = StatCache(cache_file)
    second.digest(write(tmp_path / "new.txt", "n"))
    second.flush()
    assert len(StatCache(cache_file)) == 1
