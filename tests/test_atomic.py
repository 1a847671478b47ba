"""taskrun.atomic: a file is replaced whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from taskrun.atomic import atomic_file, atomic_write


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    """The target holds the new bytes, and no temporary file is left beside it."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new", durable=True)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.json"]


def test_an_error_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    """A writer that raises leaves the target as it was and removes its temporary file."""
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"old")

    # PT012 on purpose: the test is a writer that raises after writing part of the file.
    with pytest.raises(RuntimeError, match="midway"), atomic_file(target, durable=False) as f:  # noqa: PT012
        f.write(b"half of the new")
        raise RuntimeError("midway")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["archive.tar.gz"]


def test_mode_sets_the_bits_and_none_follows_the_umask(tmp_path: Path) -> None:
    """mode= gives exactly those bits (not mkstemp's 0600); None gives 0666 less the umask."""
    atomic_write(tmp_path / "shared", b"x", durable=False, mode=0o664)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o664
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "plain", b"x", durable=False)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644


def test_a_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    """The helper creates no directories: a missing one is the caller's OSError."""
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such" / "file", b"x", durable=True)
    assert os.listdir(tmp_path) == []
