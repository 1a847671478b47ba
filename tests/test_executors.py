"""Executors: one behavioural suite run on every executor, plus each one's specifics.

The executor fixtures (``executor``: inline, thread, process and dask on a loopback
LocalCluster; ``parallel``, ``remote``, ``parallel_name``) are in conftest.py; the task
module and the helpers in executor_support.py. Task functions come from a module file
loaded by path and *not* left in sys.modules, like a task file: the process and Dask
executors must ship them by value. Dask's own matters (external schedulers, shipping
files, workers that die) are in test_dask.py. Concurrency is shown with file handshakes
in tmp_path (bounded waits), never with timings.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from executor_support import PATIENCE, gone, make_call, run, wait_until

from taskrun.errors import UsageError
from taskrun.executors import (
    EXECUTOR_NAMES,
    Call,
    Executor,
    InlineExecutor,
    MockExecutor,
    Outcome,
    ProcessExecutor,
    ThreadExecutor,
    make_executor,
)
from taskrun.executors import process as process_module
from taskrun.executors.base import call_function, describe_exception, format_user_traceback
from taskrun.executors.trampoline import decode_result, encode_call, run_pickled


@pytest.fixture
def processes() -> Iterator[ProcessExecutor]:
    """A process executor with two workers."""
    ex = ProcessExecutor(2)
    yield ex
    ex.shutdown()


# -- the behavioural suite: every executor --------------------------------------------------


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
    assert 'raise ValueError(f"bad input {n}")' in outcome.traceback  # source lines too
    assert str(tasks.__file__) in outcome.traceback
    for own in ("trampoline", "executors", "call_function", "distributed"):
        assert own not in outcome.traceback


def test_chained_exception_keeps_its_cause(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """The traceback shows the cause of a chained exception."""
    outcome = run(executor, tasks.chained, project)
    assert outcome.error.endswith("TaskError: lookup failed")
    assert "KeyError: 'missing'" in outcome.traceback
    assert "direct cause" in outcome.traceback


def test_output_is_captured_in_order(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """stdout and stderr of a task land in its outcome, interleaved in order."""
    outcome = run(executor, tasks.chatty, project)
    assert outcome.output == "out 1\nerr 1\nout 2 h\u00e9llo \u2713\n"


def test_sh_output_is_captured(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """What the sh() helper echoes lands in the task's output."""
    outcome = run(executor, tasks.via_sh, project)
    assert outcome.ok, outcome.error
    assert "from sh" in outcome.output


