"""When things fail: trigger rules and Outcome, skips, when=, through taskrun.run on real caches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import taskrun
from taskrun import Outcome, Registry
from taskrun.errors import DefinitionError, InvocationError

EXECUTORS = ["inline", "thread", "process"]
STATES = ["ran", "cached", "failed", "skipped", "cancelled"]
EXPECTED = {  # rule -> the upstream states under which the dependent runs
    "succeeded": {"ran", "cached"},
    "failed": {"failed"},
    "always": set(STATES),
}


def note(name: str, text: str = "", where: Path | None = None) -> None:
    """Called inside tasks (cwd is the project root): record a real call.

    A thread that outlives its run (a cancelled task) passes ``where``, the project root it
    saw when it started: the working directory is restored when the run ends.
    """
    with open((where or Path.cwd()) / "calls.log", "a") as fh:
        fh.write(json.dumps([name, text]) + "\n")


def calls(root: Path) -> list[list[str]]:
    log = root / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def called(root: Path) -> list[str]:
    return [name for name, _ in calls(root)]


def _wait_for(path: str, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.01)


def matrix(upstream: str, rule: str) -> Registry:
    """``up`` ends in state ``upstream``; ``probe`` (rule ``rule``) records what it saw."""
    reg = Registry()
    with reg.activate():
        if upstream == "cancelled":

            @taskrun.task
            def up() -> int:
                here = Path.cwd()
                note("up")
                Path("up.started").touch()
                end = time.monotonic() + 60
                while not taskrun.cancelled() and time.monotonic() < end:
                    time.sleep(0.01)  # killed on the process executor; cooperative on threads
                if taskrun.cancelled():
                    note("up-saw-cancel", where=here)
                    return 0
                note("up-finished", where=here)
                return 1

            @taskrun.task
            def boom() -> None:
                _wait_for("up.started")
                raise RuntimeError("boom")

        else:

            @taskrun.task
            def up() -> int:
                note("up")
                if upstream == "failed":
                    raise RuntimeError("up broke")
                if upstream == "skipped":
                    taskrun.skip("nothing to do")
                return 41

        if rule == "succeeded":

            @taskrun.task(deps=[up], cache=False)
            def probe(up: int) -> str:
                note("probe", f"ran:{up}")
                return "probe"

        else:

            @taskrun.task(deps=[up], run_if=rule, cache=False)
            def probe(up: Outcome[int]) -> str:  # type: ignore[no-redef]
                detail = str(up.value) if up.ok else up.error
                note("probe", f"{up.state}:{detail}")
                return "probe"

    return reg


@pytest.mark.parametrize("rule", ["succeeded", "failed", "always"])
@pytest.mark.parametrize("upstream", STATES)
def test_rule_against_upstream_state(tmp_path: Path, upstream: str, rule: str) -> None:
    """Each rule runs its task exactly under the upstream states it names, and sees them."""
    executor = "thread" if upstream == "cancelled" else "inline"
    reg = matrix(upstream, rule)
    targets = ["probe", "boom"] if upstream == "cancelled" else ["probe"]
    kw: dict[str, Any] = {"registry": reg, "root": tmp_path, "executor": executor, "jobs": 2}
    if upstream == "cached":
        first = taskrun.run(["up"], **kw)
        assert first.state("up") == "ran"
    result = taskrun.run(targets, **kw)
    assert result.state("up") == upstream
    probes = [text for name, text in calls(tmp_path) if name == "probe"]
    if upstream in EXPECTED[rule]:
        assert result.state("probe") == "ran"
        seen = probes[0]
        if rule == "succeeded":
            assert seen == "ran:41"
        else:
            assert seen.split(":")[0] == upstream
            if upstream in ("ran", "cached"):
                assert seen == f"{upstream}:41"
    else:
        assert result.state("probe") == "skipped"
        assert probes == []
    assert "up-finished" not in called(tmp_path)  # a cancelled task never finishes its work


@pytest.mark.parametrize("executor", EXECUTORS)
def test_always_task_gets_outcomes_on_every_executor(tmp_path: Path, executor: str) -> None:
    """An always task receives Outcome objects (picklable) for failed and good upstreams."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def good() -> int:
            return 2

        @taskrun.task
        def bad() -> int:
            raise ValueError("no")

        @taskrun.task(deps=[good, bad], run_if="always", cache=False)
        def report(good: Outcome[int], bad: Outcome[int]) -> str:
            return f"{good.state}:{good.value} {bad.state}:{bad.error}"

    result = taskrun.run(
        ["report"], registry=reg, root=tmp_path, executor=executor, jobs=2, keep_going=True
    )
    assert result.products["report"] == "ran:2 failed:ValueError: no"
    assert not result.ok  # a failure in the run is still a failed run


