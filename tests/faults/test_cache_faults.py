"""Crafted and damaged cache directories: nothing corrupt is served, nothing hangs.

Every command runs as a real ``taskrun`` subprocess bounded by a timeout (a hang is a
failure, not a stuck suite); no test sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds per taskrun subprocess: a bound on hangs, not a speed assertion

# `big` returns a product above diskcache's 32 KiB inline limit and writes an output file
# of 64 KiB, so both its entry and its blob live in value files (xx/yy/<hex>.val).
TASKS = """
from pathlib import Path
from taskrun import task, File

@task(outputs=["build/big.bin"])
def big() -> bytes:
    Path("build").mkdir(exist_ok=True)
    Path("build/big.bin").write_bytes(bytes(range(256)) * 256)
    Path("runs.log").open("a").write("big\\n")
    return b"product" * 10_000

@task(deps=[big])
def size(big: bytes) -> int:
    return len(big)
"""


def taskrun(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``taskrun -C root ARGS`` in a subprocess with a timeout (TimeoutExpired fails the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(TASKS))
    taskrun(root, "run", check=True)
    return root


def cache_dir(root: Path) -> Path:
    return root / ".taskrun" / "cache"


def value_file(root: Path, tag: str) -> Path:
    """The value file of the (only) row with TAG."""
    # closing(): a connection's own `with` ends a transaction, it does not close it.
    with contextlib.closing(sqlite3.connect(cache_dir(root) / "cache.db")) as conn:
        rows = conn.execute(
            "SELECT filename FROM Cache WHERE tag = ? AND filename IS NOT NULL", (tag,)
        ).fetchall()
    assert len(rows) == 1, rows
    return cache_dir(root) / rows[0][0]


def runs(root: Path) -> int:
    return (root / "runs.log").read_text().count("big")


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("tag", ["entry", "blob"])
def test_value_file_symlinked_to_dev_zero_is_a_miss(project: Path, tag: str) -> None:
    """A value file replaced by a symlink to /dev/zero is refused at once, not read."""
    path = value_file(project, tag)
    path.unlink()
    path.symlink_to("/dev/zero")
    (project / "build" / "big.bin").unlink()  # so that a hit must read the blob
    proc = taskrun(project, "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_traceback(proc)
    assert "unusable" in proc.stdout + proc.stderr
    assert runs(project) == 2  # recomputed
    assert (project / "build" / "big.bin").read_bytes() == bytes(range(256)) * 256
    again = taskrun(project, "run", check=True)
    assert "2 cached" in again.stdout


@pytest.mark.parametrize("tag", ["entry", "blob"])
def test_run_over_a_fifo_value_file_does_not_hang(project: Path, tag: str) -> None:
    """A FIFO in place of a value file: the run finishes (bounded by TIMEOUT) and recomputes."""
    path = value_file(project, tag)
    path.unlink()
    os.mkfifo(path)
    (project / "build" / "big.bin").unlink()  # so that a hit must read the blob
    proc = taskrun(project, "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_traceback(proc)
    assert "not a regular file" in proc.stdout + proc.stderr
    assert runs(project) == 2
    assert (project / "build" / "big.bin").read_bytes() == bytes(range(256)) * 256


@pytest.mark.parametrize("tag", ["entry", "blob"])
def test_verify_over_a_fifo_value_file_does_not_hang(project: Path, tag: str) -> None:
    """`cache verify` reports a FIFO value file instead of blocking on it."""
    path = value_file(project, tag)
    path.unlink()
    os.mkfifo(path)
    verify = taskrun(project, "cache", "verify")
    assert verify.returncode == 1
    assert "not a regular file" in verify.stdout, verify.stdout
    assert_no_traceback(verify)


def test_value_file_of_another_size_is_refused(project: Path) -> None:
    """A value file grown behind the index's back is not read (its size is recorded)."""
    path = value_file(project, "entry")
    with path.open("ab") as f:
        f.write(b"\0" * 1000)
    verify = taskrun(project, "cache", "verify")
    assert verify.returncode == 1
    assert "the index records" in verify.stdout


def test_verify_finds_a_deleted_blob_file(project: Path) -> None:
    """`cache verify` reports a blob whose value file is gone, and the entry needing it."""
    value_file(project, "blob").unlink()
    verify = taskrun(project, "cache", "verify", "--json")
    assert verify.returncode == 1, verify.stdout
    problems = json.loads(verify.stdout)["problems"]
    kinds = sorted(p["kind"] for p in problems)
    assert kinds == ["blob", "entry"], problems
    assert any("missing" in p["reason"] for p in problems)
    # Removed (rw): the next run recomputes and restores a good file.
    assert taskrun(project, "run", check=True)
    assert runs(project) == 2
    assert taskrun(project, "cache", "verify").returncode == 0


def test_verify_finds_a_deleted_entry_file(project: Path) -> None:
    """An entry row whose value file is gone is reported, not called good."""
    value_file(project, "entry").unlink()
    verify = taskrun(project, "cache", "verify")
    assert verify.returncode == 1
    assert "value file is missing" in verify.stdout


