"""Runtime facts: what a fingerprint records about the machine a task runs on.

By default the Python implementation and version and the platform; optionally declared
environment variables and probes, commands such as ``gcc --version`` whose first line
of output is the fact. Re-exported by :mod:`taskrun.fingerprint`.
"""

from __future__ import annotations

import os
import platform as _platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from taskrun.errors import ConfigError, ProbeError

__all__ = ["runtime_facts"]

_PROBE_TIMEOUT = 30.0


def runtime_facts(
    *,
    python: bool = True,
    platform: bool = True,
    env: Sequence[str] = (),
    probes: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Return the runtime facts that go into every fingerprint.

    ``python`` -> ``cpython-3.11``; ``platform`` -> ``linux-x86_64``; each name in
    ``env`` -> ``env:NAME`` with its value or ``<unset>``; each probe ``name -> command``
    -> the first non-empty line the command prints (``gcc --version``). A probe that
    fails raises ProbeError. Probes run in ``cwd`` (the project root), so a probe such
    as ``sha256sum uv.lock`` means the same wherever taskrun was started.
    """
    facts: dict[str, str] = {}
    if python:
        impl = sys.implementation.name
        facts["python"] = f"{impl}-{sys.version_info.major}.{sys.version_info.minor}"
    if platform:
        facts["platform"] = f"{sys.platform}-{_platform.machine()}"
    for name in env:
        value = os.environ.get(name)
        facts[f"env:{name}"] = "<unset>" if value is None else value
    for name, command in (probes or {}).items():
        if name in facts:
            raise ConfigError(
                f"runtime probe '{name}' clashes with a built-in runtime fact; "
                "give the probe another name"
            )
        facts[name] = _probe(name, command, cwd)
    return facts


def _probe(name: str, command: str, cwd: str | os.PathLike[str] | None = None) -> str:
    def fail(why: str, fix: str) -> ProbeError:
        return ProbeError(f"runtime probe '{name}' (command: {command}) {why}; {fix}")

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise fail(f"cannot be parsed ({e})", "fix its quoting") from None
    if not argv:
        raise fail("is empty", "give it a command such as 'gcc --version'")
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise fail(
            f"failed: '{argv[0]}' was not found",
            "install it, put it on PATH, or remove the probe",
        ) from None
    except subprocess.TimeoutExpired:
        raise fail(
            f"did not finish within {_PROBE_TIMEOUT:g} s",
            "make it a quick command (a version query) or remove the probe",
        ) from None
    except OSError as e:
        raise fail(f"could not start ({e})", "check the command") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        raise fail(
            f"exited with status {done.returncode}{tail}",
            "fix the command, or remove the probe",
        )
    # Some tools print their version on stderr (java -version): fall back to it.
    for stream in (done.stdout, done.stderr):
        for line in stream.splitlines():
            if line.strip():
                return line.strip()
    raise fail("printed nothing", "use a command that prints the fact, such as a version")