def test_outcome_value_of_a_failed_upstream_raises_with_the_reason() -> None:
    """Reading .value without a product names the task and its state."""
    outcome: Outcome[int] = Outcome("train", "failed", None, "ValueError: diverged")
    assert not outcome.ok
    with pytest.raises(taskrun.TaskrunError, match="'train' has no product, it failed"):
        _ = outcome.value


# -- caching of tasks with a rule --------------------------------------------------------


def cleanup_graph(fail: bool) -> Registry:
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def work(n: int = 1) -> int:
            note("work")
            if fail:
                raise RuntimeError("work broke")
            return n

        @taskrun.task(deps=[work], run_if="always")
        def cleanup(work: Outcome[int]) -> str:
            note("cleanup", work.state)
            return work.state

    return reg


def test_rule_task_fed_by_success_is_cached(tmp_path: Path) -> None:
    """An always task over good upstreams is cached like any task."""
    kw: dict[str, Any] = {"registry": cleanup_graph(False), "root": tmp_path, "executor": "inline"}
    assert taskrun.run(["cleanup"], **kw).state("cleanup") == "ran"
    again = taskrun.run(["cleanup"], **kw)
    assert again.state("cleanup") == "cached" and again.products["cleanup"] == "ran"
    assert called(tmp_path) == ["work", "cleanup"]


def test_rule_task_fed_by_a_failure_is_never_cached(tmp_path: Path) -> None:
    """What a failure fed runs again next time: the failure may not happen again."""
    kw: dict[str, Any] = {"registry": cleanup_graph(True), "root": tmp_path, "executor": "inline"}
    events: list[Any] = []
    first = taskrun.run(["cleanup"], on_event=events.append, **kw)
    assert first.state("cleanup") == "ran" and first.products["cleanup"] == "failed"
    ran = next(e for e in events if getattr(e, "kind", "") == "ran")
    assert not ran.stored and ran.reasons == ("upstream 'work' failed (not cached)",)
    second = taskrun.run(["cleanup"], **kw)
    assert second.state("cleanup") == "ran"
    assert called(tmp_path) == ["work", "cleanup", "work", "cleanup"]


