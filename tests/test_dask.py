"""The Dask executor: the executor behavioural suite on a LocalCluster, plus Dask specifics.

One LocalCluster (two one-thread worker processes on 127.0.0.1) serves the whole module;
tests that need an executor of their own (to shut it down, say) connect a second one to
that cluster by address, which is also how an external scheduler is used. The task module
and helpers are test_executors.py's, so both suites check the same behaviours.
Concurrency is shown with file handshakes (bounded waits), never with timings.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

pytest.importorskip(
    "distributed", reason="the dask extra is not installed: pip install 'taskrun[dask]'"
)

import test_executors as suite

from taskrun.errors import UsageError
from taskrun.executors import Executor, make_executor
from taskrun.executors import shipping as shipping_module
from taskrun.executors.base import Call
from taskrun.executors.dask import DaskExecutor
from taskrun.files import File

gone, make_call, run, wait_until = suite.gone, suite.make_call, suite.run, suite.wait_until
project, release, tasks = suite.project, suite.release, suite.tasks  # the same fixtures

pytestmark = pytest.mark.slow  # a cluster takes a second or two to start

# How long a test waits for a file, a future or a worker before it calls the wait hung.
# Only a guard against hangs: every wait ends as soon as its event happens, so on a loaded
# machine (a worker process restarting after a kill can take many seconds) it must be long.
PATIENCE = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskExecutor]:
    """The module's executor, owning a LocalCluster of two one-thread workers."""
    ex = DaskExecutor(2)
    ex.connect()
    yield ex
    ex.shutdown()


def both_workers(ex: DaskExecutor) -> None:
    """Wait until the cluster runs its two workers again: a test before may have killed
    one (a timeout, a crash), and its nanny's replacement takes a while to start. Two
    calls that must run at once would otherwise both be queued on the one worker left."""
    client = ex._client
    assert client is not None
    client.wait_for_workers(2, timeout=PATIENCE)


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


def occupy(ex: Executor, tasks: ModuleType, root: Path, folder: Path, release: Path) -> list:
    """Keep both workers busy with hanging calls; returns their futures once both started."""
    futures = []
    for i in range(2):
        pidfile = folder / f"busy{i}"
        futures.append(
            ex.submit(make_call(tasks.hang, root, pidfile=str(pidfile), release=str(release)))
        )
    assert wait_until(lambda: all((folder / f"busy{i}").exists() for i in range(2)), PATIENCE)
    return futures


# -- the behavioural suite ------------------------------------------------------------------


def test_make_executor_by_name() -> None:
    """make_executor('dask') makes a DaskExecutor; nothing starts until the first call."""
    ex = make_executor("dask", 3)
    try:
        assert isinstance(ex, DaskExecutor) and ex.jobs == 3 and ex.name == "dask"
        assert ex.scheduler_address is None
    finally:
        ex.shutdown()


