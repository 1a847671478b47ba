"""Configuration from the environment: TASKRUN_* variables, the default -j, sizes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import Result

from taskrun import config
from taskrun.cli import main
from taskrun.config import available_cpus, parse_size
from taskrun.errors import ConfigError

RunCli = Callable[..., Result]
WriteProject = Callable[..., Path]

TASKS = """
    from taskrun import task

    @task
    def numbers(n: int = 3) -> list[int]:
        return list(range(n))

    @task(deps=[numbers])
    def total(numbers: list[int]) -> int:
        return sum(numbers)
"""


def test_every_run_option_has_an_environment_variable() -> None:
    """Each option of `taskrun run` names a TASKRUN_* variable, shown in --help."""
    run = main.commands["run"]
    for param in run.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert isinstance(param.envvar, str) and param.envvar.startswith("TASKRUN_"), param
            assert param.show_envvar, param.name
    names = {p.name: p.envvar for p in run.params}
    assert names["jobs"] == "TASKRUN_JOBS" and names["keep_going"] == "TASKRUN_KEEP_GOING"


def test_help_shows_the_variables(run_cli: RunCli) -> None:
    """`taskrun run --help` lists the variables."""
    result = run_cli(None, "run", "--help")
    text = " ".join(result.output.split())
    for name in ("TASKRUN_JOBS", "TASKRUN_EXECUTOR", "TASKRUN_KEEP_GOING", "TASKRUN_OPTION"):
        assert name in text


def test_variables_set_run_options(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """TASKRUN_OPTION, TASKRUN_JOBS, TASKRUN_EXECUTOR and TASKRUN_JSON act like the flags."""
    root = write_project(tmp_path / "p", TASKS)
    env = {
        "TASKRUN_OPTION": "n=4",
        "TASKRUN_JOBS": "1",
        "TASKRUN_EXECUTOR": "inline",
        "TASKRUN_JSON": "1",
    }
    result = run_cli(root, "run", env=env)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    started = next(e for e in events if e.get("event") == "run-started")
    assert started["jobs"] == 1 and started["executor"] == "inline"
    assert {e["task"] for e in events if e.get("event") == "ran"} == {"numbers", "total"}
    # The value came from TASKRUN_OPTION: the same value on the command line hits.
    again = run_cli(root, "run", "-o", "n=4")
    assert "2 tasks: 2 cached" in again.output


def test_a_bad_variable_value_names_the_variable(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """A wrong value from the environment is a usage error (exit 2) that names it."""
    root = write_project(tmp_path / "p", TASKS)
    result = run_cli(root, "run", env={"TASKRUN_EXECUTOR": "threads"})
    assert result.exit_code == 2
    assert "threads" in result.output


def test_default_jobs_follow_the_affinity_mask() -> None:
    """-j defaults to the CPUs this process may run on, not the machine's count."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    allowed = os.sched_getaffinity(0)
    one = {min(allowed)}
    os.sched_setaffinity(0, one)
    try:
        assert available_cpus() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert available_cpus() <= len(allowed)


def test_cgroup_quota_caps_the_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cgroup v2 cpu.max of 150000/100000 means 2 CPUs; `max` means no limit."""
    group = Path("/proc/self/cgroup").read_text().splitlines()
    line = next((g for g in group if g.startswith("0::")), None)
    if line is None:
        pytest.skip("not a cgroup v2 system")
    where = tmp_path / line[3:].lstrip("/")
    where.mkdir(parents=True, exist_ok=True)
    (where / "cpu.max").write_text("150000 100000\n")
    assert config._cgroup_cpu_quota(tmp_path) == 2
    (where / "cpu.max").write_text("max 100000\n")
    assert config._cgroup_cpu_quota(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500M", 500 * 2**20),
        ("2G", 2 * 2**30),
        ("1.5GiB", int(1.5 * 2**30)),
        ("500MB", 500 * 10**6),
        ("10k", 10 * 1024),
        ("1024", 1024),
        ("3 GiB", 3 * 2**30),
    ],
)
def test_sizes(text: str, size: int) -> None:
    """Sizes as people write them: bare unit letters (powers of 1024), SI and IEC units."""
    assert parse_size(text) == size


def test_a_bad_size_says_how_to_write_one() -> None:
    """'lots' is refused with examples."""
    with pytest.raises(ConfigError, match="'500M'"):
        parse_size("lots")


def test_cache_gc_accepts_500M(
    run_cli: RunCli, write_project: WriteProject, tmp_path: Path
) -> None:
    """`taskrun cache gc --max-size 500M` is a size, not an error."""
    root = write_project(tmp_path / "p", TASKS)
    assert run_cli(root, "run").exit_code == 0
    result = run_cli(root, "cache", "gc", "--max-size", "500M")
    assert result.exit_code == 0, result.output
