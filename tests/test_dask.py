"""The Dask executor's own matters, on a LocalCluster (two one-thread worker processes on
127.0.0.1): large arguments, attempts, workers that die with calls queued on them,
external schedulers, and shipping files to workers that do not share the project.

Every behaviour all executors share runs on Dask too, in test_executors.py (the
``executor`` fixtures of conftest.py include dask, on the same kind of cluster). Tests that
need an executor of their own connect a second one to the module's cluster by address,
which is also how an external scheduler is used. Concurrency is shown with file
handshakes (bounded waits), never with timings.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

pytest.importorskip(
    "distributed", reason="the dask extra is not installed: pip install 'taskrun[dask]'"
)

from executor_support import PATIENCE, make_call, run, wait_until

from taskrun.errors import UsageError
from taskrun.executors import Executor, make_executor
from taskrun.executors import shipping as shipping_module
from taskrun.executors.base import Call
from taskrun.executors.dask import DaskExecutor
from taskrun.files import File

pytestmark = pytest.mark.slow  # a cluster takes a second or two to start


def both_workers(ex: DaskExecutor) -> None:
    """Wait until the cluster runs its two workers again: a test before may have killed
    one (a timeout, a crash), and its nanny's replacement takes a while to start. Two
    calls that must run at once would otherwise both be queued on the one worker left."""
    client = ex._client
    assert client is not None
    client.wait_for_workers(2, timeout=PATIENCE)


@pytest.fixture
def cluster(dask_cluster: DaskExecutor) -> DaskExecutor:
    """The module's executor, owning a LocalCluster of two one-thread workers (conftest)."""
    return dask_cluster


@pytest.fixture
def executor(cluster: DaskExecutor) -> DaskExecutor:
    """The module's executor, both workers running; nothing submitted before is pending."""
    both_workers(cluster)
    return cluster


@pytest.fixture
def client_of(cluster: DaskExecutor) -> Iterator[DaskExecutor]:
    """A second executor, connected by address to the module's cluster (an 'external' one)."""
    assert cluster.scheduler_address is not None
    both_workers(cluster)
    ex = DaskExecutor(2, address=cluster.scheduler_address)
    yield ex
    ex.shutdown()


# -- Dask's own ---------------------------------------------------------------------------


def test_make_executor_by_name() -> None:
    """make_executor('dask') makes a DaskExecutor; nothing starts until the first call."""
    ex = make_executor("dask", 3)
    try:
        assert isinstance(ex, DaskExecutor) and ex.jobs == 3 and ex.name == "dask"
        assert ex.scheduler_address is None
    finally:
        ex.shutdown()


