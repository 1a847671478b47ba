"""Run records and the commands that read them: runs, show, status, report, serve.

Real `taskrun` processes throughout: a run that blocks on a file the test creates, a
second process that reads its record, kill -9, a real HTTP server on loopback, and a
real headless Chromium for the HTML report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

WAIT = 120.0  # seconds: a bound on a hung process, never a synchronisation

TASKS = """
import time
from pathlib import Path
import taskrun
from taskrun import task


@task
def prepare() -> int:
    print("preparing")
    return 1


@task(deps=[prepare])
def slow(prepare: int) -> int:
    print("slow is waiting", flush=True)
    taskrun.progress(1, 4, "waiting for release")
    while not Path("release").exists():
        time.sleep(0.01)
    return prepare + 1


@task
def broken() -> int:
    print("about to fail")
    raise ValueError("bad input")


@task(deps=[broken])
def after(broken: int) -> int:
    return broken
"""


def taskrun(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "CI": ""},
        timeout=WAIT,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CI": ""},
    )


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll ``condition`` (a file another process writes) until it holds, within WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def record_files(root: Path) -> list[Path]:
    return sorted((root / ".taskrun" / "runs").glob("*.jsonl"))


def record_says(root: Path, text: str) -> bool:
    files = record_files(root)
    return bool(files) and text in files[-1].read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def blocked_run(project: Path, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """`taskrun run slow`, held inside `slow` until the test creates `release`."""
    proc = start(project, "run", "slow", "--json")
    processes.append(proc)
    wait_for(lambda: record_says(project, "slow is waiting"), "the record to show slow's output")
    return proc


# -- records --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_finished_run_is_recorded_with_tasks_reasons_output_and_errors(project: Path) -> None:
    """`show --json` tells each task's state, reasons, timing, output tail and error."""
    (project / "release").touch()
    taskrun(project, "run", "slow", "after", "--keep-going", check=False)
    shown = json.loads(taskrun(project, "show", "--json").stdout)
    tasks = {t["name"]: t for t in shown["tasks"]}
    assert shown["state"] == "failed"
    assert shown["header"]["command"][:2] == ["taskrun", "run"]
    assert shown["header"]["targets"] == ["slow", "after"]
    assert shown["header"]["runtime"]["python"].startswith("cpython-")
    assert tasks["prepare"]["state"] == "ran" and tasks["prepare"]["reasons"] == ["no entry"]
    assert tasks["prepare"]["output"] == ["preparing"]
    assert tasks["slow"]["state"] == "ran" and tasks["slow"]["deps"] == ["prepare"]
    assert tasks["slow"]["start"] >= tasks["prepare"]["end"] >= tasks["prepare"]["start"]
    assert tasks["broken"]["state"] == "failed"
    assert tasks["broken"]["error"] == "ValueError: bad input"
    assert "raise ValueError" in tasks["broken"]["traceback"]
    assert tasks["after"]["state"] == "skipped"
    assert shown["summary"]["failed"] == 1 and shown["summary"]["ran"] == 2


@pytest.mark.slow
def test_show_and_runs_read_the_records_newest_first(project: Path) -> None:
    """`runs` lists every run newest first; `show` defaults to the last, takes an id."""
    (project / "release").touch()
    taskrun(project, "run", "slow")
    taskrun(project, "run", "slow")
    ids = [p.stem for p in record_files(project)]
    listed = taskrun(project, "runs").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ids[::-1]
    assert "2 tasks: 2 cached, 0 ran, 0 failed" in listed[0]
    last = taskrun(project, "show").stdout
    assert last.startswith(f"run {ids[1]}: finished, 2 tasks: 2 cached")
    assert "cached   slow" in last
    first = taskrun(project, "show", ids[0][:-2]).stdout
    assert first.startswith(f"run {ids[0]}: finished, 2 tasks: 0 cached, 2 ran")
    assert "ran      slow" in first and "slow | slow is waiting" in first
    wrong = taskrun(project, "show", "1999", check=False)
    assert wrong.returncode == 2 and "no run '1999'" in wrong.stderr