def test_orphan_value_files_are_counted_and_collected(project: Path) -> None:
    """Value files no row names (a rollback, a kill) show in `info` and go with `gc`."""
    shard = cache_dir(project) / "ab" / "cd"
    shard.mkdir(parents=True, exist_ok=True)
    orphans = [shard / f"{i:028x}.val" for i in range(3)]
    for path in orphans:
        path.write_bytes(b"x" * 100_000)
    info = json.loads(taskrun(project, "cache", "info", "--json", check=True).stdout)
    assert info["orphans"] == {"files": 3, "bytes": 300_000}
    gc = taskrun(project, "cache", "gc", "--json", check=True)
    assert json.loads(gc.stdout)["removed_orphans"] == 3
    assert not any(p.exists() for p in orphans)
    after = json.loads(taskrun(project, "cache", "info", "--json", check=True).stdout)
    assert after["orphans"] == {"files": 0, "bytes": 0}
    assert after["entries"] == info["entries"]  # only orphans went
    assert "2 cached" in taskrun(project, "run", check=True).stdout


def test_clear_removes_orphans_too(project: Path) -> None:
    """`cache clear` leaves no value file behind, indexed or not."""
    shard = cache_dir(project) / "ab" / "cd"
    shard.mkdir(parents=True, exist_ok=True)
    (shard / ("0" * 28 + ".val")).write_bytes(b"x" * 1000)
    taskrun(project, "cache", "clear", check=True)
    left = list(cache_dir(project).glob("*/*/*.val"))
    assert left == []


# --------------------------------------------------------------------------- last run


INTERRUPTIBLE = """
import os, signal
from pathlib import Path
from taskrun import task

@task
def first() -> int:
    return 1

@task(deps=[first])
def second(first: int) -> int:
    if os.environ.get("STOP"):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this task is in flight
    return first + 1
"""


def test_gc_keep_last_run_ignores_an_interrupted_run(tmp_path: Path) -> None:
    """An interrupted run does not replace the last completed run that gc keeps."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(INTERRUPTIBLE))
    taskrun(root, "run", check=True)
    before = json.loads((cache_dir(root) / "last-run.json").read_text())
    env = {**os.environ, "STOP": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskrun",
            "-C",
            str(root),
            "run",
            "--force",
            "second",
            "--executor",
            "inline",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert proc.returncode == 130, proc.stdout + proc.stderr
    after = json.loads((cache_dir(root) / "last-run.json").read_text())
    assert after["used"] == before["used"] and len(after["used"]) == 2
    gc = json.loads(taskrun(root, "cache", "gc", "--keep-last-run", "--json", check=True).stdout)
    assert gc["removed"] == [] and gc["kept"] == 2


# --------------------------------------------------------------------------- the cache as an output


BUILD_ALL = """
from pathlib import Path
from taskrun import task

@task(outputs=["build/**"])
def make() -> str:
    Path("build/out").mkdir(parents=True, exist_ok=True)
    Path("build/out/a.txt").write_text("a")
    return "ok"
"""


def test_outputs_containing_the_cache_dir_are_an_error(tmp_path: Path) -> None:
    """outputs=['build/**'] with --cache-dir build/tcache: exit 2 naming both; nothing runs."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(BUILD_ALL))
    proc = taskrun(root, "run", "--cache-dir", "build/tcache")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = proc.stderr
    assert "'build/**'" in message and "'build/tcache'" in message, message
    assert "tasks.py:" in message
    assert not (root / "build" / "out").exists()  # nothing ran


def test_outputs_containing_dot_taskrun_are_an_error(tmp_path: Path) -> None:
    """outputs=['.taskrun/**'] names the default cache's home: exit 2 naming both."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(BUILD_ALL.replace("build/**", ".taskrun/**")))
    proc = taskrun(root, "run")
    assert proc.returncode == 2
    assert "'.taskrun/**'" in proc.stderr and "'.taskrun" in proc.stderr


def test_clean_never_lists_the_cache(tmp_path: Path) -> None:
    """`clean --dry-run` with outputs=['build/**'] and the cache in build/ skips the cache."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(BUILD_ALL))
    taskrun(root, "run", check=True)
    (root / "build" / "tcache").mkdir()
    (root / "build" / "tcache" / "cache.db").write_bytes(b"a cache")
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", "-C", str(root), "clean", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "TASKRUN_CACHE_DIR": "build/tcache"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "build/out/a.txt" in proc.stdout
    assert "tcache" not in proc.stdout
    cleaned = subprocess.run(
        [sys.executable, "-m", "taskrun", "-C", str(root), "clean"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "TASKRUN_CACHE_DIR": "build/tcache"},
    )
    assert cleaned.returncode == 0
    assert (root / "build" / "tcache" / "cache.db").read_bytes() == b"a cache"
    assert not (root / "build" / "out" / "a.txt").exists()


def test_dot_taskrun_output_glob_never_cleans_the_cache(tmp_path: Path) -> None:
    """Even a glob written over .taskrun (refused by run) does not let clean touch it."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(TASKS))
    taskrun(root, "run", check=True)
    (root / "tasks.py").write_text(textwrap.dedent(BUILD_ALL.replace("build/**", ".taskrun")))
    proc = taskrun(root, "clean", "--dry-run", check=True)
    assert "cache.db" not in proc.stdout and "nothing to clean" in proc.stdout
