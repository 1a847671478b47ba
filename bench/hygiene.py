"""Process hygiene of taskrun.run: 20 projects, each with its own helpers.py, in one process.

    python bench/hygiene.py    # wrong helper imports, sys.path growth, modules left behind

Before issue 17 (main at 98d1493): "wrong helper: 19/20, sys.path +20, modules from the
projects left: 1"; after: "wrong helper: 0/20, sys.path +0, modules from the projects
left: 0".
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import taskrun
from taskrun.loader import load_task_file

TASKS = (
    "import helpers\nfrom taskrun import task\n\n@task\ndef who() -> int:\n    return helpers.WHO\n"
)


def main() -> None:
    base = pathlib.Path(tempfile.mkdtemp())
    wrong = 0
    before_path, before_mods, cwd = len(sys.path), set(sys.modules), os.getcwd()
    for i in range(20):
        root = base / f"p{i}"
        root.mkdir()
        (root / "helpers.py").write_text(f"WHO = {i}\n")
        (root / "tasks.py").write_text(TASKS)
        reg = load_task_file(root / "tasks.py")
        got = taskrun.run("who", registry=reg, cache_mode="off").products["who"]
        wrong += got != i
    left = [
        n
        for n in set(sys.modules) - before_mods
        if str(getattr(sys.modules[n], "__file__", "") or "").startswith(str(base))
    ]
    print(
        f"wrong helper: {wrong}/20, sys.path +{len(sys.path) - before_path},"
        f" modules from the projects left: {len(left)}, cwd restored: {os.getcwd() == cwd}"
    )


if __name__ == "__main__":
    main()