def test_rescue_runs_on_fail_fast(tmp_path: Path) -> None:
    """Fail-fast skips plain dependents but still runs failed- and always-rule tasks."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def train() -> int:
            raise RuntimeError("diverged")

        @taskrun.task
        def slow() -> int:
            return 1

        @taskrun.task(deps=[slow])
        def after_slow(slow: int) -> int:
            return slow

        @taskrun.task(deps=[train], run_if="failed", cache=False)
        def alert(train: Outcome[int]) -> str:
            return f"alert: {train.error}"

    result = taskrun.run(["alert", "after_slow"], registry=reg, root=tmp_path, executor="inline")
    assert result.state("alert") == "ran"
    assert result.products["alert"] == "alert: RuntimeError: diverged"
    assert result.state("train") == "failed"
    assert result.tasks["after_slow"].state in ("skipped", "ran")  # decided before or after
    assert not result.ok


# -- skip ----------------------------------------------------------------------------------


def skipping() -> Registry:
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def check(day: str = "sunday") -> int:
            note("check")
            if day == "sunday":
                taskrun.skip(f"nothing ships on {day}")
            return 1

        @taskrun.task(deps=[check])
        def ship(check: int) -> str:
            note("ship")
            return "shipped"

        @taskrun.task(deps=[check], run_if="always")
        def log(check: Outcome[int]) -> str:
            note("log", check.state)
            return f"{check.state}: {check.error}"

    return reg


@pytest.mark.parametrize("executor", EXECUTORS)
def test_skip_ends_the_task_as_skipped_with_its_reason(tmp_path: Path, executor: str) -> None:
    """taskrun.skip() is a result: skipped, with its reason; plain dependents skip too."""
    events: list[Any] = []
    result = taskrun.run(
        ["ship", "log"],
        registry=skipping(),
        root=tmp_path,
        executor=executor,
        on_event=events.append,
    )
    assert result.ok
    assert result.state("check") == "skipped"
    assert result.tasks["check"].error == "nothing ships on sunday"
    assert result.state("ship") == "skipped"
    assert result.tasks["ship"].error == "upstream 'check' was skipped"
    assert result.products["log"] == "skipped: nothing ships on sunday"
    assert "ship" not in called(tmp_path)
    skipped = {e.task: e for e in events if getattr(e, "kind", "") == "skipped"}
    assert skipped["check"].reason == "nothing ships on sunday" and not skipped["check"].cached


def test_skip_is_cached_like_a_product(tmp_path: Path) -> None:
    """The next run skips from the cache without calling the task; a new option reruns it."""
    kw: dict[str, Any] = {"registry": skipping(), "root": tmp_path, "executor": "inline"}
    taskrun.run(["ship", "log"], **kw)
    events: list[Any] = []
    again = taskrun.run(["ship", "log"], on_event=events.append, **kw)
    assert again.state("check") == "skipped"
    skips = [e for e in events if getattr(e, "kind", "") == "skipped" and e.task == "check"]
    assert [e.cached for e in skips] == [True]
    assert again.state("log") == "cached"
    assert called(tmp_path).count("check") == 1
    monday = taskrun.run(["ship"], options={"check": {"day": "monday"}}, **kw)
    assert monday.state("ship") == "ran"


def test_skip_is_not_swallowed_by_except_exception(tmp_path: Path) -> None:
    """skip() raises a BaseException, so a broad `except Exception` in the task lets it by."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def careful() -> int:
            try:
                taskrun.skip("not today")
            except Exception:  # noqa: BLE001 - on purpose: skip() must pass a task's blind except
                return 0
            return 1

    result = taskrun.run(["careful"], registry=reg, root=tmp_path, executor="inline")
    assert result.state("careful") == "skipped"


# -- when= ---------------------------------------------------------------------------------


def conditional() -> Registry:
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def build() -> str:
            note("build")
            return "app"

        @taskrun.task(deps=[build], when=lambda target: target == "prod")
        def deploy(build: str, target: str = "dev") -> str:
            note("deploy")
            return f"{build}@{target}"

        @taskrun.task(deps=[deploy])
        def notify(deploy: str) -> None:
            note("notify")

        @taskrun.task(deps=[deploy], run_if="always", cache=False)
        def summary(deploy: Outcome[str]) -> str:
            return f"{deploy.state}: {deploy.error}"

    return reg


def test_when_false_skips_the_task_and_its_dependents_before_anything_runs(tmp_path: Path) -> None:
    """when= is decided from options at invocation; dependents skip unless their rule says."""
    result = taskrun.run(
        ["notify", "summary"], registry=conditional(), root=tmp_path, executor="inline"
    )
    assert result.ok
    assert result.state("deploy") == "skipped"
    assert result.tasks["deploy"].error == "when= is false (target='dev')"
    assert result.state("notify") == "skipped"
    assert result.products["summary"] == "skipped: when= is false (target='dev')"
    assert "deploy" not in called(tmp_path) and "notify" not in called(tmp_path)


def test_when_true_runs_the_task(tmp_path: Path) -> None:
    """With the option that makes it true, the task runs."""
    result = taskrun.run(
        ["notify"],
        registry=conditional(),
        root=tmp_path,
        executor="inline",
        options={"deploy": {"target": "prod"}},
    )
    assert result.state("deploy") == "ran" and result.state("notify") == "ran"


def test_when_may_only_name_the_tasks_own_options(registry: Registry) -> None:
    """A condition over something that is not an option is a definition error with a hint."""
    message = "'targte', which is not an option.*did you mean 'target'"
    with pytest.raises(DefinitionError, match=message):

        @taskrun.task(when=lambda targte: targte == "prod")
        def deploy(target: str = "dev") -> None: ...


