"""Packaging and platform: metadata, license, typing marker, one version, POSIX only."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

import taskrun
from taskrun.config import require_posix
from taskrun.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]


@pytest.mark.slow
def test_wheel_metadata(tmp_path: Path) -> None:
    """The built wheel: SPDX license and its file, classifiers, URLs, py.typed, the version."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("taskrun-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert "taskrun/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["Version"] == taskrun.__version__
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier")
    for wanted in (
        "Operating System :: POSIX",
        "Typing :: Typed",
        *(f"Programming Language :: Python :: 3.{m}" for m in range(10, 14)),
    ):
        assert wanted in classifiers
    assert meta.get_all("Project-URL") and meta["Author"]
    assert "[pytest11]\ntaskrun = taskrun.testing" in entry_points


def test_version_is_written_once() -> None:
    """pyproject.toml reads the version from taskrun.__version__; it holds no copy."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert taskrun.__version__ not in text


def test_license_is_mit() -> None:
    """The LICENSE file is the MIT license the metadata declares."""
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_windows_is_refused_with_the_reason() -> None:
    """On Windows taskrun says it needs POSIX and points at WSL; elsewhere it is silent."""
    with pytest.raises(UsageError, match=r"POSIX systems only.*WSL"):
        require_posix("win32")
    require_posix("linux")
    require_posix("darwin")


def test_cli_on_windows_exits_2_with_the_reason(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`taskrun run` on Windows: exit 2 and the limitation, not a traceback at import fcntl."""
    monkeypatch.setattr(sys, "platform", "win32")
    result = run_cli(tmp_path, "run")
    assert result.exit_code == 2
    assert "POSIX systems only" in result.output and "Traceback" not in result.output


def test_state_directory_is_ignored_and_tagged(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """.taskrun/ gets `*` in a .gitignore and a CACHEDIR.TAG; git status does not list it."""
    root = write_project(
        tmp_path / "p",
        """
        from taskrun import task

        @task
        def hello() -> str:
            return "hi"
    """,
    )
    result = run_cli(root, "run")
    assert result.exit_code == 0, result.output
    assert (root / ".taskrun/.gitignore").read_text().splitlines()[-1] == "*"
    tag = (root / ".taskrun/CACHEDIR.TAG").read_text()
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55")
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert ".taskrun" not in status and "tasks.py" in status


def test_read_mode_creates_no_state_directory(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A read-mode run (pull requests) writes nothing, not even the markers."""
    root = write_project(
        tmp_path / "p",
        """
        from taskrun import task

        @task
        def hello() -> str:
            return "hi"
    """,
    )
    result = run_cli(root, "run", "--cache-mode", "read")
    assert result.exit_code == 0, result.output
    assert not (root / ".taskrun").exists()