@pytest.mark.slow
def test_keep_runs_bounds_the_number_of_records(project: Path) -> None:
    """With keep-runs = 2 in [tool.taskrun], a third run removes the oldest record."""
    (project / "pyproject.toml").write_text("[tool.taskrun]\nkeep-runs = 2\n")
    for _ in range(3):
        taskrun(project, "run", "prepare")
    assert len(record_files(project)) == 2


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_an_unfinished_record_and_the_next_run_says_so(
    project: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """kill -9 mid-run: the record keeps what happened; runs/show call it unfinished."""
    proc = blocked_run(project, processes)
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT)
    killed = record_files(project)[-1].stem
    assert f"{killed}  unfinished" in taskrun(project, "runs").stdout
    shown = json.loads(taskrun(project, "show", killed, "--json").stdout)
    tasks = {t["name"]: t for t in shown["tasks"]}
    assert shown["state"] == "unfinished" and shown["summary"] is None
    assert tasks["prepare"]["state"] == "ran"
    assert tasks["slow"]["state"] == "running" and tasks["slow"]["output"] == ["slow is waiting"]
    assert "killed or crashed" in taskrun(project, "show", killed).stdout
    (project / "release").touch()
    nxt = taskrun(project, "run", "slow")
    assert f"the last run ({killed}) did not finish" in nxt.stdout


@pytest.mark.slow
def test_status_from_another_shell_shows_the_run_in_progress(
    project: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """`status` in a second process sees the running task, its output and progress."""
    run = blocked_run(project, processes)
    text = taskrun(project, "status").stdout
    assert ": running, 1/2 tasks done: 0 cached, 1 ran, 0 failed, 1 running" in text
    assert "running  slow" in text and "slow | slow is waiting" in text
    wait_for(lambda: record_says(project, '"event": "progress"'), "the progress in the record")
    doc = json.loads(taskrun(project, "status", "--json").stdout)
    tasks = {t["name"]: t for t in doc["run"]["tasks"]}
    assert doc["running"] is True and tasks["slow"]["state"] == "running"
    assert tasks["slow"]["progress"]["done"] == 1 and tasks["slow"]["progress"]["total"] == 4
    watch = start(project, "status", "--watch")
    processes.append(watch)
    assert watch.stdout is not None
    first = watch.stdout.readline()
    assert ": running" in first
    (project / "release").touch()
    out, _ = watch.communicate(timeout=WAIT)
    assert watch.returncode == 0
    assert ": finished, 2 tasks: 0 cached, 2 ran, 0 failed" in out
    assert run.wait(WAIT) == 0
    after = taskrun(project, "status").stdout
    assert after.startswith("no run in progress; the last one:")


def test_status_times_of_a_run_in_progress_run_to_now(
    project: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A quiet running task: status shows the run's and the task's time up to now."""
    run = blocked_run(project, processes)
    wait_for(lambda: record_says(project, '"event": "progress"'), "the progress in the record")
    lines = [json.loads(line) for line in record_files(project)[-1].read_text().splitlines()]
    started = lines[0]["started"]
    last = max(float(doc.get("t", 0.0) or 0.0) for doc in lines[1:])
    # The clock, not the run, has to move on: slow writes nothing more while it waits.
    wait_for(lambda: time.time() - started > last + 1.0, "a second past the last event")
    before = time.time() - started  # status measures at or after this
    text = taskrun(project, "status").stdout
    after = re.search(r"1 running after (\d+\.\d)s", text)
    assert after is not None, text
    assert float(after.group(1)) >= before - 0.05  # printed with one decimal
    took = re.search(r"running  slow \((\d+\.\d\d)s at \+(\d+\.\d\d)s\)", text)
    assert took is not None, text
    assert float(took.group(1)) + float(took.group(2)) >= before - 0.01
    doc = json.loads(taskrun(project, "status", "--json").stdout)
    assert doc["run"]["elapsed"] >= before
    (project / "release").touch()
    assert run.wait(WAIT) == 0
    ended = json.loads(taskrun(project, "show", "--json").stdout)
    lines = [json.loads(line) for line in record_files(project)[-1].read_text().splitlines()]
    # An ended run's time stays what its record says: to its last event, not to now.
    assert ended["state"] == "finished"
    assert ended["elapsed"] == max(float(doc.get("t", 0.0) or 0.0) for doc in lines[1:])


# -- the HTML report in a real browser ----------------------------------------------------
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail("chromium is not installed; CI must install it (.ci/run does)")
    pytest.skip("chromium is not installed (CI installs it)")


def browse(url: str, *extra: str) -> str:
    """Load ``url`` in headless Chromium; return the DOM after the page's script ran."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1200,900",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def body_data(dom: str) -> dict[str, str]:
    import re

    tag = re.search(r"<body([^>]*)>", dom)
    assert tag, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag[1]))


