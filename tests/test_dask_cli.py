"""The Dask executor against a real ``dask scheduler`` + ``dask worker`` pair, end to end.

Each cluster is started by the test as subprocesses on 127.0.0.1 (free ports, no
dashboard), each in its own session, and stopped by killing those process groups. The
worker gets ``TASKRUN_TEST_SIDE=worker`` in its environment, so a task can tell where it ran,
and a temporary directory of its own, so the driver cannot read its files directly (as with
a worker on another machine). Runs of the CLI are real ``python -m taskrun`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip(
    "distributed", reason="the dask extra is not installed: pip install 'taskrun[dask]'"
)

import contextlib

import distributed
from executor_support import gone, make_call, run, wait_until

from taskrun.executors.dask import DaskExecutor
from taskrun.project import open_cache

pytestmark = pytest.mark.slow  # real clusters take seconds to start

TASKS = """
    import os
    import time
    from pathlib import Path

    import helpers
    from taskrun import File, task


    @task(inputs=["data/*.txt"])
    def numbers(n: int = 6) -> list[int]:
        side = os.environ.get("TASKRUN_TEST_SIDE", "driver")
        print("on", side)
        with open("where.log", "a") as log:
            log.write(side + "\\n")
        offset = int(Path("data/offset.txt").read_text())
        return [offset + x for x in range(n)]


    @task(deps=[numbers], outputs=["build/squares.txt"])
    def squares(numbers: list[int], weights: File = File("weights.txt")) -> File:
        weight = int(weights.read_text())
        Path("build").mkdir(exist_ok=True)
        Path("build/squares.txt").write_text(helpers.lines(weight * x * x for x in numbers))
        return File("build/squares.txt")


    @task(deps=[numbers, squares])
    def total(numbers: list[int], squares: File) -> int:
        print("adding up")
        return sum(numbers) + sum(int(x) for x in squares.read_text().split())


    @task
    def stuck() -> int:
        Path("stuck.started").write_text(str(os.getpid()))
        while not Path("stuck.release").exists():
            time.sleep(0.02)
        return 1