def test_when_that_raises_is_an_invocation_error(tmp_path: Path) -> None:
    """A condition that raises stops the run before anything runs, naming the task."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(when=lambda n: 1 / n > 0)
        def job(n: int = 0) -> None:
            note("job")

    with pytest.raises(InvocationError, match=r"when= of task 'job'.*ZeroDivisionError"):
        taskrun.run(["job"], registry=reg, root=tmp_path)
    assert called(tmp_path) == []


# -- definitions ---------------------------------------------------------------------------


def test_rule_task_must_annotate_outcome(registry: Registry) -> None:
    """A task with a rule receives Outcome objects; a product annotation is a mistake."""

    @taskrun.task
    def up() -> int:
        return 1

    with pytest.raises(DefinitionError, match="annotate it as 'up: Outcome"):

        @taskrun.task(deps=[up], run_if="always")
        def down(up: int) -> None: ...


def test_outcome_without_a_rule_is_an_error(registry: Registry) -> None:
    """Outcome parameters only make sense with a trigger rule; the error says to add one."""

    @taskrun.task
    def up() -> int:
        return 1

    with pytest.raises(DefinitionError, match='add run_if="always"'):

        @taskrun.task(deps=[up])
        def down(up: Outcome[int]) -> None: ...


def test_unknown_rule_suggests_the_right_one(registry: Registry) -> None:
    """run_if= takes one of three words; a typo gets did-you-mean."""
    with pytest.raises(DefinitionError, match=r"run_if='allways'.*did you mean 'always'"):

        @taskrun.task(run_if="allways")  # type: ignore[arg-type]
        def job() -> None: ...


# -- cancellation ----------------------------------------------------------------------------


def racing() -> Registry:
    """``slow`` runs until cancelled; ``boom`` fails once ``slow`` has started."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def slow() -> int:
            here = Path.cwd()
            note("slow")
            Path("slow.started").touch()
            end = time.monotonic() + 60
            while not taskrun.cancelled() and time.monotonic() < end:
                time.sleep(0.01)
            if not taskrun.cancelled():
                note("slow-finished", where=here)
            return 1

        @taskrun.task
        def boom() -> None:
            _wait_for("slow.started")
            raise RuntimeError("boom")

        @taskrun.task(deps=[slow])
        def after(slow: int) -> int:
            note("after")
            return slow

        @taskrun.task(deps=[slow, boom], run_if="always", cache=False)
        def cleanup(slow: Outcome[int], boom: Outcome[None]) -> str:
            return f"{slow.state} {boom.state}"

    return reg


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_fail_fast_cancels_running_tasks(tmp_path: Path, executor: str) -> None:
    """The first failure cancels what runs: events say cancelled, never ran; cleanup runs."""
    events: list[Any] = []
    result = taskrun.run(
        ["after", "cleanup"],
        registry=racing(),
        root=tmp_path,
        executor=executor,
        jobs=2,
        on_event=events.append,
    )
    by_task = [(e.kind, getattr(e, "task", "")) for e in events]
    assert ("cancelled", "slow") in by_task
    assert ("ran", "slow") not in by_task and ("ran", "after") not in by_task
    cancelled = next(e for e in events if e.kind == "cancelled")
    assert cancelled.running and cancelled.reason.startswith("stopped after 'boom' failed")
    assert result.state("slow") == "cancelled" and result.state("after") == "skipped"
    assert result.products["cleanup"] == "cancelled failed"
    assert result.summary.cancelled == 1 and not result.ok
    assert "1 cancelled" in result.summary.line()
    assert "slow-finished" not in called(tmp_path) and "after" not in called(tmp_path)


def test_start_returns_a_handle_that_cancels(tmp_path: Path) -> None:
    """taskrun.start runs in the background; status() shows it, cancel() stops it."""
    handle = taskrun.start(
        ["after", "cleanup"], registry=racing(), root=tmp_path, executor="thread", jobs=1
    )
    _wait_for(str(tmp_path / "slow.started"))
    status = handle.status()
    assert status.states["slow"] == "running" and not status.finished
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.01)  # slow only ends when cancelled
    handle.cancel()
    result = handle.result(timeout=60)
    assert result.state("slow") == "cancelled"
    assert result.tasks["slow"].error == "cancelled by handle.cancel()"
    assert result.state("cleanup") == "ran"  # always tasks still run
    assert handle.status().finished and handle.status().states["slow"] == "cancelled"


def test_start_raises_invocation_errors_at_once(tmp_path: Path) -> None:
    """A bad option raises from start() itself; nothing runs."""
    with pytest.raises(InvocationError):
        taskrun.start(["slow"], registry=racing(), root=tmp_path, options={"slow": {"x": 1}})
    assert called(tmp_path) == []


