"""Project settings: ``[tool.taskrun]`` in ``pyproject.toml``, and the task file's location.

Command-line values win over these; these win over taskrun's defaults.

.. code-block:: toml

    [tool.taskrun]
    default = ["report"]          # targets of a bare `taskrun run`
    jobs = 4
    executor = "thread"           # inline | thread | process | dask
    cache-dir = ".taskrun/cache"  # relative to the project root
    cache-size = "2GiB"           # or a number of bytes
    cache-mode = "rw"             # rw | read | off
    dask-address = "tcp://127.0.0.1:8786"
    remote-cache = "s3://bucket/taskrun"  # a shared store behind the local cache
    remote-mode = "rw"            # rw | read | off

    [tool.taskrun.options]        # option values: unqualified ...
    top = 5
    [tool.taskrun.options.report] # ... or for one task
    style = "md"

    [tool.taskrun.runtime]        # runtime facts that enter every fingerprint
    python = true
    platform = true
    env = ["LANG"]
    probes = { cc = "gcc --version" }
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrun.errors import ConfigError, UsageError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "RuntimeSettings",
    "Settings",
    "available_cpus",
    "find_task_file",
    "load_settings",
    "parse_size",
    "require_posix",
]

TASK_FILE = "tasks.py"
EXECUTORS = ("inline", "thread", "process", "dask")
CACHE_MODES = ("rw", "read", "off")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT](?:i?B)?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # A bare letter, as in `du -h`, `docker --memory` or `sort -S`: powers of 1024.
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}


def parse_size(value: str | int, *, where: str = "size") -> int:
    """``"5GiB"``, ``"500MB"``, ``"500M"`` (MiB, as ``du -h``), ``"1024"`` or an int -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ConfigError(
            f"{where}: {value!r} is not a size; write a number of bytes or e.g. '500M',"
            " '500MB', '1.5GiB'"
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def require_posix(platform: str | None = None) -> None:
    """Refuse to run on Windows with a message that says why, not a crash at ``import fcntl``.

    Task files can still be imported there (definitions, ``taskrun.Registry``); running
    needs POSIX file locks, process groups and signals.
    """
    if (platform or sys.platform).startswith(("win32", "cygwin")):
        raise UsageError(
            "taskrun runs tasks on POSIX systems only (Linux, macOS, BSD): its cache locks,"
            " process groups and signals have no Windows equivalent here; on Windows, run"
            " taskrun inside WSL (Windows Subsystem for Linux)"
        )


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """``cpu.max`` of this process's cgroup (v2) as whole CPUs, rounded up; None if unlimited."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        group = next(line[3:] for line in lines if line.startswith("0::"))
        text = (root / group.lstrip("/") / "cpu.max").read_text().split()
    except (OSError, StopIteration):
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    try:
        quota, period = int(text[0]), int(text[1])
    except ValueError:
        return None
    return max(1, -(-quota // period)) if period > 0 else None


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Which runtime facts go into every fingerprint."""

    python: bool = True
    platform: bool = True
    env: tuple[str, ...] = ()
    probes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``[tool.taskrun]`` can set, with the project root it applies to."""

    root: Path
    task_file: Path
    pyproject: Path | None = None
    default: tuple[str, ...] = ()
    jobs: int | None = None
    executor: str | None = None
    cache_dir: Path | None = None
    cache_size: int | None = None
    cache_mode: str | None = None
    dask_address: str | None = None
    remote_cache: str | None = None
    remote_mode: str | None = None
    keep_runs: int | None = None  # run records kept under .taskrun/runs (default 100)
    options: Mapping[str, Any] = field(default_factory=dict)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    external: Mapping[str, Path] = field(default_factory=dict)


_KEYS = {
    "default",
    "jobs",
    "executor",
    "cache-dir",
    "cache-size",
    "cache-mode",
    "dask-address",
    "options",
    "runtime",
    "remote-cache",
    "remote-mode",
    "external",
    "keep-runs",
}


def find_task_file(start: Path, explicit: Path | None = None) -> Path:
    """``explicit`` if given, else ``tasks.py`` in ``start`` or its nearest parent."""
    if explicit is not None:
        path = explicit if explicit.is_absolute() else start / explicit
        if path.is_dir():
            raise UsageError(
                f"task file {str(explicit)!r} is a directory; name the file, e.g."
                f" -f {explicit / TASK_FILE}"
            )
        if not path.is_file():
            raise UsageError(f"task file {str(explicit)!r} does not exist (looked at {path})")
        return path.resolve()
    here = start.resolve()
    for folder in (here, *here.parents):
        candidate = folder / TASK_FILE
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"no {TASK_FILE} in {here} or any parent directory; create one, run from the project"
        " directory, or name it with -f FILE"
    )


def load_settings(task_file: Path) -> Settings:
    """Read ``[tool.taskrun]`` from the ``pyproject.toml`` next to the task file, if any."""
    root = task_file.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return Settings(root=root, task_file=task_file)
    try:
        with pyproject.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot be read: {exc}") from None
    table = data.get("tool", {}).get("taskrun", {})
    where = f"{pyproject} [tool.taskrun]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    table = {k.replace("_", "-"): v for k, v in table.items()}
    for key in table:
        if key not in _KEYS:
            raise ConfigError(
                f"{where}: unknown setting '{key}'{did_you_mean(key, _KEYS)};"
                f" the settings are {', '.join(sorted(_KEYS))}"
            )

    def typed(key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = table.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be {what} (got {value!r})")
        return value

    default = table.get("default", [])
    if isinstance(default, str):
        default = [default]
    if not isinstance(default, list) or not all(isinstance(t, str) for t in default):
        raise ConfigError(f"{where}: 'default' must be a list of task names")
    jobs = typed("jobs", int, "a whole number of jobs")
    for key, allowed in (
        ("executor", EXECUTORS),
        ("cache-mode", CACHE_MODES),
        ("remote-mode", CACHE_MODES),
    ):
        value = typed(key, str, " or ".join(allowed))
        if value is not None and value not in allowed:
            raise ConfigError(
                f"{where}: '{key}' is {value!r}{did_you_mean(value, allowed)};"
                f" use one of {', '.join(allowed)}"
            )
    if jobs is not None and jobs < 1:
        raise ConfigError(f"{where}: 'jobs' must be at least 1 (got {jobs})")
    keep_runs = typed("keep-runs", int, "a whole number of run records to keep")
    if keep_runs is not None and keep_runs < 1:
        raise ConfigError(f"{where}: 'keep-runs' must be at least 1 (got {keep_runs})")
    cache_dir = typed("cache-dir", str, "a directory path")
    size = table.get("cache-size")
    options = typed("options", dict, "a table of option values")
    runtime = _runtime(typed("runtime", dict, "a table") or {}, f"{where}.runtime")
    return Settings(
        root=root,
        task_file=task_file,
        pyproject=pyproject,
        default=tuple(default),
        jobs=jobs,
        executor=typed("executor", str, "an executor name"),
        cache_dir=(root / os.path.expanduser(cache_dir)) if cache_dir else None,
        cache_size=parse_size(size, where=f"{where}: 'cache-size'") if size is not None else None,
        cache_mode=typed("cache-mode", str, "rw, read or off"),
        dask_address=typed("dask-address", str, "an address such as tcp://host:8786"),
        remote_cache=typed("remote-cache", str, "an fsspec URL such as s3://bucket/prefix"),
        remote_mode=typed("remote-mode", str, "rw, read or off"),
        keep_runs=keep_runs,
        options=options or {},
        runtime=runtime,
        external=_external(table.get("external"), root, f"{where}: 'external'"),
    )


def _external(value: Any, root: Path, where: str) -> dict[str, Path]:
    """``external = {data = "/data/shared"}`` or ``["/data/shared"]`` -> name -> directory.

    A list names each folder by its last component. The name, not the directory, is what
    enters fingerprints, so each machine may mount the data where it likes.
    """
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = {Path(os.path.expanduser(v)).name: v for v in value}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(
            f'{where} must map names to folders, e.g. external = {{ data = "/data/shared" }},'
            " or list folders"
        )
    out: dict[str, Path] = {}
    for name, folder in value.items():
        path = Path(os.path.expanduser(folder))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{where}: '{name}' is not a name (letters, digits, _ . -)")
        if not path.is_absolute():
            raise ConfigError(f"{where}: '{name}' = '{folder}' must be an absolute path")
        if path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(
                f"{where}: '{name}' = '{folder}' is inside the project; only folders outside"
                " it need declaring"
            )
        out[name] = path
    return out


def _runtime(table: Mapping[str, Any], where: str) -> RuntimeSettings:
    known = {"python", "platform", "env", "probes"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(key, known)}")
    for key in ("python", "platform"):
        if not isinstance(table.get(key, True), bool):
            raise ConfigError(f"{where}: '{key}' must be true or false")
    env = table.get("env", [])
    if not isinstance(env, list) or not all(isinstance(e, str) and e for e in env):
        raise ConfigError(f"{where}: 'env' must be a list of environment variable names")
    probes = table.get("probes", {})
    if not isinstance(probes, dict) or not all(
        isinstance(v, str) and v.strip() for v in probes.values()
    ):
        raise ConfigError(
            f"{where}: 'probes' must map names to commands, e.g. cc = 'gcc --version'"
        )
    return RuntimeSettings(
        python=table.get("python", True),
        platform=table.get("platform", True),
        env=tuple(env),
        probes=dict(probes),
    )