def test_runs_in_the_project_root(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """The task's working directory is the call's cwd (in a worker process for some)."""
    assert run(executor, tasks.where, project).value == str(project)
    if executor.name in ("process", "dask"):
        assert run(executor, tasks.pid, project).value != os.getpid()


def test_project_modules_import(executor: Executor, tasks: ModuleType, project: Path) -> None:
    """A module in the project root imports from a task."""
    name = f"helper_{uuid.uuid4().hex}"
    (project / f"{name}.py").write_text("VALUE = 41 + 1\n")
    try:
        assert run(executor, tasks.use_project_module, project, name=name).value == 42
    finally:
        sys.modules.pop(name, None)


def test_sys_exit_in_a_task_is_a_failure(
    executor: Executor, tasks: ModuleType, project: Path
) -> None:
    """sys.exit() fails the task instead of ending the driver or the worker."""
    outcome = run(executor, tasks.exits, project)
    assert not outcome.ok and outcome.error == "SystemExit: 4"


def test_timeout_stops_a_hung_task_and_the_run_goes_on(
    executor: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """A task past its timeout resolves timed out (a worker process is killed); the
    executor keeps working."""
    pidfile = tmp_path / "pid"
    outcome = run(
        executor, tasks.hang, project, timeout=0.5, pidfile=str(pidfile), release=str(release)
    )
    assert outcome.timed_out and not outcome.ok
    assert outcome.error == "timed out after 0.5s"
    assert "hanging" in outcome.output
    if executor.name in ("process", "dask"):
        assert wait_until(lambda: gone(int(pidfile.read_text())))
    assert run(executor, tasks.add, project, a=1, b=1).value == 2


def test_submit_after_shutdown_is_a_usage_error(
    executor_name: str, tasks: ModuleType, project: Path
) -> None:
    """A shut-down executor refuses new calls; shutting down twice is fine."""
    ex = make_executor(executor_name, 1)
    try:
        assert run(ex, tasks.add, project, a=1, b=2).value == 3
    finally:
        ex.shutdown()
    ex.shutdown()
    with pytest.raises(UsageError, match="shut down"):
        ex.submit(make_call(tasks.add, project, a=1, b=2))


# -- executors that run calls at once (thread, process, dask) --------------------------------


def test_two_calls_run_at_once(
    parallel: Executor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """With two jobs, two calls that wait for each other both finish."""
    a = parallel.submit(
        make_call(tasks.rendezvous, project, me="a", other="b", folder=str(tmp_path))
    )
    b = parallel.submit(
        make_call(tasks.rendezvous, project, me="b", other="a", folder=str(tmp_path))
    )
    assert (a.result(PATIENCE).value, b.result(PATIENCE).value) == ("a", "b")


def test_concurrent_tasks_get_only_their_own_output(
    parallel: Executor, tasks: ModuleType, project: Path, tmp_path: Path
) -> None:
    """Two tasks printing in turns each capture only their own lines."""
    futures = [
        parallel.submit(make_call(tasks.partner, project, me=me, rounds=3, folder=str(tmp_path)))
        for me in ("a", "b")
    ]
    a, b = (f.result(PATIENCE) for f in futures)
    assert a.ok and b.ok, (a.error, b.error)
    assert a.output == "a0\na1\na2\n"
    assert b.output == "b0\nb1\nb2\n"


def test_a_timed_out_slot_is_replaced(
    parallel: Executor, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """After a timeout the executor still runs two calls at once (a worker was replaced)."""
    hung = run(
        parallel,
        tasks.hang,
        project,
        timeout=0.3,
        pidfile=str(tmp_path / "pid"),
        release=str(release),
    )
    assert hung.timed_out
    test_two_calls_run_at_once(parallel, tasks, project, tmp_path)


def test_keyboard_interrupt_off_the_main_thread_is_a_failure(
    parallel: Executor, tasks: ModuleType, project: Path
) -> None:
    """A task raising KeyboardInterrupt in a worker fails like any exception."""
    outcome = run(parallel, tasks.interrupts, project)
    assert not outcome.ok and outcome.error == "KeyboardInterrupt"


def test_cancel_resolves_running_and_queued_calls(
    parallel_name: str, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """cancel() resolves every pending call as cancelled; queued calls never start."""
    with make_executor(parallel_name, 1) as ex:
        pidfile = tmp_path / "pid"
        running = ex.submit(
            make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
        )
        queued = [
            ex.submit(make_call(tasks.mark, project, path=str(tmp_path / f"m{i}")))
            for i in range(2)
        ]
        assert wait_until(pidfile.exists)
        ex.cancel()
        first = running.result(PATIENCE)
        assert first.cancelled and not first.ok and first.error == "cancelled while it ran"
        assert "hanging" in first.output
        for future in queued:
            outcome = future.result(PATIENCE)
            assert outcome.cancelled and outcome.error == "cancelled before it started"
        assert not list(tmp_path.glob("m*"))
        if parallel_name in ("process", "dask"):  # its worker process is killed
            assert wait_until(lambda: gone(int(pidfile.read_text())))
        # still usable afterwards
        assert run(ex, tasks.add, project, a=1, b=2).value == 3


def test_a_future_cancelled_by_the_caller_is_skipped(
    parallel_name: str, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """A queued future the caller cancels never runs."""
    with make_executor(parallel_name, 1) as ex:
        pidfile = tmp_path / "pid"
        first = ex.submit(
            make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
        )
        second = ex.submit(make_call(tasks.mark, project, path=str(tmp_path / "m")))
        assert wait_until(pidfile.exists)
        assert second.cancel()
        release.write_text("x")
        assert first.result(PATIENCE).ok
        after = run(ex, tasks.mark, project, path=str(tmp_path / "after"))
        assert after.ok
        assert second.cancelled() and not (tmp_path / "m").exists()


def test_exiting_the_with_block_on_an_error_cancels(
    parallel_name: str, tasks: ModuleType, project: Path, tmp_path: Path, release: Path
) -> None:
    """An exception out of the with block cancels pending calls."""
    pidfile = tmp_path / "pid"
    # PT012 on purpose: the test is what an exception raised inside the executor's block does.
    with pytest.raises(RuntimeError), make_executor(parallel_name, 1) as ex:  # noqa: PT012
        future = ex.submit(
            make_call(tasks.hang, project, pidfile=str(pidfile), release=str(release))
        )
        assert wait_until(pidfile.exists)
        raise RuntimeError("stop")
    assert future.result(PATIENCE).cancelled


# -- executors that run calls in other processes (process, dask) ----------------------------


def test_runs_functions_not_importable_by_reference(
    remote: Executor, tasks: ModuleType, project: Path
) -> None:
    """A function whose module is not in sys.modules (a task file) still runs in a worker."""
    assert tasks.__name__ not in sys.modules
    with pytest.raises((pickle.PicklingError, AttributeError, ModuleNotFoundError)):
        pickle.dumps(tasks.add)
    outcome = run(remote, tasks.add, project, a=20, b=22)
    assert outcome.ok and outcome.value == 42


def test_products_of_task_file_classes_keep_their_class(
    remote: Executor, tasks: ModuleType, project: Path
) -> None:
    """A product whose class is defined in the task file is an instance of that class here."""
    value = run(remote, tasks.point, project).value
    assert isinstance(value, tasks.Point) and value == tasks.Point(1, 2)


def test_output_is_captured_at_the_descriptor_level(
    remote: Executor, tasks: ModuleType, project: Path
) -> None:
    """Output of child processes and raw writes to fds 1 and 2 is the task's output."""
    outcome = run(remote, tasks.child_output, project)
    assert outcome.output == "from child\nraw fd 1\nraw fd 2\n"


def test_unpicklable_product_fails(remote: Executor, tasks: ModuleType, project: Path) -> None:
    """A product that cannot be pickled back to the driver fails the call, clearly."""
    outcome = run(remote, tasks.lock, project)
    assert not outcome.ok and not outcome.crashed
    assert outcome.error.startswith("the product cannot be pickled")
    assert "lock" in outcome.error


def test_unpicklable_argument_fails_at_submit(
    remote: Executor, tasks: ModuleType, project: Path
) -> None:
    """An argument that cannot be pickled fails the call without reaching a worker."""
    future = remote.submit(make_call(tasks.add, project, a=threading.Lock(), b=1))
    assert future.done()
    outcome = future.result()
    assert not outcome.ok and "cannot be pickled" in outcome.error


# What each executor says when the worker running a call dies (the process executor knows
# how; Dask only that it did).
_DEATHS = {
    ("process", "die"): "the worker process exited with code 3 while running the task",
    ("process", "kill_self"): "the worker process was killed by SIGKILL while running the task",
    ("process", "segfault"): "SIGSEGV",
    ("dask", "die"): "died while running the task",
    ("dask", "kill_self"): "died while running the task",
    ("dask", "segfault"): "died while running the task",
}


@pytest.mark.parametrize(
    ("fn", "kwargs"), [("die", {"code": 3}), ("kill_self", {}), ("segfault", {})]
)
def test_worker_death_is_a_crash_not_a_rerun(
    remote: Executor, tasks: ModuleType, project: Path, fn: str, kwargs: dict[str, Any]
) -> None:
    """A task that kills its worker fails as crashed, not re-run; a new worker takes over.
    A segfault's output has faulthandler's traceback of the task."""
    outcome = run(remote, getattr(tasks, fn), project, **kwargs)
    assert outcome.crashed and not outcome.ok
    assert _DEATHS[remote.name, fn] in outcome.error
    if remote.name == "dask":
        assert "not run again" in outcome.error
    if fn == "die":
        assert outcome.output == "about to die\n"
    if fn == "segfault":
        assert "Segmentation fault" in outcome.output and "in segfault" in outcome.output
    assert run(remote, tasks.add, project, a=1, b=2).value == 3


# -- in-process executors (inline, thread) --------------------------------------------------


@pytest.mark.parametrize("name", ["inline", "thread"])
def test_in_process_executors_restore_the_driver(
    name: str, tasks: ModuleType, project: Path
) -> None:
    """Streams, working directory and sys.path are back as they were after shutdown."""
    before = (sys.stdout, sys.stderr, os.getcwd(), list(sys.path))
    ex = make_executor(name, 2)
    run(ex, tasks.chatty, project)
    ex.shutdown()
    assert (sys.stdout, sys.stderr, os.getcwd(), list(sys.path)) == before


@pytest.mark.parametrize("name", ["inline", "thread"])
def test_driver_output_passes_through_while_tasks_are_captured(
    name: str, tasks: ModuleType, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver's own prints reach the real stdout; a task's prints do not."""
    with make_executor(name, 2) as ex:
        print("from the driver")
        run(ex, tasks.chatty, project)
    out, err = capsys.readouterr()
    assert "from the driver" in out
    assert "out 1" not in out and "err 1" not in err


def test_inline_lets_ctrl_c_reach_the_caller(tasks: ModuleType, project: Path) -> None:
    """KeyboardInterrupt in an inline task propagates out of submit (it is the driver's)."""
    with InlineExecutor() as ex, pytest.raises(KeyboardInterrupt):
        ex.submit(make_call(tasks.interrupts, project))


def test_thread_executor_starts_no_more_threads_than_jobs(tasks: ModuleType, project: Path) -> None:
    """The pool holds exactly `jobs` worker threads, however many calls are queued."""
    with ThreadExecutor(3) as ex:
        futures = [ex.submit(make_call(tasks.add, project, a=i, b=i)) for i in range(20)]
        assert [f.result(PATIENCE).value for f in futures] == [2 * i for i in range(20)]
        prefix = f"{ex.thread_prefix}-"
        workers = [t for t in threading.enumerate() if t.name.startswith(prefix)]
        assert len(workers) == 3


# -- process executor specifics -------------------------------------------------------------


def test_process_workers_are_reused(
    processes: ProcessExecutor, tasks: ModuleType, project: Path
) -> None:
    """Sequential calls run in the same worker process, not the driver."""
    first = run(processes, tasks.pid, project).value
    second = run(processes, tasks.pid, project).value
    assert first == second != os.getpid()


def test_process_worker_that_cannot_start_is_reported(
    tasks: ModuleType, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that fails to boot fails the call with its output and a hint."""
    monkeypatch.setattr(
        process_module,
        "_BOOT",
        "import sys; print('no taskrun here', file=sys.stderr); sys.exit(1)",
    )
    with ProcessExecutor(1) as ex:
        outcome = run(ex, tasks.add, project, a=1, b=2)
    assert outcome.crashed and "while starting" in outcome.error
    assert "no taskrun here" in outcome.output


def test_a_worker_stopped_from_outside_shows_where_its_task_was(
    processes: ProcessExecutor, tasks: ModuleType, project: Path
) -> None:
    """A worker killed by a SIGTERM from outside crashes the call; the task's own frames are
    its traceback, and its output has no stack dump of the worker's frames."""
    outcome = run(processes, tasks.terminate_self, project)
    assert outcome.crashed and "killed by SIGTERM" in outcome.error
    assert "Stack (most recent call first)" not in outcome.output
    heading = "Where it was when its worker was stopped (most recent call last):\n"
    assert outcome.traceback.startswith(heading), outcome.traceback
    assert "in terminate_self\n    os.kill(os.getpid(), signal.SIGTERM)\n" in outcome.traceback
    assert outcome.traceback.count("  File ") == 1  # the task's frame, none of the worker's


@pytest.mark.slow
def test_workers_die_with_their_driver(tasks: ModuleType, project: Path, tmp_path: Path) -> None:
    """A driver killed with SIGKILL leaves no worker (nor its children) behind."""
    pidfile = tmp_path / "pid"
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(f"""
        import importlib.util, sys, time
        from taskrun.executors import Call, ProcessExecutor
        spec = importlib.util.spec_from_file_location("t", {tasks.__file__!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ex = ProcessExecutor(1)
        ex.submit(Call("hang", mod.hang, {{"pidfile": {str(pidfile)!r},
                       "release": {str(tmp_path / "never")!r}}}, {str(project)!r}, None))
        time.sleep(60)
    """)
    )
    driver = subprocess.Popen([sys.executable, str(script)])
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", limit=20)
        worker = int(pidfile.read_text())
    finally:
        driver.kill()
        driver.wait()
    assert wait_until(lambda: gone(worker))


# -- the trampoline on its own (what a Dask worker runs) ------------------------------------


@pytest.mark.parametrize("capture", ["fd", "sys"])
def test_trampoline_round_trip_in_this_process(
    tasks: ModuleType, project: Path, capture: str
) -> None:
    """encode_call -> run_pickled -> decode_result gives the outcome, output included."""
    payload = encode_call(make_call(tasks.chatty, project))
    cwd = os.getcwd()
    try:
        data = run_pickled(payload, str(project), capture=capture)  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project))
    outcome = decode_result("chatty", data)
    assert outcome.ok and outcome.value == "done" and outcome.task == "chatty"
    assert outcome.output == "out 1\nerr 1\nout 2 h\u00e9llo \u2713\n"


def test_trampoline_reports_a_payload_it_cannot_load(project: Path) -> None:
    """Garbage instead of a call is a failed outcome, not an exception on the worker."""
    cwd = os.getcwd()
    try:
        data = run_pickled(b"not a pickle", str(project), capture="none")
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project))
    outcome = decode_result("x", data)
    assert not outcome.ok and outcome.error.startswith("cannot load the task on this worker")


@pytest.mark.parametrize("forget", [False, True])
def test_trampoline_can_forget_project_modules(
    tasks: ModuleType, project: Path, forget: bool
) -> None:
    """With forget_project_modules, modules imported from the project root are dropped."""
    name = f"helper_{uuid.uuid4().hex}"
    (project / f"{name}.py").write_text("VALUE = 7\n")
    payload = encode_call(make_call(tasks.use_project_module, project, name=name))
    cwd = os.getcwd()
    try:
        data = run_pickled(payload, str(project), capture="none", forget_project_modules=forget)
        assert decode_result("t", data).value == 7
        assert (name in sys.modules) is not forget
    finally:
        os.chdir(cwd)
        sys.path.remove(str(project))
        sys.modules.pop(name, None)


# -- helpers --------------------------------------------------------------------------------


def test_describe_exception_is_one_line() -> None:
    """The error line names the type (qualified outside builtins) and the first message line."""
    assert describe_exception(ValueError("x")) == "ValueError: x"
    assert describe_exception(AssertionError()) == "AssertionError"
    assert describe_exception(RuntimeError("one\ntwo")) == "RuntimeError: one [...]"
    err = subprocess.CalledProcessError(2, "make")
    assert describe_exception(err).startswith("subprocess.CalledProcessError: Command 'make'")


def test_traceback_drops_taskruns_own_frames() -> None:
    """Frames from taskrun's files are trimmed; the test's own frames stay."""

    def user() -> None:
        raise KeyError("k")

    outcome = call_function("t", user, {}, interruptible=False)
    assert "in user" in outcome.traceback and "base.py" not in outcome.traceback
    with pytest.raises(KeyError) as raised:
        user()
    assert "in user" in format_user_traceback(raised.value)


# -- make_executor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("inline", InlineExecutor),
        ("thread", ThreadExecutor),
        ("process", ProcessExecutor),
    ],
)
def test_make_executor_by_name(name: str, cls: type[Executor]) -> None:
    """Each built-in name makes its executor with the given jobs."""
    ex = make_executor(name, 3)
    try:
        assert type(ex) is cls and ex.name == name and ex.jobs == 3 and name in EXECUTOR_NAMES
    finally:
        ex.shutdown()


def test_unknown_executor_suggests_the_closest() -> None:
    """A misspelt executor name is a usage error with a suggestion and the choices."""
    with pytest.raises(
        UsageError,
        match=r"unknown executor 'proces' \(did you mean 'process'\?\)"
        r"; choose one of: inline, thread, process, dask",
    ):
        make_executor("proces", 1)


@pytest.mark.parametrize("jobs", [0, -1, True, 1.5])
def test_jobs_must_be_a_positive_whole_number(jobs: Any) -> None:
    """jobs below 1 (or not an int) is a usage error."""
    with pytest.raises(UsageError, match="jobs must be a whole number"):
        make_executor("thread", jobs)


def test_lazy_executor_with_missing_dependency_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optional executor whose dependency is missing says what to install."""
    (tmp_path / "fake_backend.py").write_text("import not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from taskrun import executors

    monkeypatch.setitem(executors._LAZY, "dask", ("fake_backend", "X", "taskrun[dask]"))
    with pytest.raises(
        UsageError, match=r"needs 'not_installed_pkg_xyz'.*pip install 'taskrun\[dask\]'"
    ):
        make_executor("dask", 1)
    monkeypatch.setitem(executors._LAZY, "dask", ("no_such_backend_xyz", "X", "taskrun[dask]"))
    with pytest.raises(UsageError, match="not available in this version"):
        make_executor("dask", 1)


# -- the test double ------------------------------------------------------------------------


def test_mock_executor_uses_its_handler(project: Path) -> None:
    """Handler values become products, Outcomes pass through, exceptions fail the call."""

    def handler(call: Call) -> object:
        if call.task == "bad":
            raise OSError("disk")
        if call.task == "custom":
            return Outcome(call.task, ok=False, error="nope")
        return int(call.kwargs["x"]) * 2  # type: ignore[call-overload]

    ex = MockExecutor(handler=handler)
    assert ex.submit(Call("double", print, {"x": 4}, str(project), None)).result().value == 8
    assert ex.submit(Call("bad", print, {}, str(project), None)).result().error == "OSError: disk"
    assert ex.submit(Call("custom", print, {}, str(project), None)).result().error == "nope"
    assert [c.task for c in ex.calls] == ["double", "bad", "custom"]


def test_mock_executor_holds_until_released(tasks: ModuleType, project: Path) -> None:
    """With hold=True, futures wait for release(); cancel() resolves the rest as cancelled."""
    ex = MockExecutor(hold=True)
    a = ex.submit(make_call(tasks.add, project, a=1, b=2))
    b = ex.submit(Call("other", tasks.add, {"a": 0, "b": 0}, str(project), None))
    assert ex.held == ("add", "other") and not a.done()
    assert ex.release("add") == 1
    assert a.result().value == 3 and not b.done()
    ex.cancel()
    assert b.result().cancelled and ex.cancelled == 1 and ex.held == ()


def test_routed_stream_passes_attributes_through() -> None:
    """The stand-in stream forwards what it does not route (encoding, fileno...)."""
    from taskrun.executors.local import RoutedStream, routed_to

    original = io.StringIO()
    stream = RoutedStream(original)  # type: ignore[arg-type]
    stream.write("through ")
    sink = io.StringIO()
    with routed_to(sink):
        stream.write("routed")
        assert not stream.isatty()
    assert original.getvalue() == "through " and sink.getvalue() == "routed"
    assert stream.getvalue() == "through "  # forwarded attribute
