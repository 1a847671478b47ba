"""A full disk (a small tmpfs) and read-only places (read-only bind mounts).

These mount file systems, which needs root (CI runs as root); where mounting is not
permitted the tests skip and say so. Every mount is undone by its fixture. Every
``taskrun`` runs as a subprocess bounded by a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TIMEOUT = 180

# Ten tasks, each writing a 256 KiB output: more than a 2 MiB tmpfs can hold as blobs.
TASKS = (
    """
from pathlib import Path
from taskrun import task

def _make(i):
    @task(name=f"part{i}", outputs=[f"build/part{i}.bin"])
    def part() -> int:
        Path("build").mkdir(exist_ok=True)
        Path(f"build/part{i}.bin").write_bytes(bytes([i]) * 256 * 1024)
        return i
    return part

parts = [_make(i) for i in range(10)]

@task(deps=parts)
def total("""
    + ", ".join(f"part{i}: int" for i in range(10))
    + """) -> int:
    return """
    + " + ".join(f"part{i}" for i in range(10))
    + """
"""
)

PURE = """
from taskrun import task

@task
def numbers() -> list[int]:
    return list(range(10))

@task(deps=[numbers])
def total(numbers: list[int]) -> int:
    return sum(numbers)
"""


def taskrun(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=60).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("2m")`` mounts a tmpfs of that size and returns its directory."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        proc = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target))
        if proc.returncode:
            pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {proc.stderr}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        _umount(target)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """``read_only(dir)`` bind-mounts DIR read-only elsewhere and returns that path."""
    mounted: list[Path] = []

    def mount(source: Path) -> Path:
        target = tmp_path / f"ro{len(mounted)}"
        target.mkdir()
        proc = _mount("--bind", str(source), str(target))
        if proc.returncode:
            pytest.skip(f"bind mounts are not permitted here (needs root): {proc.stderr}")
        mounted.append(target)
        proc = _mount("-o", "remount,ro,bind", str(target))
        if proc.returncode:
            pytest.skip(f"cannot remount read-only here: {proc.stderr}")
        assert not os.access(target, os.W_OK)
        return target

    yield mount
    for target in reversed(mounted):
        _umount(target)


def fill(directory: Path) -> Path:
    """Fill the file system of DIRECTORY with a ballast file; return it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return ballast


def project(tmp_path: Path, source: str = TASKS) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(textwrap.dedent(source))
    return root


def check_outputs(root: Path) -> None:
    for i in range(10):
        assert (root / "build" / f"part{i}.bin").read_bytes() == bytes([i]) * 256 * 1024


def test_full_disk_during_a_run_ends_with_summary_and_exit_code(tmp_path: Path, tmpfs) -> None:
    """Stores fail on a full disk: warnings, the summary, exit 0; later runs are correct."""
    root = project(tmp_path)
    cache = tmpfs("2m") / "cache"
    proc = taskrun(root, "run", "--cache-dir", str(cache), "-j", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 tasks: 0 cached, 11 ran, 0 failed" in proc.stdout
    assert "could not store" in proc.stdout + proc.stderr
    check_outputs(root)
    # Whatever was stored is sound, and a second run serves it correctly.
    assert taskrun(root, "cache", "verify", "--cache-dir", str(cache)).returncode == 0
    for i in range(10):
        (root / "build" / f"part{i}.bin").unlink()
    again = taskrun(root, "run", "--cache-dir", str(cache), "-j", "1")
    assert again.returncode == 0
    assert "11 tasks:" in again.stdout
    check_outputs(root)
    info = json.loads(
        taskrun(root, "cache", "info", "--cache-dir", str(cache), "--json", check=True).stdout
    )
    gc = json.loads(
        taskrun(root, "cache", "gc", "--cache-dir", str(cache), "--json", check=True).stdout
    )
    assert gc["removed_orphans"] == info["orphans"]["files"]
    after = json.loads(
        taskrun(root, "cache", "info", "--cache-dir", str(cache), "--json", check=True).stdout
    )
    assert after["orphans"]["files"] == 0


def test_full_disk_before_a_run_reads_and_maintenance_frees_space(tmp_path: Path, tmpfs) -> None:
    """A cache on a full disk: the run hits (one warning); gc and clear then work."""
    root = project(tmp_path, PURE)
    disk = tmpfs("2m")
    cache = disk / "cache"
    taskrun(root, "run", "--cache-dir", str(cache), check=True)
    ballast = fill(disk)
    proc = taskrun(root, "run", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tasks: 2 cached" in proc.stdout
    out = proc.stdout + proc.stderr
    warnings = [line for line in out.splitlines() if "cannot be written" in line]
    assert len(warnings) == 1 and "no space left" in warnings[0], out
    forced = taskrun(root, "run", "--cache-dir", str(cache), "--force-all")
    assert forced.returncode == 0 and "2 tasks: 0 cached, 2 ran" in forced.stdout
    assert taskrun(root, "cache", "gc", "--cache-dir", str(cache)).returncode == 0
    cleared = taskrun(root, "cache", "clear", "--cache-dir", str(cache))
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "removed 2 entries" in cleared.stdout
    ballast.unlink()
    info = json.loads(
        taskrun(root, "cache", "info", "--cache-dir", str(cache), "--json", check=True).stdout
    )
    assert info["entries"] == 0 and info["orphans"]["files"] == 0


def test_clear_on_a_full_disk_frees_the_cache_files(tmp_path: Path, tmpfs) -> None:
    """The cache itself filled the disk: `cache clear` still works and frees its space."""
    root = project(tmp_path)
    disk = tmpfs("2m")
    cache = disk / "cache"
    taskrun(root, "run", "--cache-dir", str(cache), "-j", "1")
    fill(disk)
    cleared = taskrun(root, "cache", "clear", "--cache-dir", str(cache))
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert os.statvfs(disk).f_bavail > 0
    assert not list(cache.glob("*/*/*.val"))


def test_read_only_project_checkout_runs(tmp_path: Path, read_only) -> None:
    """A read-only checkout with the cache elsewhere: runs work, twice, without a traceback."""
    source = project(tmp_path, PURE)
    checkout = read_only(source)
    cache = tmp_path / "cache"
    first = taskrun(checkout, "run", "--cache-dir", str(cache))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 tasks: 0 cached, 2 ran" in first.stdout
    second = taskrun(checkout, "run", "--cache-dir", str(cache))
    assert second.returncode == 0 and "2 tasks: 2 cached" in second.stdout


def test_read_only_cache_in_rw_mode_is_read_with_one_warning(tmp_path: Path, read_only) -> None:
    """A read-only cache asked for in rw mode is read (hits), with one warning, never 'remove'."""
    root = project(tmp_path, PURE)
    cache = tmp_path / "cache"
    taskrun(root, "run", "--cache-dir", str(cache), check=True)
    shared = read_only(cache)
    proc = taskrun(root, "run", "--cache-dir", str(shared))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tasks: 2 cached" in proc.stdout
    out = proc.stdout + proc.stderr
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "read-only" in warnings[0], out
    assert "remove" not in (proc.stdout + proc.stderr).lower()
    # A task that must run still runs; nothing is written to the read-only cache.
    forced = taskrun(root, "run", "--cache-dir", str(shared), "--force", "total")
    assert forced.returncode == 0 and "1 ran" in forced.stdout
    verify = taskrun(root, "cache", "verify", "--cache-dir", str(shared))
    assert verify.returncode == 0 and "all good" in verify.stdout