@pytest.mark.slow
def test_report_draws_every_task_in_a_headless_browser(project: Path, tmp_path: Path) -> None:
    """The standalone page draws a timeline bar per task, the graph and the table."""
    (project / "release").touch()
    taskrun(project, "run", "slow")  # so that the next run has cache hits
    taskrun(project, "run", "--keep-going", check=False)
    page = tmp_path / "run.html"
    written = taskrun(project, "report", "-o", str(page))
    assert f"wrote {page}" in written.stdout
    html = page.read_text()
    offline = html.replace('"http://www.w3.org/2000/svg"', "")  # a namespace, not a fetch
    assert "http://" not in offline and "https://" not in offline
    assert "<script src" not in html and "<link" not in html
    dom = browse(page.as_uri(), "--dump-dom")
    data = body_data(dom)
    assert data["drawn"] == "yes" and data["state"] == "failed"
    assert data["tasks"] == "4" and data["bars"] == "4", data
    assert dom.count('class="node"') == 4
    assert dom.count("<tr data-task=") == 4
    assert 'data-state="failed"' in dom and "ValueError: bad input" in dom
    shot = tmp_path / "report.png"
    browse(page.as_uri(), f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    artifacts = os.environ.get("TASKRUN_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")


# -- serve --------------------------------------------------------------------------------
def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_serve_answers_over_http_while_a_run_goes_on(
    project: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """The JSON API shows the live run; the page follows it; writes are refused."""
    run = blocked_run(project, processes)
    server = start(project, "serve", "--port", "0")
    processes.append(server)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("serving http://127.0.0.1:"), line
    base = line.split()[1]
    status, body = get(base + "api/runs/current")
    current = json.loads(body)
    tasks = {t["name"]: t for t in current["tasks"]}
    assert status == 200 and current["state"] == "running"
    assert tasks["slow"]["state"] == "running" and tasks["prepare"]["state"] == "ran"
    assert tasks["slow"]["output"] == ["slow is waiting"]
    status, body = get(base + "api/runs")
    assert status == 200 and json.loads(body)[0]["id"] == current["id"]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _ = get(base + "api/runs", method=method)
        assert status == 405, method
    status, page = get(base)
    assert status == 200 and b'id="run-data"' in page and current["id"].encode() in page
    status, _ = get(base + "api/runs/nope")
    assert status == 404
    (project / "release").touch()
    assert run.wait(WAIT) == 0
    status, body = get(base + f"api/runs/{current['id']}")
    assert status == 200 and json.loads(body)["state"] == "finished"
    status, body = get(base + "api/runs/current")
    assert status == 404
    server.send_signal(signal.SIGINT)
    server.communicate(timeout=WAIT)
    assert server.returncode == 0


@pytest.mark.parametrize(
    ("task", "saved", "restored", "t"),
    [
        ("t1", 0.00123, 0, 1.234567),
        ("naïve-ünïcode/雪", 12.5, 3, 0.0),
        ('quote"and\\back\nslash', 1e-07, 0, 123456.000001),
        ("x", 3, 0, 1.0),  # an int saved time: the general path writes it
        ("x", float("nan"), 0, 1.0),  # not JSON's finite float: the general path
    ],
)
def test_cached_lines_are_what_the_general_path_writes(
    task: str, saved: float, restored: int, t: float
) -> None:
    """The fast line of a hit is byte for byte the general encoding of the event."""
    from taskrun import events as ev
    from taskrun.runs import _ENCODE, cached_line

    event = ev.TaskCached(task, saved=saved, restored=restored)
    general = _ENCODE({**event.to_json(), "t": t}) + "\n"
    fast = cached_line(event, t)
    if isinstance(saved, float) and saved == saved:
        assert fast == general
        assert json.loads(fast) == {
            "event": "cached",
            "task": task,
            "saved": saved,
            "restored": restored,
            "t": t,
        }
    else:
        assert fast is None