"""
HELPERS = "def lines(values):\n    return ''.join(f'{v}\\n' for v in values)\n"
NO_TASKRUN_WORKER = (
    "import sys; sys.modules['taskrun'] = None; "  # `import taskrun` fails in this process
    "from distributed.cli.dask_worker import main; main()"
)


# -- clusters -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A scheduler and its workers, each a process group of its own."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_cluster(
    folder: Path, *, worker_code: str | None = None, hide: Path | None = None
) -> Cluster:
    """A scheduler and one one-thread worker on 127.0.0.1, ready when this returns.

    With ``hide``, the worker runs in a mount namespace of its own where that directory is
    an empty file system: it does not see what the driver keeps there (a worker without
    the project directory, as on another machine).
    """
    folder.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    http = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]

    def spawn(argv: list[str], name: str, env: dict[str, str] | None = None) -> Any:
        with open(folder / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                argv,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    port = address.rsplit(":", 1)[1]
    scheduler = spawn(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            *http,
        ],
        "scheduler",
    )
    cluster = Cluster(address, scheduler)
    worker_tmp = folder / "worker-tmp"
    worker_tmp.mkdir()
    boot = ["-c", worker_code] if worker_code else ["-m", "distributed.cli.dask_worker"]
    try:
        cluster.workers.append(
            spawn(
                [
                    *(hiding(hide) if hide is not None else []),
                    sys.executable,
                    *boot,
                    address,
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    *http,
                    "--local-directory",
                    str(folder / "worker-dir"),
                    *(["--no-nanny"] if worker_code else []),
                ],
                "worker",
                env={"TASKRUN_TEST_SIDE": "worker", "TMPDIR": str(worker_tmp)},
            )
        )
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def hiding(directory: Path) -> list[str]:
    """The command prefix that runs a command with ``directory`` hidden under an empty tmpfs."""
    mount = 'mount -t tmpfs taskrun-hidden "$0" && exec "$@"'
    return ["unshare", "--mount", "--map-root-user", "sh", "-c", mount, str(directory)]


def can_hide(folder: Path) -> str:
    """Why a directory cannot be hidden from a process on this machine ("" when it can)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "marker").write_text("x")
    argv = [*hiding(folder), "sh", "-c", f"test ! -e {folder / 'marker'}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"cannot run unshare: {exc}"
    if done.returncode != 0:
        return f"unshare --mount --map-root-user cannot hide a directory here: {done.stderr!r}"
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A scheduler and a worker, shared by the module's tests."""
    found = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield found
    found.stop()


# -- the CLI, end to end --------------------------------------------------------------------


def taskrun(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    full = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        env={**full, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def write_project(root: Path) -> Path:
    """The project: a task file, a helper module it imports, an input file, an option file."""
    root.mkdir(parents=True)
    (root / "tasks.py").write_text(textwrap.dedent(TASKS))
    (root / "helpers.py").write_text(HELPERS)
    (root / "data").mkdir()
    (root / "data" / "offset.txt").write_text("1\n")
    (root / "weights.txt").write_text("2\n")
    return root


NUMBERS = [1, 2, 3, 4, 5, 6]  # what the project computes: offset 1, 6 numbers, weight 2
SQUARES = "".join(f"{2 * x * x}\n" for x in NUMBERS)
TOTAL = sum(NUMBERS) + sum(2 * x * x for x in NUMBERS)


def cache_entries(root: Path) -> dict[str, Any]:
    """task -> (fingerprint, product digest, outputs, product) of every entry in the cache."""
    cache = open_cache(root)
    try:
        found = {}
        for meta in cache.entries():
            entry = cache.lookup(meta.fingerprint)
            found[meta.task] = (meta.fingerprint, meta.product_digest, meta.outputs, entry.load())
        return found
    finally:
        cache.close()


@dataclass
class Runs:
    local: Path
    remote: Path
    local_run: Any
    first: Any
    second: Any


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """`taskrun run total` locally, then twice on the cluster (a copy of the same project)."""
    base = tmp_path_factory.mktemp("projects")
    local, remote = write_project(base / "local"), write_project(base / "remote")
    local_run = taskrun(local, "run", "total", "--json", "--executor", "process")
    first = taskrun(
        remote, "run", "total", "--json", "--executor", "dask", "--dask-address", cluster.address
    )
    # The address from the environment this time.
    second = taskrun(
        remote,
        "run",
        "total",
        "--json",
        "--executor",
        "dask",
        env={"DASK_SCHEDULER_ADDRESS": cluster.address},
    )
    return Runs(local, remote, local_run, first, second)


def test_cli_runs_the_tasks_on_the_dask_workers(runs: Runs) -> None:
    """`--executor dask --dask-address` runs every task on the cluster's worker."""
    assert runs.first.returncode == 0, runs.first.stderr
    started = events(runs.first.stdout)[0]
    assert started["event"] == "run-started" and started["executor"] == "dask"
    ran = [e["task"] for e in events(runs.first.stdout) if e["event"] == "ran"]
    assert sorted(ran) == ["numbers", "squares", "total"]
    assert (runs.remote / "where.log").read_text() == "worker\n"
    assert (runs.local / "where.log").read_text() == "driver\n"
    total = next(
        e for e in events(runs.first.stdout) if e["event"] == "ran" and e["task"] == "total"
    )
    assert total["output"] == "adding up\n"


def test_cli_on_dask_stores_the_same_entries_as_a_local_run(runs: Runs) -> None:
    """Same fingerprints, product digests, products and output records as a local run."""
    assert runs.local_run.returncode == 0, runs.local_run.stderr
    local, remote = cache_entries(runs.local), cache_entries(runs.remote)
    assert set(remote) == {"numbers", "squares", "total"}
    assert remote == local
    assert remote["total"][3] == TOTAL


def test_cli_on_dask_writes_the_same_output_files(runs: Runs) -> None:
    """The declared output file is in the project directory, as after a local run."""
    squares = (runs.remote / "build" / "squares.txt").read_text()
    assert squares == (runs.local / "build" / "squares.txt").read_text() == SQUARES


def test_cli_second_run_is_all_cached_locally(runs: Runs) -> None:
    """Run again: every task is a hit in the driver's cache; nothing reaches the cluster."""
    assert runs.second.returncode == 0, runs.second.stderr
    summary = events(runs.second.stdout)[-1]
    assert summary["event"] == "summary" and summary["cached"] == 3 and summary["ran"] == 0
    assert (runs.remote / "where.log").read_text() == "worker\n"  # not run again


def test_cli_leaves_the_external_scheduler_running(cluster: Cluster, runs: Runs) -> None:
    """taskrun does not own the cluster: after the runs, scheduler and worker still serve."""
    assert runs.first.returncode == 0
    assert cluster.scheduler.poll() is None and cluster.workers[0].poll() is None
    with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


# -- a worker that does not see the project directory: files shipped ----------------------


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A cluster whose worker cannot see the directory the driver keeps its projects in."""
    projects = tmp_path_factory.mktemp("hidden-projects")
    reason = can_hide(tmp_path_factory.mktemp("hide-probe"))
    if reason:
        pytest.skip(f"{reason}; the ship_files=True tests in test_dask.py cover shipping")
    found = start_cluster(tmp_path_factory.mktemp("hiding-cluster"), hide=projects)
    yield found, projects
    found.stop()


@pytest.fixture(scope="module")
def shipped(hidden: tuple[Cluster, Path]) -> Runs:
    """`taskrun run total` locally, then twice on the cluster whose worker cannot see it."""
    cluster, projects = hidden
    local, remote = write_project(projects / "local"), write_project(projects / "remote")
    address = ["--executor", "dask", "--dask-address", cluster.address]
    local_run = taskrun(local, "run", "total", "--json", "--executor", "process")
    first = taskrun(remote, "run", "total", "--json", *address)
    second = taskrun(remote, "run", "total", "--json", *address)
    return Runs(local, remote, local_run, first, second)


def test_cli_ships_files_to_a_worker_without_the_project(
    hidden: tuple[Cluster, Path], shipped: Runs
) -> None:
    """The worker cannot see the project; every task runs there anyway, on shipped files."""
    cluster, _ = hidden
    with distributed.Client(cluster.address, timeout=30, set_as_default=False) as client:
        (sees,) = client.run(os.path.isdir, str(shipped.remote)).values()
    assert sees is False
    assert shipped.first.returncode == 0, shipped.first.stderr
    ran = {e["task"]: e for e in events(shipped.first.stdout) if e["event"] == "ran"}
    assert sorted(ran) == ["numbers", "squares", "total"]
    assert ran["numbers"]["output"] == "on worker\n"
    assert not (shipped.remote / "where.log").exists()  # written in the worker's scratch copy


def test_cli_with_shipped_files_stores_the_same_entries_as_a_local_run(shipped: Runs) -> None:
    """Same fingerprints, product digests, products and output records as a local run."""
    assert shipped.local_run.returncode == 0, shipped.local_run.stderr
    local, remote = cache_entries(shipped.local), cache_entries(shipped.remote)
    assert set(remote) == {"numbers", "squares", "total"}
    assert remote == local and remote["total"][3] == TOTAL


def test_cli_with_shipped_files_writes_the_same_output_files(shipped: Runs) -> None:
    """The output file came back from the worker into the project, as after a local run."""
    squares = (shipped.remote / "build" / "squares.txt").read_text()
    assert squares == (shipped.local / "build" / "squares.txt").read_text() == SQUARES


def test_cli_with_shipped_files_second_run_is_all_cached_locally(shipped: Runs) -> None:
    """Run again: every task is a hit in the driver's cache."""
    assert shipped.second.returncode == 0, shipped.second.stderr
    summary = events(shipped.second.stdout)[-1]
    assert summary["event"] == "summary" and summary["cached"] == 3 and summary["ran"] == 0


def interrupt(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`taskrun run stuck ARGS`, Ctrl-C once the task started; (result, the task's pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskrun", "run", "stuck", "--executor", "dask", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not inherited ignored
    )
    started = root / "stuck.started"
    try:
        assert wait_until(lambda: started.exists() and started.read_text() != "", 60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        (root / "stuck.release").write_text("x")  # frees the worker's thread (Dask cannot kill it)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return result, int(started.read_text())


def test_cli_interrupt_cancels_the_task_and_leaves_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Ctrl-C: exit 130, the call in flight is cancelled, the scheduler serves on."""
    result, _ = interrupt(write_project(tmp_path / "p"), "--dask-address", cluster.address)
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr and "stuck" in result.stdout + result.stderr
    assert cluster.scheduler.poll() is None


def test_cli_interrupt_on_a_local_cluster_leaves_no_worker(tmp_path: Path) -> None:
    """Ctrl-C with a local cluster: exit 130, and the worker that ran the task is gone."""
    result, worker = interrupt(write_project(tmp_path / "p"), "-j", "1")
    assert result.returncode == 130, result.stderr
    assert worker != 0 and wait_until(lambda: gone(worker))


def test_cli_worker_without_taskrun_is_a_usage_error(tmp_path: Path) -> None:
    """A worker that cannot import taskrun: exit 2, naming the worker and the fix."""
    broken = start_cluster(tmp_path / "cluster", worker_code=NO_TASKRUN_WORKER)
    try:
        root = write_project(tmp_path / "p")
        result = taskrun(
            root, "run", "numbers", "--executor", "dask", "--dask-address", broken.address
        )
    finally:
        broken.stop()
    assert result.returncode == 2, result.stderr
    assert "cannot run taskrun's calls" in result.stderr
    assert "pip install taskrun" in result.stderr
    assert not (root / "where.log").exists()


# -- the executor against an external cluster -----------------------------------------------


@pytest.fixture
def external(cluster: Cluster) -> Iterator[DaskExecutor]:
    """An executor connected to the module's cluster."""
    ex = DaskExecutor(1, address=cluster.address)
    yield ex
    ex.shutdown()


def test_a_crash_is_not_rerun_by_an_external_scheduler(
    external: DaskExecutor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """The scheduler allows re-runs (allowed-failures 3), but a crash fails once, as crashed."""
    log = tmp_path / "starts"
    code = "import os\ndef die(log):\n    open(log, 'a').write('start\\n')\n    os._exit(5)\n"
    namespace: dict[str, Any] = {}
    exec(compile(code, str(tmp_path / "crash.py"), "exec"), namespace)
    outcome = external.submit(make_call(namespace["die"], project, log=str(log))).result(60)
    assert outcome.crashed and not outcome.ok
    assert "not run again" in outcome.error
    assert log.read_text() == "start\n"  # Dask's second start was refused before user code


def test_timeout_on_an_external_cluster(
    external: DaskExecutor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """A call past its deadline is timed out, with what it printed (fetched from the worker)."""
    pidfile = tmp_path / "pid"
    outcome = run(
        external, tasks.hang, project, timeout=0.5, pidfile=str(pidfile), release=str(release)
    )
    assert outcome.timed_out and outcome.error == "timed out after 0.5s"
    assert outcome.output == "hanging\n"


def test_cancel_on_an_external_cluster_never_starts_queued_calls(
    external: DaskExecutor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """cancel(): the running call is reported with its output; queued ones never start."""
    pidfile = tmp_path / "pid"
    running = external.submit(
        make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
    )
    queued = [
        external.submit(make_call(tasks.mark, project, path=str(tmp_path / f"m{i}")))
        for i in range(3)
    ]
    assert wait_until(pidfile.exists, 60)
    external.cancel()
    first = running.result(timeout=30)
    assert first.cancelled and first.error == "cancelled while it ran"
    assert first.output == "hanging\n"
    assert all(f.result(timeout=30).error == "cancelled before it started" for f in queued)
    release.write_text("x")  # the abandoned call returns; the worker takes the next one
    assert run(external, tasks.add, project, a=1, b=2).value == 3
    assert not list(tmp_path.glob("m*"))


def test_a_lost_scheduler_fails_the_calls_with_a_clear_message(
    tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """The scheduler dies mid-run: calls in flight and later ones fail, naming the address."""
    doomed = start_cluster(tmp_path / "cluster")
    try:
        with DaskExecutor(1, address=doomed.address) as ex:
            pidfile = tmp_path / "pid"
            future = ex.submit(
                make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
            )
            assert wait_until(pidfile.exists, 60)
            os.killpg(doomed.scheduler.pid, signal.SIGKILL)
            outcome = future.result(timeout=60)
            assert not outcome.ok and not outcome.cancelled
            assert outcome.error.startswith(
                f"lost the connection to the Dask scheduler at {doomed.address}"
            )
            later = ex.submit(make_call(tasks.add, project, a=1, b=2))
            assert later.done() and later.result().error == outcome.error
    finally:
        doomed.stop()