def test_returns_the_product(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """A call that returns resolves ok with its product."""
    outcome = run(executor, tasks.add, project, a=2, b=3)
    assert outcome.ok and outcome.value == 5 and outcome.task == "add"
    assert not (outcome.timed_out or outcome.crashed or outcome.cancelled)


def test_exception_is_a_failed_outcome_with_the_users_traceback(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """A raising task fails with a one-line error and a traceback of the user's frames only."""
    outcome = run(executor, tasks.fail, project, n=7)
    assert not outcome.ok
    assert outcome.error == "ValueError: bad input 7"
    assert "in fail" in outcome.traceback and "in helper_raise" in outcome.traceback
    assert 'raise ValueError(f"bad input {n}")' in outcome.traceback
    assert str(tasks.__file__) in outcome.traceback
    for own in ("trampoline", "executors", "call_function", "distributed"):
        assert own not in outcome.traceback


def test_chained_exception_keeps_its_cause(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """The traceback shows the cause of a chained exception."""
    outcome = run(executor, tasks.chained, project)
    assert outcome.error.endswith("TaskError: lookup failed")
    assert "KeyError: 'missing'" in outcome.traceback and "direct cause" in outcome.traceback


def test_output_is_captured_in_order(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """stdout and stderr of a task land in its outcome, interleaved in order."""
    outcome = run(executor, tasks.chatty, project)
    assert outcome.output == "out 1\nerr 1\nout 2 h\u00e9llo \u2713\n"


def test_output_is_captured_at_the_descriptor_level(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """Output of child processes and raw writes to fds 1 and 2 is the task's output."""
    outcome = run(executor, tasks.child_output, project)
    assert outcome.output == "from child\nraw fd 1\nraw fd 2\n"


def test_sh_output_is_captured(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """What the sh() helper echoes lands in the task's output."""
    outcome = run(executor, tasks.via_sh, project)
    assert outcome.ok, outcome.error
    assert "from sh" in outcome.output


def test_runs_in_the_project_root(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """The task's working directory is the call's cwd, in a worker process."""
    assert run(executor, tasks.where, project).value == str(project)
    assert run(executor, tasks.pid, project).value != os.getpid()


def test_project_modules_import(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """A module in the project root imports from a task."""
    name = f"helper_{uuid.uuid4().hex}"
    (project / f"{name}.py").write_text("VALUE = 41 + 1\n")
    assert run(executor, tasks.use_project_module, project, name=name).value == 42


def test_runs_functions_not_importable_by_reference(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """A function whose module is not in sys.modules (a task file) still runs on a worker."""
    assert tasks.__name__ not in sys.modules
    with pytest.raises((pickle.PicklingError, AttributeError, ModuleNotFoundError)):
        pickle.dumps(tasks.add)
    assert run(executor, tasks.add, project, a=20, b=22).value == 42


def test_products_of_task_file_classes_keep_their_class(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """A product whose class is defined in the task file is an instance of that class here."""
    value = run(executor, tasks.point, project).value
    assert isinstance(value, tasks.Point) and value == tasks.Point(1, 2)


def test_sys_exit_in_a_task_is_a_failure(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """sys.exit() fails the task instead of ending the worker."""
    outcome = run(executor, tasks.exits, project)
    assert not outcome.ok and outcome.error == "SystemExit: 4"


def test_keyboard_interrupt_in_a_task_is_a_failure(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """A task raising KeyboardInterrupt on a worker fails like any exception."""
    outcome = run(executor, tasks.interrupts, project)
    assert not outcome.ok and outcome.error == "KeyboardInterrupt"


def test_unpicklable_product_fails(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """A product that cannot be pickled back to the driver fails the call, clearly."""
    outcome = run(executor, tasks.lock, project)
    assert not outcome.ok and not outcome.crashed
    assert outcome.error.startswith("the product cannot be pickled") and "lock" in outcome.error


def test_unpicklable_argument_fails_at_submit(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """An argument that cannot be pickled fails the call without reaching a worker."""
    future = executor.submit(make_call(tasks.add, project, a=threading.Lock(), b=1))
    assert future.done()
    outcome = future.result()
    assert not outcome.ok and "cannot be pickled" in outcome.error


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


def test_timeout_stops_a_hung_task_and_the_run_goes_on(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """A task past its timeout resolves timed out, its worker is killed; the executor goes on."""
    pidfile = tmp_path / "pid"
    outcome = run(
        executor, tasks.hang, project, timeout=0.5, pidfile=str(pidfile), release=str(release)
    )
    assert outcome.timed_out and not outcome.ok
    assert outcome.error == "timed out after 0.5s"
    assert "hanging" in outcome.output
    assert wait_until(lambda: gone(int(pidfile.read_text())), PATIENCE)
    assert run(executor, tasks.add, project, a=1, b=1).value == 2


def test_a_timed_out_slot_is_replaced(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """After a timeout the cluster still runs two calls at once (the worker was replaced)."""
    hung = run(
        executor,
        tasks.hang,
        project,
        timeout=0.3,
        pidfile=str(tmp_path / "p"),
        release=str(release),
    )
    assert hung.timed_out
    test_two_calls_run_at_once(executor, tasks, project, tmp_path)


@pytest.mark.parametrize(
    ("fn", "kwargs"), [("die", {"code": 3}), ("kill_self", {}), ("segfault", {})]
)
def test_worker_death_is_a_crash_not_a_rerun(
    executor: Executor, tasks: ModuleType, project: Path, fn: str, kwargs: dict
) -> None:
    """A task that kills its worker fails as crashed, not re-run; a new worker takes over."""
    outcome = run(executor, getattr(tasks, fn), project, **kwargs)
    assert outcome.crashed and not outcome.ok
    assert "died while running the task" in outcome.error and "not run again" in outcome.error
    if fn == "die":
        assert outcome.output == "about to die\n"
    if fn == "segfault":
        assert "Segmentation fault" in outcome.output and "in segfault" in outcome.output
    assert run(executor, tasks.add, project, a=1, b=2).value == 3


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


def test_two_calls_run_at_once(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """With two workers, two calls that wait for each other both finish."""
    both_workers(cast(DaskExecutor, executor))
    a = executor.submit(
        make_call(tasks.rendezvous, project, me="a", other="b", folder=str(tmp_path))
    )
    b = executor.submit(
        make_call(tasks.rendezvous, project, me="b", other="a", folder=str(tmp_path))
    )
    assert (a.result(PATIENCE).value, b.result(PATIENCE).value) == ("a", "b")


def test_concurrent_tasks_get_only_their_own_output(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """Two tasks printing in turns each capture only their own lines."""
    futures = [
        executor.submit(make_call(tasks.partner, project, me=me, rounds=3, folder=str(tmp_path)))
        for me in ("a", "b")
    ]
    a, b = (f.result(PATIENCE) for f in futures)
    assert a.ok and b.ok, (a.error, b.error)
    assert (a.output, b.output) == ("a0\na1\na2\n", "b0\nb1\nb2\n")


def test_cancel_resolves_running_and_queued_calls(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """cancel() resolves every pending call as cancelled; queued calls never start."""
    running = occupy(executor, tasks, project, tmp_path, release)
    queued = [
        executor.submit(make_call(tasks.mark, project, path=str(tmp_path / f"m{i}")))
        for i in range(2)
    ]
    executor.cancel()
    for future in running:
        outcome = future.result(PATIENCE)
        assert outcome.cancelled and outcome.error == "cancelled while it ran"
        assert "hanging" in outcome.output
    for future in queued:
        outcome = future.result(PATIENCE)
        assert outcome.cancelled and outcome.error == "cancelled before it started"
    for i in range(2):
        assert wait_until(lambda i=i: gone(int((tmp_path / f"busy{i}").read_text())), PATIENCE)
    assert run(executor, tasks.add, project, a=1, b=2).value == 3  # still usable
    assert not list(tmp_path.glob("m*"))


def test_a_future_cancelled_by_the_caller_is_skipped(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """A queued future the caller cancels never runs."""
    busy = occupy(executor, tasks, project, tmp_path, release)
    second = executor.submit(make_call(tasks.mark, project, path=str(tmp_path / "m")))
    assert second.cancel()
    release.write_text("x")
    assert all(f.result(PATIENCE).ok for f in busy)
    assert run(executor, tasks.mark, project, path=str(tmp_path / "after")).ok
    assert second.cancelled() and not (tmp_path / "m").exists()


def test_exiting_the_with_block_on_an_error_cancels(
    client_of: DaskExecutor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """An exception out of the with block cancels pending calls."""
    pidfile = tmp_path / "pid"
    # An exception raised inside the executor's block is the test (PT012, SIM117).
    with pytest.raises(RuntimeError):  # noqa: PT012, SIM117
        with client_of as ex:
            future = ex.submit(
                make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
            )
            assert wait_until(pidfile.exists, PATIENCE)
            raise RuntimeError("stop")
    assert future.result(PATIENCE).cancelled


def test_submit_after_shutdown_is_a_usage_error(
    client_of: DaskExecutor, tasks: ModuleType, project: Path
) -> None:
    """A shut-down executor refuses new calls; shutting down twice is fine."""
    assert run(client_of, tasks.add, project, a=1, b=2).value == 3
    client_of.shutdown()
    client_of.shutdown()
    with pytest.raises(UsageError, match="shut down"):
        client_of.submit(make_call(tasks.add, project, a=1, b=2))


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
