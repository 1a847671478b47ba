"""What the executor tests share: the task module they run, and small helpers.

A plain module (not a test file, not a conftest): the tests import it by name, which works
in every import mode because ``[tool.pytest.ini_options] pythonpath`` puts ``tests/`` on
``sys.path``. The fixtures built on it (``tasks``, ``project``, ``release`` and the
executors) live in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from taskrun.executors import Call, Executor, Outcome

# How long a test waits for a file, a future or a worker before it calls the wait hung.
# Only a guard against hangs: every wait ends as soon as its event happens, so on a loaded
# machine (a worker process restarting after a kill can take many seconds) it must be long.
PATIENCE = 120.0

TASKS = '''
import os, signal, subprocess, sys, threading, time
from pathlib import Path


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class TaskError(Exception):
    pass


def wait_for(path, limit=60.0):
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {limit}s")
        time.sleep(0.01)


def touch(path):
    Path(path).write_text("x")


def add(a, b):
    return a + b


def helper_raise(n):
    raise ValueError(f"bad input {n}")


def fail(n):
    helper_raise(n)


def chained():
    try:
        {}["missing"]
    except KeyError as exc:
        raise TaskError("lookup failed") from exc


def chatty():
    print("out 1")
    print("err 1", file=sys.stderr)
    print("out 2 h\\u00e9llo \\u2713")
    return "done"


def via_sh():
    from taskrun.shell import sh
    sh("echo from sh")
    return "ok"


def child_output():
    subprocess.run([sys.executable, "-c", "print('from child')"], check=True)
    os.write(1, b"raw fd 1\\n")
    os.write(2, b"raw fd 2\\n")
    return 1


def where():
    return os.getcwd()


def use_project_module(name):
    return __import__(name).VALUE


def pid():
    return os.getpid()


def point():
    return Point(1, 2)


def partner(me, rounds, folder):
    """a and b print in turns: a0 b0 a1 b1 ..."""
    other = "b" if me == "a" else "a"
    for i in range(rounds):
        if me == "b":
            wait_for(f"{folder}/a{i}")
        print(f"{me}{i}")
        touch(f"{folder}/{me}{i}")
        if me == "a":
            wait_for(f"{folder}/b{i}")
    return me


def rendezvous(me, other, folder):
    touch(f"{folder}/{me}")
    wait_for(f"{folder}/{other}")
    return me


def hang(pidfile, release):
    print("hanging", flush=True)
    Path(pidfile).write_text(str(os.getpid()))
    wait_for(release, 60)


def mark(path):
    touch(path)
    return path


def die(code):
    print("about to die", flush=True)
    os._exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def terminate_self():
    os.kill(os.getpid(), signal.SIGTERM)


def segfault():
    import ctypes
    ctypes.string_at(0)


def lock():
    return threading.Lock()


def exits():
    sys.exit(4)


def interrupts():
    raise KeyboardInterrupt
'''


def load_tasks(folder: Path) -> ModuleType:
    """TASKS written to FOLDER and loaded by path under a unique name, then taken out of
    sys.modules: like a task file, not importable by name (workers get it by value)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"taskrun_test_tasks_{uuid.uuid4().hex}"
    path = folder / f"{name}.py"
    path.write_text(TASKS)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(name, None)
    return module


def make_call(
    fn: Callable[..., Any], root: Path, timeout: float | None = None, **kwargs: Any
) -> Call:
    """A call of FN with KWARGS in the project ROOT."""
    return Call(task=fn.__name__, fn=fn, kwargs=kwargs, cwd=str(root), timeout=timeout)


def run(
    ex: Executor, fn: Callable[..., Any], root: Path, timeout: float | None = None, **kwargs: Any
) -> Outcome:
    """Submit a call of FN and wait for its outcome."""
    return ex.submit(make_call(fn, root, timeout, **kwargs)).result(timeout=PATIENCE)


def wait_until(predicate: Callable[[], bool], limit: float = PATIENCE) -> bool:
    """Poll PREDICATE until it holds (True) or LIMIT seconds pass (False): a hang guard."""
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def gone(pid: int) -> bool:
    """Whether no process PID exists (any more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
