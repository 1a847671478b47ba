"""Crafted cache archives: a decompression bomb is refused with bounded memory.

The peak RSS of ``taskrun cache import`` is measured in a fresh wrapper process
(``RUSAGE_CHILDREN`` of that wrapper sees only the import), so other tests' children do
not count. It is a bound on memory, not a timing assertion.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

TIMEOUT = 300
MEMORY_BOUND_KIB = 200 * 1024  # generous: the import itself needs a few MiB

MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=240)
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def bomb(path: Path, gib: int, name: str = "blobs/" + "0" * 32) -> Path:
    """A .tar.gz whose one member is GIB GiB of zeros, in about a MiB per GiB.

    gzip allows concatenated members, so the file is the tar header, then one
    compressed MiB of zeros repeated, then the tar trailer: built in milliseconds.
    """
    size = gib * 2**30
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    mib = gzip.compress(bytes(2**20), compresslevel=9, mtime=0)
    with path.open("wb") as f:
        f.write(gzip.compress(header, mtime=0))
        for _ in range(size // 2**20):
            f.write(mib)
        f.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE), mtime=0))  # end of archive
    return path


def measured_import(archive: Path, cache: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    wrapper = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            sys.executable,
            "-m",
            "taskrun",
            "cache",
            "import",
            str(archive),
            "--cache-dir",
            str(cache),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=archive.parent,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    result: dict[str, object] = json.loads(wrapper.stdout)
    return result


@pytest.mark.parametrize("gib", [1, 4])
def test_decompression_bomb_is_refused_in_bounded_memory(tmp_path: Path, gib: int) -> None:
    """1 GiB (or 4 GiB) of zeros in a ~1 MB (~4 MB) archive: refused, peak RSS < 200 MB."""
    archive = bomb(tmp_path / "bomb.tar.gz", gib)
    assert archive.stat().st_size < gib * 2 * 2**20
    cache = tmp_path / "cache"
    result = measured_import(archive, cache)
    assert result["rc"] == 1, result
    assert "Traceback" not in str(result["stderr"]) and "MemoryError" not in str(result["stderr"])
    refused = json.loads(str(result["stdout"]))["refused"]
    assert any("decompression bomb" in r["reason"] for r in refused), refused
    assert int(str(result["maxrss_kib"])) < MEMORY_BOUND_KIB, result["maxrss_kib"]
    # Nothing was taken, and nothing of the bomb is left beside the cache.
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 2**20]
    assert leftovers == []
    assert not list(cache.glob(".import-*"))


def test_archive_member_past_the_cache_size_is_refused_early(tmp_path: Path) -> None:
    """A member whose header claims more than the cache may hold is refused before reading."""
    (tmp_path / "pyproject.toml").write_text('[tool.taskrun]\ncache-size = "1MB"\n')
    (tmp_path / "tasks.py").write_text("")
    archive = bomb(tmp_path / "big.tar.gz", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskrun",
            "-C",
            str(tmp_path),
            "cache",
            "import",
            str(archive),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    refused = json.loads(proc.stdout)["refused"]
    assert any("more than the cache can hold" in r["reason"] for r in refused), refused


def test_gc_removes_what_a_killed_import_left(tmp_path: Path) -> None:
    """kill -9 of `taskrun cache import` while it unpacks leaves its .import-* directory
    beside the database; the next `cache gc` removes it (and says so), nothing else."""
    archive = bomb(tmp_path / "bomb.tar.gz", 1)  # unpacks for a while before it is refused
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    base = [sys.executable, "-m", "taskrun", "cache"]
    killed = False
    for _attempt in range(3):  # an import that ended before the kill does not count
        proc = subprocess.Popen(
            [*base, "import", str(archive), "--cache-dir", str(cache)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
        try:
            # Synchronised on the file the import writes: a member being unpacked.
            while proc.poll() is None and not any(
                p.is_file() and p.stat().st_size > 2**20 for p in cache.glob(".import-*/**/*")
            ):
                time.sleep(0.005)
            if proc.poll() is None:
                proc.kill()
                killed = True
        finally:
            proc.wait(timeout=TIMEOUT)
        if killed:
            break
    assert killed, "the import always ended before it could be killed"
    left = list(cache.glob(".import-*"))
    assert left, "a killed import left nothing to sweep"
    gc = subprocess.run(
        [*base, "gc", "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert report["removed_imports"] == len(left) and report["freed"] > 2**20, report
    assert not list(cache.glob(".import-*")) and (cache / "cache.db").is_file()