def test_large_arguments_travel(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """An argument of several MiB reaches the worker (it goes ahead with scatter)."""
    big = b"x" * (3 << 20)
    assert run(executor, tasks.add, project, a=big, b=b"!").value == big + b"!"


def test_each_attempt_runs_even_with_equal_arguments(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """Two submissions of the same call both run: every attempt has a Dask key of its own."""
    log = tmp_path / "log"
    code = "def append(path):\n    open(path, 'a').write('x')\n    return 1\n"
    namespace: dict[str, object] = {}
    exec(compile(code, str(tmp_path / "defs.py"), "exec"), namespace)
    append = namespace["append"]
    first = executor.submit(make_call(append, project, path=str(log)))  # type: ignore[arg-type]
    second = executor.submit(make_call(append, project, path=str(log)))  # type: ignore[arg-type]
    assert first.result(PATIENCE).ok and second.result(PATIENCE).ok
    assert log.read_text() == "xx"


def test_calls_queued_on_a_dying_worker_are_sent_again(
    tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """A worker dies: the calls Dask had queued on it (not begun) run again, not crashed."""
    code = (
        "import os, time\n"
        "def die_when(path):\n"
        "    open(path + '.started', 'w').close()\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.01)\n"
        "    os._exit(3)\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, str(tmp_path / "dying.py"), "exec"), namespace)
    trigger = tmp_path / "trigger"
    with DaskExecutor(1) as ex:  # one worker: Dask queues the marks on the one that dies
        dying = ex.submit(make_call(namespace["die_when"], project, path=str(trigger)))
        assert wait_until((tmp_path / "trigger.started").exists, PATIENCE)
        marks = [
            ex.submit(make_call(tasks.mark, project, path=str(tmp_path / f"m{i}")))
            for i in range(3)
        ]
        (worker,) = ex._cluster.scheduler.workers.values()
        assert wait_until(lambda: len(worker.processing) >= 2, PATIENCE)  # marks queued there
        trigger.write_text("x")
        assert dying.result(PATIENCE).crashed
        outcomes = [f.result(PATIENCE) for f in marks]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert all((tmp_path / f"m{i}").exists() for i in range(3))


def test_a_missing_project_directory_is_explained(
    executor: Executor, tasks: ModuleType, tmp_path: Path
) -> None:
    """A worker that does not see the project directory fails the call, naming the requirement."""
    outcome = run(executor, tasks.add, tmp_path / "not-shared", a=1, b=2)
    assert not outcome.ok and "does not exist on the Dask worker" in outcome.error
    assert "shared" in outcome.error


def test_a_task_file_the_worker_sees_otherwise_is_refused(
    executor: Executor, project: Path
) -> None:
    """A worker that sees another version of the task file (a stale copy) refuses the call."""
    path = project / "tasks_here.py"
    path.write_text("def answer():\n    return 42\n")
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert run(executor, namespace["answer"], project).value == 42
    path.write_text("def answer():\n    return 43  # edited since it was loaded\n")
    outcome = run(executor, namespace["answer"], project)
    assert not outcome.ok and "is not the one the driver loaded" in outcome.error


# -- an external scheduler ------------------------------------------------------------------


def test_shutting_down_a_client_leaves_the_cluster_running(
    cluster: DaskExecutor, client_of: DaskExecutor, tasks: ModuleType, project: Path
) -> None:
    """An executor given an address closes only its client: the scheduler serves on."""
    assert run(client_of, tasks.add, project, a=1, b=2).value == 3
    client_of.shutdown()
    assert run(cluster, tasks.add, project, a=2, b=2).value == 4


def test_an_unreachable_scheduler_is_a_usage_error(tasks: ModuleType, project: Path) -> None:
    """No scheduler at the address: a UsageError naming it and how to start one, once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens on it
    with DaskExecutor(1, address=f"tcp://127.0.0.1:{port}", connect_timeout=1) as ex:
        for _ in range(2):  # the second attempt fails at once, with the same message
            with pytest.raises(UsageError, match=rf"127.0.0.1:{port}.*`dask scheduler`"):
                ex.submit(make_call(tasks.add, project, a=1, b=2))


# -- workers without the project directory: files shipped -----------------------------------

JOBS = """
import os
from pathlib import Path

import helpers
from taskrun.files import File


def build(weights: File, n: int = 3) -> dict:
    values = [int(v) for v in Path("data/in.txt").read_text().split()][:n]
    Path("build").mkdir(exist_ok=True)
    Path("build/out.txt").write_text(helpers.lines(v * int(weights.read_text()) for v in values))
    return {"file": File("build/out.txt"), "cwd": os.getcwd(), "pid": os.getpid()}


def size(path: str) -> int:
    return len(Path(path).read_bytes())
"""


@pytest.fixture
def jobs(project: Path) -> ModuleType:
    """A task module inside the project (with a helper module and data), loaded by path."""
    (project / "helpers.py").write_text(
        "def lines(vs):\n    return ''.join(f'{v}\\n' for v in vs)\n"
    )
    (project / "data").mkdir()
    (project / "data" / "in.txt").write_text("1 2 3 4")
    (project / "weights.txt").write_text("10")
    (project / "jobs.py").write_text(JOBS)
    name = f"taskrun_test_jobs_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, project / "jobs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(project))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("helpers", None)
    return module


@pytest.fixture
def shipping(cluster: DaskExecutor) -> Iterator[DaskExecutor]:
    """An executor on the module's cluster that always ships files (as if it could not share)."""
    both_workers(cluster)
    ex = DaskExecutor(2, address=cluster.scheduler_address, ship_files=True)
    yield ex
    ex.shutdown()


def build_call(jobs: ModuleType, project: Path, **kwargs: Any) -> Call:
    return Call(
        task="build",
        fn=jobs.build,
        kwargs={"weights": File("weights.txt"), **kwargs},
        cwd=str(project),
        timeout=None,
        inputs=("data/in.txt",),
        outputs=("build/out.txt",),
    )


def test_shipped_call_runs_on_a_copy_and_its_outputs_come_back(
    shipping: DaskExecutor, jobs: ModuleType, project: Path
) -> None:
    """Inputs, a File option and a helper module reach the worker; the output file comes back."""
    outcome = shipping.submit(build_call(jobs, project)).result(PATIENCE)
    assert outcome.ok, outcome.error + outcome.traceback
    value: Any = outcome.value
    assert value["file"] == File("build/out.txt")
    assert value["cwd"] != str(project) and value["pid"] != os.getpid()
    assert (project / "build" / "out.txt").read_text() == "10\n20\n30\n"


def test_a_big_input_is_sent_to_the_cluster_once(
    shipping: DaskExecutor, jobs: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that ship the same big file share one scattered copy of it."""
    (project / "data" / "big.bin").write_bytes(os.urandom(1 << 20))
    shipping.connect()
    scattered: list[int] = []
    scatter = shipping._client.scatter

    def counted(data: bytes, **kwargs: Any) -> Any:
        scattered.append(len(data))
        return scatter(data, **kwargs)

    monkeypatch.setattr(shipping._client, "scatter", counted)
    calls = [
        Call(
            "size",
            jobs.size,
            {"path": "data/big.bin"},
            str(project),
            None,
            inputs=("data/big.bin",),
        )
        for _ in range(3)
    ]
    outcomes = [f.result(PATIENCE) for f in [shipping.submit(c) for c in calls]]
    assert [o.value for o in outcomes] == [1 << 20] * 3, [o.error for o in outcomes]
    assert scattered == [1 << 20]


def test_shipping_more_than_the_limit_fails_the_call(
    shipping: DaskExecutor, jobs: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files past the limit: the call fails before it reaches a worker, naming the biggest."""
    monkeypatch.setattr(shipping_module, "SHIP_LIMIT", 1000)
    (project / "data" / "in.txt").write_text("1 " * 1000)
    future = shipping.submit(build_call(jobs, project))
    assert future.done()
    outcome = future.result()
    assert not outcome.ok and "more than the 1000 bytes" in outcome.error
    assert "data/in.txt" in outcome.error


def test_by_default_files_are_shipped_to_workers_that_see_another_project(
    client_of: DaskExecutor, jobs: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked before the first call, workers that see another task file get the files shipped."""
    monkeypatch.setattr(client_of, "_stamp", lambda call: (jobs.__file__, 1, 1))
    outcome = client_of.submit(build_call(jobs, project)).result(PATIENCE)
    assert outcome.ok, outcome.error
    assert cast(dict, outcome.value)["cwd"] != str(project)
    assert (project / "build" / "out.txt").read_text() == "10\n20\n30\n"


def test_a_worker_without_the_project_sends_the_call_back_to_be_shipped(
    client_of: DaskExecutor, jobs: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that does not see the project (though the driver thought so) gets it shipped."""
    monkeypatch.setattr(client_of, "_workers_see", lambda call: True)
    monkeypatch.setattr(client_of, "_stamp", lambda call: (jobs.__file__, 1, 1))
    first = client_of.submit(build_call(jobs, project)).result(PATIENCE)
    second = client_of.submit(build_call(jobs, project, n=2)).result(PATIENCE)
    assert first.ok and second.ok, (first.error, second.error)
    assert {cast(dict, o.value)["cwd"] for o in (first, second)}.isdisjoint({str(project)})
    assert (project / "build" / "out.txt").read_text() == "10\n20\n"


def test_never_shipping_fails_a_call_the_worker_cannot_run_in_place(
    cluster: DaskExecutor, jobs: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ship_files=False: a worker that sees another task file refuses the call, as before."""
    with DaskExecutor(1, address=cluster.scheduler_address, ship_files=False) as ex:
        monkeypatch.setattr(ex, "_stamp", lambda call: (jobs.__file__, 1, 1))
        outcome = ex.submit(build_call(jobs, project)).result(PATIENCE)
    assert not outcome.ok and "is not the one the driver loaded" in outcome.error
    assert not (project / "build").exists()


def test_files_lost_with_a_dead_worker_are_sent_again(
    tasks: ModuleType, jobs: ModuleType, project: Path
) -> None:
    """The one worker holding a scattered input dies: the next call sends the input again."""
    (project / "data" / "big.bin").write_bytes(os.urandom(1 << 20))
    call = Call("size", jobs.size, {"path": "data/big.bin"}, str(project), None,
                inputs=("data/big.bin",))  # fmt: skip
    with DaskExecutor(1, ship_files=True) as ex:
        assert ex.submit(call).result(PATIENCE).value == 1 << 20
        assert run(ex, tasks.die, project, code=3).crashed
        # The driver may not have heard of the loss yet when it sends the next call: say the
        # lost copy is alive once, so that Dask refuses the call ("lost dependencies").
        alive, asked = ex._parcels._alive, []

        def lying_once(handle: Any) -> bool:
            asked.append(handle)
            return len(asked) == 1 or alive(handle)

        ex._parcels._alive = lying_once  # type: ignore[method-assign]
        outcome = ex.submit(call).result(PATIENCE)
    assert outcome.ok and outcome.value == 1 << 20, outcome.error
    assert len(asked) == 2  # the call was sent again, with the input scattered afresh
