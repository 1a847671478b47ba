"""A copy of the project at another path hits every entry: no absolute path in a key.

The task file uses the common ``Path(__file__)`` idioms (a module constant, a helper that
builds a path inside a task, ``os.path`` strings, a helper module's resolved root, a
product that is an absolute path inside the project, option defaults built from
``__file__``). Real processes, real directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

TASKS = """
import os
from pathlib import Path
from taskrun import task, File
import helpers

HERE = Path(__file__).parent
COUNTS = HERE / "counts"
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.txt")


def data_dir() -> Path:
    return Path(__file__).parent / "data"


@task
def words() -> dict[str, int]:
    return {p.name: len(p.read_text().split()) for p in sorted(data_dir().glob("*.txt"))}


@task(deps=[words], outputs=["counts/*.txt"])
def counts(words: dict[str, int]) -> list[File]:
    COUNTS.mkdir(exist_ok=True)
    out = []
    for name, n in words.items():
        (COUNTS / name).write_text(str(n))
        out.append(File("counts") / name)
    return out


@task(deps=[words])
def config(words: dict[str, int]) -> str:
    return Path(CONFIG).read_text() + helpers.label()


@task(deps=[words])
def where(words: dict[str, int]) -> Path:
    return HERE / "data"


@task
def target(out: Path = HERE / "build" / "out.txt", origin: str = __file__) -> str:
    return out.name + Path(origin).name


@task(deps=[where, config, counts, target])
def report(where: Path, config: str, counts: list[File], target: str) -> str:
    return f"{where.name} {config} {len(counts)} {target}"
"""

HELPERS = """
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TEMPLATE = str(ROOT / "template.txt")


def label() -> str:
    return Path(TEMPLATE).read_text().strip()
"""


def _write(directory: Path) -> Path:
    (directory / "data").mkdir(parents=True)
    (directory / "tasks.py").write_text(textwrap.dedent(TASKS))
    (directory / "helpers.py").write_text(textwrap.dedent(HELPERS))
    (directory / "template.txt").write_text("x\n")
    (directory / "config.txt").write_text("cfg\n")
    (directory / "data" / "a.txt").write_text("a b c\n")
    (directory / "data" / "b.txt").write_text("d e\n")
    return directory


def _run(cwd: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", *args, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {
        "summary": next(e for e in events if e["event"] == "summary"),
        "ran": {e["task"]: e.get("reasons") for e in events if e["event"] == "ran"},
    }


@pytest.mark.slow
def test_a_copy_at_another_path_and_depth_is_all_cached(tmp_path: Path) -> None:
    """Run at one path, copy the sources two levels deeper elsewhere: every task hits."""
    first = _write(tmp_path / "alice" / "proj")
    shared = tmp_path / "shared-cache"
    ran = _run(first, "run", "--cache-dir", str(shared))
    assert ran["summary"]["ran"] == 6

    second = tmp_path / "ci" / "runner" / "work" / "checkout"
    second.parent.mkdir(parents=True)
    shutil.copytree(first, second, ignore=shutil.ignore_patterns(".taskrun", "counts"))
    again = _run(second, "run", "--cache-dir", str(shared))
    assert again["ran"] == {}, again["ran"]
    assert again["summary"]["cached"] == 6
    assert sorted(p.name for p in (second / "counts").iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.slow
def test_a_real_change_in_the_copy_still_reruns(tmp_path: Path) -> None:
    """Relative encoding still sees a change: a moved data directory reruns its users."""
    first = _write(tmp_path / "one")
    shared = tmp_path / "shared-cache"
    _run(first, "run", "--cache-dir", str(shared))
    second = tmp_path / "deeper" / "two"
    second.parent.mkdir(parents=True)
    shutil.copytree(first, second, ignore=shutil.ignore_patterns(".taskrun", "counts"))
    helpers = second / "helpers.py"
    helpers.write_text(helpers.read_text().replace('"template.txt"', '"other.txt"'))
    (second / "other.txt").write_text("x\n")
    again = _run(second, "run", "--cache-dir", str(shared))
    assert set(again["ran"]) == {"config"}, again["ran"]
    assert "helpers.TEMPLATE" in " ".join(again["ran"]["config"])
