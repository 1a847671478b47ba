"""The public API: what `import taskrun` offers."""

from __future__ import annotations

import subprocess
import sys

import taskrun


def test_all_is_sorted_and_importable() -> None:
    """__all__ is sorted and every name in it resolves."""
    assert list(taskrun.__all__) == sorted(taskrun.__all__)
    for name in taskrun.__all__:
        assert getattr(taskrun, name) is not None


def test_import_taskrun_stays_light() -> None:
    """`import taskrun` loads neither the cache, cloudpickle nor the scheduler."""
    code = (
        "import sys, taskrun; heavy = {'diskcache', 'cloudpickle', 'taskrun.scheduler',"
        " 'taskrun.cache', 'taskrun.executors'}; print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_sh_is_the_shell_helper() -> None:
    """taskrun.sh is the documented helper, loaded on first use."""
    from taskrun.shell import sh

    assert taskrun.sh is sh