# -- retries -------------------------------------------------------------------------------


def flaky(fails: int, exc: type[BaseException], **settings: Any) -> Registry:
    """``flaky`` raises ``exc`` on its first ``fails`` calls, then returns the call count."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(cache=False, **settings)
        def unstable() -> int:
            count = Path("count")
            n = int(count.read_text()) + 1 if count.exists() else 1
            count.write_text(str(n))
            if n <= fails:
                raise exc(f"attempt {n} failed")
            return n

        @taskrun.task(cache=False)
        def other() -> str:
            return "other"

    return reg


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_retries_wait_with_backoff_recorded_in_events(tmp_path: Path, executor: str) -> None:
    """Each failed attempt and the wait before the next are events; backoff multiplies."""
    reg = flaky(2, ConnectionError, retries=3, retry_delay=0.05, retry_backoff=2.0)
    events: list[Any] = []
    result = taskrun.run(
        ["unstable"], registry=reg, root=tmp_path, executor=executor, on_event=events.append
    )
    assert result.products["unstable"] == 3 and result.tasks["unstable"].attempts == 3
    retries = [e for e in events if e.kind == "retrying"]
    assert [(e.attempt, e.delay) for e in retries] == [(2, 0.05), (3, 0.1)]
    assert [e.error for e in retries] == [
        "ConnectionError: attempt 1 failed",
        "ConnectionError: attempt 2 failed",
    ]
    assert [e.attempt for e in events if e.kind == "started"] == [1, 2, 3]


@pytest.mark.parametrize("executor", ["inline", "process"])
def test_retry_on_retries_only_the_named_exceptions(tmp_path: Path, executor: str) -> None:
    """retry_on= matches subclasses (across processes too); anything else fails at once."""
    retried = flaky(1, ConnectionRefusedError, retries=2, retry_on=(ConnectionError,))
    ok = taskrun.run(["unstable"], registry=retried, root=tmp_path, executor=executor)
    assert ok.products["unstable"] == 2
    other = tmp_path / "other"
    other.mkdir()
    not_retried = flaky(1, ValueError, retries=2, retry_on=(ConnectionError,))
    failed = taskrun.run(["unstable"], registry=not_retried, root=other, executor=executor)
    assert failed.state("unstable") == "failed" and failed.tasks["unstable"].attempts == 1


def test_a_retry_waits_without_holding_a_worker(tmp_path: Path) -> None:
    """With one worker, another task runs while a failed task waits for its retry."""
    reg = flaky(1, ConnectionError, retries=1, retry_delay=600.0)
    handle = taskrun.start(
        ["unstable", "other"], registry=reg, root=tmp_path, executor="thread", jobs=1
    )
    end = time.monotonic() + 60
    while time.monotonic() < end:  # synchronised on the run's own states
        states = handle.status().states
        if states.get("unstable") == "retrying" and states.get("other") == "ran":
            break
        time.sleep(0.01)
    assert handle.status().states == {"unstable": "retrying", "other": "ran"}
    handle.cancel()
    result = handle.result(timeout=60)
    assert result.state("unstable") == "cancelled" and result.state("other") == "ran"


def test_retry_policy_jitter_stays_in_its_bounds() -> None:
    """Jitter stretches each wait by at most the given fraction, either way."""
    import random

    from taskrun.rules import RetryPolicy

    policy = RetryPolicy(retries=5, delay=1.0, backoff=3.0, jitter=0.5)
    rng = random.Random(7)
    waits = [policy.wait(n, rng) for n in (1, 2, 3) for _ in range(50)]
    for n, chunk in zip((1, 2, 3), (waits[:50], waits[50:100], waits[100:]), strict=True):
        base = 3.0 ** (n - 1)
        assert all(0.5 * base <= w <= 1.5 * base for w in chunk)
        assert len(set(chunk)) > 1  # it does vary


# -- graph surgery -------------------------------------------------------------------------


def downloads() -> Registry:
    """index -> download -> count; the real index and download must never run in tests."""
    reg = Registry()
    with reg.activate():

        @taskrun.task
        def index() -> list[str]:
            note("index")
            raise RuntimeError("no network in tests")

        @taskrun.task(deps=[index], version="1")
        def download(index: list[str], mirror: str = "main") -> str:
            note("download")
            raise RuntimeError("no network in tests")

        @taskrun.task
        def local_index() -> list[str]:
            note("local_index")
            return ["a.txt"]

        @taskrun.task(deps=[download])
        def count(download: str) -> int:
            note("count")
            return len(download)

    return reg


def fake_download(mirror: str = "main") -> str:
    note("fake_download")
    return "fake data"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_override_with_fewer_deps_drops_the_upstream(tmp_path: Path, executor: str) -> None:
    """A replacement that does not take `index` drops it: the real index never runs."""
    reg = downloads()
    with reg.override("download", fake_download) as spec:
        assert spec.deps == ()
        assert reg.subgraph("count") == ["download", "count"]
        result = taskrun.run(["count"], registry=reg, root=tmp_path, executor=executor)
    assert result.products["count"] == len("fake data")
    assert "index" not in result.tasks
    assert called(tmp_path) == ["fake_download", "count"]
    assert [d.task for d in reg.get("download").deps] == ["index"]  # restored


def test_override_with_other_deps(tmp_path: Path) -> None:
    """deps= gives the replacement other upstream tasks; the original ones are dropped."""
    reg = downloads()

    def from_local(local_index: list[str], mirror: str = "main") -> str:
        return ",".join(local_index)

    with reg.override("download", from_local, deps=[reg.get("local_index").fn]):
        result = taskrun.run(["count"], registry=reg, root=tmp_path, executor="inline")
    assert result.products["count"] == len("a.txt")
    assert sorted(called(tmp_path)) == ["count", "local_index"]


def test_override_many_swaps_a_subgraph(tmp_path: Path) -> None:
    """Several tasks at once; all are restored afterwards."""
    reg = downloads()

    def fake_index() -> list[str]:
        return ["x", "y"]

    def joined(index: list[str], mirror: str = "main") -> str:
        return "+".join(index)

    originals = {n: reg.get(n) for n in ("index", "download")}
    with reg.override_many({"index": fake_index, "download": joined}):
        result = taskrun.run(["count"], registry=reg, root=tmp_path, executor="inline")
    assert result.products["count"] == len("x+y")
    assert called(tmp_path) == ["count"]
    assert {n: reg.get(n) for n in originals} == originals


def test_override_keeps_the_contract(tmp_path: Path) -> None:
    """Options and product type must match; the error names the task and what differs."""
    reg = downloads()

    def wrong(mirror: int = 0) -> str:
        return ""

    with (
        pytest.raises(DefinitionError, match=r"override of task 'download'.*option 'mirror'"),
        reg.override("download", wrong),
    ):
        pass


def test_override_results_never_mix_with_the_real_tasks(tmp_path: Path) -> None:
    """Even with version= on the real task, the override's fingerprint is its own."""
    reg = Registry()
    with reg.activate():

        @taskrun.task(version="1")
        def data() -> str:
            return "real"

    def fake() -> str:
        return "fake"

    kw: dict[str, Any] = {"registry": reg, "root": tmp_path, "executor": "inline"}
    assert taskrun.run(["data"], **kw).products["data"] == "real"
    with reg.override("data", fake):
        faked = taskrun.run(["data"], **kw)
    assert faked.state("data") == "ran" and faked.products["data"] == "fake"
    real = taskrun.run(["data"], **kw)
    assert real.state("data") == "cached" and real.products["data"] == "real"


