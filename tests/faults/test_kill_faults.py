"""kill -9 at random points of a real ``taskrun run``: nothing corrupt is ever served.

A run of 51 tasks with outputs (file-sized products and output files, so entries and
blobs live in value files) is killed with SIGKILL after a random number of its ``--json``
events (the kill point is an event count, never a time). After each kill a clean run must
finish, restore or recompute every output with the right bytes and compute the right
final product; ``cache verify`` must find nothing bad. At the end ``gc`` removes the
orphaned value files the kills left, which ``cache info`` counted.

The seed is printed; set ``TASKRUN_FAULT_SEED`` to replay a sequence.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 120
TRIALS = 26
CHAINS, LENGTH = 5, 10  # 50 tasks, plus the final one

TASKS = """
from pathlib import Path
from taskrun import task

SIZE = 40_000  # above diskcache's 32 KiB inline limit: entries and blobs in value files

def body(name):
    return (name.encode() * SIZE)[:SIZE]

def work(name, up):
    if up is not None:
        # A corrupt upstream product served from the cache fails the run loudly.
        assert up == body(up[:4].decode()), "a corrupt upstream product"
    Path("build").mkdir(exist_ok=True)
    data = body(name)
    Path(f"build/{name}.bin").write_bytes(data)
    return data

def _make(name, upstream):
    if upstream is None:
        @task(name=name, outputs=[f"build/{name}.bin"], env=["SALT"])
        def first() -> bytes:
            return work(name, None)
        return first

    @task(name=name, deps={"up": upstream}, outputs=[f"build/{name}.bin"], env=["SALT"])
    def step(up: bytes) -> bytes:
        return work(name, up)
    return step

tails = {}
for c in range(CHAINS):
    upstream = None
    for i in range(LENGTH):
        upstream = _make(f"c{c}t{i}", upstream)
    tails[f"p{c}"] = upstream

@task(deps=tails, outputs=["build/final.txt"], env=["SALT"])
def final(PARAMS) -> int:
    products = [VALUES]
    for value in products:
        assert value == body(value[:4].decode()), "a corrupt upstream product"
    total = sum(len(v) for v in products)
    Path("build/final.txt").write_text(f"{total} {sorted(v[:4].decode() for v in products)}")
    return total
"""


def tasks_source() -> str:
    return (
        textwrap.dedent(TASKS)
        .replace("CHAINS", str(CHAINS))
        .replace("LENGTH", str(LENGTH))
        .replace("PARAMS", ", ".join(f"p{c}: bytes" for c in range(CHAINS)))
        .replace("VALUES", ", ".join(f"p{c}" for c in range(CHAINS)))
    )


def expected_final() -> str:
    names = sorted(f"c{c}t{LENGTH - 1}"[:4] for c in range(CHAINS))
    return f"{CHAINS * 40_000} {names}"


def body(name: str) -> bytes:
    return (name.encode() * 40_000)[:40_000]


def env_for(salt: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env["SALT"] = salt
    return env


def taskrun(root: Path, *args: str, salt: str = "0") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env_for(salt),
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def killed_run(root: Path, salt: str, after: int, extra: list[str]) -> tuple[bool, int]:
    """Start a run, SIGKILL its process group after AFTER events; (landed, events seen)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", "-C", str(root), "run", "--json", "-j", "4", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env_for(salt),
        start_new_session=True,
    )
    seen, finished = 0, False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            seen += 1
            if event.get("event") == "summary":
                finished = True
            if seen >= after:
                break
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
    # Nothing of the killed run is left running (its whole session is gone).
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    return (not finished and proc.returncode == -signal.SIGKILL), seen


def check_clean_run(root: Path, salt: str) -> None:
    """A run after the kill finishes and yields the right files and product."""
    for path in (root / "build").glob("*"):
        path.unlink()  # so every output is restored from the cache or recomputed
    proc = taskrun(root, "run", "-j", "4", salt=salt)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{CHAINS * LENGTH + 1} tasks:" in proc.stdout
    assert "unusable" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    for c in range(CHAINS):
        for i in range(LENGTH):
            name = f"c{c}t{i}"
            assert (root / "build" / f"{name}.bin").read_bytes() == body(name), name
    assert (root / "build" / "final.txt").read_text() == expected_final()


@pytest.mark.slow
def test_kill_9_at_random_points_never_serves_anything_corrupt(tmp_path: Path) -> None:
    """≥ 20 SIGKILLs land mid-run; every following run is correct; gc removes the orphans."""
    seed = int(os.environ.get("TASKRUN_FAULT_SEED", random.randrange(2**32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    root = tmp_path / "p"
    root.mkdir()
    (root / "tasks.py").write_text(tasks_source())
    landings = 0
    for trial in range(TRIALS):
        # A new SALT misses everything; every third trial reuses the last (a partial cache
        # to hit); every fourth is --force-all (forced entries replace stored ones).
        salt = str(trial - 1 if trial % 3 == 2 else trial)
        extra = ["--force-all"] if trial % 4 == 3 else []
        landed, _ = killed_run(root, salt, rng.randint(1, CHAINS * LENGTH), extra)
        landings += landed
        check_clean_run(root, salt)
        verify = taskrun(root, "cache", "verify", salt=salt)
        assert verify.returncode == 0, verify.stdout
    info = json.loads(taskrun(root, "cache", "info", "--json").stdout)
    gc = json.loads(taskrun(root, "cache", "gc", "--json").stdout)
    after = json.loads(taskrun(root, "cache", "info", "--json").stdout)
    print(
        f"trials {TRIALS}, landings {landings}, orphans found {info['orphans']['files']} "
        f"({info['orphans']['bytes']} bytes), removed by gc {gc['removed_orphans']}"
    )
    assert landings >= 20, f"only {landings} of {TRIALS} kills landed mid-run (seed {seed})"
    assert gc["removed_orphans"] == info["orphans"]["files"]
    assert after["orphans"]["files"] == 0
    assert after["entries"] == info["entries"]  # gc removed orphans only, no entry
    check_clean_run(root, str(TRIALS - 1))
