"""Running the real ``taskrun`` command in a child process, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def taskrun_process(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m taskrun ARGS`` in CWD, without the caller's ``TASKRUN_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    return subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