CLI_TASKS = """
    from taskrun import task

    def note(name):
        with open("calls.log", "a") as fh:
            fh.write(f'["{name}", ""]\\n')

    @task
    def index() -> list[str]:
        note("index")
        raise RuntimeError("no network")

    @task(deps=[index])
    def download(index: list[str], mirror: str = "main") -> str:
        note("download")
        raise RuntimeError("no network")

    @task(deps=[download])
    def count(download: str) -> int:
        note("count")
        return len(download)
"""


def test_cli_override_runs_a_replacement_without_its_upstream(
    tmp_path: Path, write_project: Any, run_cli: Any
) -> None:
    """--override TASK=module:function swaps the task for one run; its upstream is dropped."""
    fakes = "fakes_cli_ok"
    write_project(
        tmp_path,
        CLI_TASKS,
        files={
            f"{fakes}.py": (
                "def fake_download(mirror: str = 'main') -> str:\n    return 'offline'\n"
            ),
        },
    )
    result = run_cli(tmp_path, "run", "count", "--override", f"download={fakes}:fake_download")
    assert result.exit_code == 0, result.output
    assert called(tmp_path) == ["count"]
    plan = run_cli(tmp_path, "run", "count", "--dry-run")
    assert "index" in plan.output  # without the override, the real graph again


def test_cli_override_errors_name_the_fix(tmp_path: Path, write_project: Any, run_cli: Any) -> None:
    """A missing function gets did-you-mean; a bad form shows the right one; exit code 2."""
    fakes = "fakes_cli_bad"
    write_project(
        tmp_path,
        CLI_TASKS,
        files={
            f"{fakes}.py": "def fake_download(mirror: str = 'main') -> str:\n    return ''\n",
        },
    )
    missing = run_cli(tmp_path, "run", "count", "--override", f"download={fakes}:fake_downlod")
    assert missing.exit_code == 2
    assert "has no function 'fake_downlod' (did you mean 'fake_download'?)" in missing.output
    bad = run_cli(tmp_path, "run", "count", "--override", "download")
    assert bad.exit_code == 2 and "is not TASK=module:function" in bad.output
    unknown = run_cli(tmp_path, "run", "count", "--override", f"downlaod={fakes}:fake_download")
    assert unknown.exit_code == 2 and "did you mean 'download'" in unknown.output
    assert called(tmp_path) == []


# -- placement -----------------------------------------------------------------------------


@pytest.mark.parametrize("run_executor", ["thread", "inline"])
def test_executor_hint_places_tasks_across_two_executors(tmp_path: Path, run_executor: str) -> None:
    """A task's executor= wins over the run's: one run, two executors, products flow."""
    import os

    reg = Registry()
    with reg.activate():

        @taskrun.task
        def here() -> int:
            return os.getpid()

        @taskrun.task(deps=[here], executor="process")
        def away(here: int) -> tuple[int, int]:
            return here, os.getpid()

        @taskrun.task(deps=[away], executor="inline")
        def back(away: tuple[int, int]) -> tuple[int, int, int]:
            return (*away, os.getpid())

    result = taskrun.run(["back"], registry=reg, root=tmp_path, executor=run_executor)
    driver, worker, inline = result.products["back"]
    assert driver == os.getpid() == inline
    assert worker != driver


def test_unknown_executor_hint_is_a_definition_error(registry: Registry) -> None:
    """executor= takes one of the four names; a typo gets did-you-mean."""
    with pytest.raises(DefinitionError, match=r"executor='proces'.*did you mean 'process'"):

        @taskrun.task(executor="proces")  # type: ignore[arg-type]
        def job() -> None: ...


WHEN_TASKS = """
    from taskrun import Outcome, task

    @task
    def build() -> str:
        return "app"

    @task(deps=[build], when=lambda target: target == "prod")
    def deploy(build: str, target: str = "dev") -> str:
        return build

    @task(deps=[deploy], run_if="always", cache=False)
    def report(deploy: Outcome[str]) -> str:
        return deploy.state
"""


def test_dry_run_explain_and_list_show_conditions_and_rules(
    tmp_path: Path, write_project: Any, run_cli: Any
) -> None:
    """--dry-run and explain say which tasks when= skips; list shows rules and Outcome deps."""
    write_project(tmp_path, WHEN_TASKS)
    plan = run_cli(tmp_path, "run", "report", "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert "skip     deploy: when= is false (target='dev')" in plan.output
    assert "run      report" in plan.output
    assert "1 would be skipped" in plan.output
    as_json = run_cli(tmp_path, "run", "report", "--dry-run", "--json")
    actions = {
        d["task"]: d["action"] for d in map(json.loads, as_json.output.splitlines()) if "task" in d
    }
    assert actions == {"build": "run", "deploy": "skip", "report": "run"}
    prod = run_cli(tmp_path, "run", "report", "--dry-run", "-o", "target=prod")
    assert "skip " not in prod.output
    explained = run_cli(tmp_path, "explain", "report")
    assert "deploy: would be skipped\n  - when= is false (target='dev')" in explained.output
    listed = run_cli(tmp_path, "list")
    assert "needs: deploy (as Outcome)" in listed.output and "runs if: always" in listed.output
    ran = run_cli(tmp_path, "run", "report")
    assert ran.exit_code == 0 and "skipped  deploy: when= is false (target='dev')" in ran.output
