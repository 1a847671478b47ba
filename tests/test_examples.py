"""Each example in examples/ runs cold, then all cached, and does what its README says.

Examples are copied to tmp_path first, so the repository stays clean.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

import taskrun

# The fixtures' types (see conftest.py); not imported, so the tests need no package.
RunCli = Callable[..., Result]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RAN = re.compile(r"^ran +(\S+) \(", re.M)


def copy(name: str, tmp_path: Path) -> Path:
    """A fresh copy of examples/NAME, without any cache or build left in the source tree."""
    target = tmp_path / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns(".taskrun", "build", "__pycache__"),
    )
    return target


def ran(output: str) -> set[str]:
    return set(RAN.findall(output))


def run_ok(run_cli: RunCli, root: Path, *args: str) -> str:
    result = run_cli(root, "run", *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_example_has_a_task_file_and_a_readme() -> None:
    """Each example directory is a small project with its own tasks.py and README."""
    names = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert {"pipeline", "site", "options", "streaming"} <= set(names)
    for name in names:
        assert (EXAMPLES / name / "tasks.py").is_file(), name
        assert (EXAMPLES / name / "README.md").is_file(), name


def test_no_example_cache_is_committed() -> None:
    """.taskrun/ (the cache) is ignored by git, so no example ships one."""
    ignore = (EXAMPLES.parent / ".gitignore").read_text().split()
    assert ".taskrun/" in ignore


# -- pipeline ------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_quickstart_in_real_processes(tmp_path: Path) -> None:
    """The README quickstart: `taskrun run && taskrun run` in the example, the second all cached."""
    root = copy("pipeline", tmp_path)
    env = {**os.environ, "CI": "true"}
    cmd = [sys.executable, "-m", "taskrun", "run"]
    first = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 tasks: 0 cached, 4 ran, 0 failed" in first.stdout
    second = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "4 tasks: 4 cached, 0 ran, 0 failed" in second.stdout
    assert "| west | 170.50 |" in (root / "build/report.md").read_text()


def test_pipeline_cold_then_cached(run_cli: RunCli, tmp_path: Path) -> None:
    """Cold: every task runs and the report is written; warm: all cached."""
    root = copy("pipeline", tmp_path)
    cold = run_ok(run_cli, root)
    assert ran(cold) == {"download", "clean", "aggregate", "report"}
    assert "clean | kept 13 rows, dropped 2" in cold
    report = (root / "build/report.md").read_text()
    assert report.startswith("# Sales\n") and "Total: 547.00 over 4 groups." in report
    assert "4 tasks: 4 cached, 0 ran, 0 failed" in run_ok(run_cli, root)


def test_pipeline_option_and_early_cutoff(run_cli: RunCli, tmp_path: Path) -> None:
    """An option reruns what it reaches; a dropped row reruns download and clean only."""
    root = copy("pipeline", tmp_path)
    run_ok(run_cli, root)
    by_product = run_ok(run_cli, root, "-o", "by=product")
    assert ran(by_product) == {"aggregate", "report"}
    assert "option 'by' changed: 'region' -> 'product'" in by_product
    with (root / "data/sales.csv").open("a") as fh:
        fh.write("2024-04-01,north,widget,-3,2.50\n")
    cutoff = run_ok(run_cli, root, "-o", "by=product")
    assert ran(cutoff) == {"download", "clean"}
    assert "input 'data/sales.csv' changed" in cutoff


def test_pipeline_download_from_another_url(run_cli: RunCli, tmp_path: Path) -> None:
    """-o download.url fetches another CSV through urllib (a file:// URL here)."""
    root = copy("pipeline", tmp_path)
    other = tmp_path / "other.csv"
    other.write_text("date,region,product,units,unit_price\n2024-05-01,north,widget,2,1.00\n")
    output = run_ok(run_cli, root, "-o", f"download.url={other.as_uri()}")
    assert "| north | 2.00 |" in (root / "build/report.md").read_text()
    assert "downloaded 1 rows" in output


# -- site ----------------------------------------------------------------------------------
SITE_FILES = ["index.html", "about.html", "building.html", "sitemap.txt", "static/style.css"]
PAGES = {"page[content/index.md]", "page[content/about.md]", "page[content/building.md]"}


def test_site_cold_then_cached(run_cli: RunCli, tmp_path: Path) -> None:
    """Cold: every page, the assets and the sitemap are built; warm: all cached."""
    root = copy("site", tmp_path)
    cold = run_ok(run_cli, root)
    assert ran(cold) == {"sources", "toc", "assets", *PAGES, "site"}
    for name in SITE_FILES:
        assert (root / "build/site" / name).is_file(), name
    about = (root / "build/site/about.html").read_text()
    assert "<h1>About</h1>" in about and "<em>files</em>" in about
    assert '<a href="index.html">Welcome</a>' in about
    assert "7 tasks: 7 cached, 0 ran, 0 failed" in run_ok(run_cli, root)


def test_site_edit_reruns_only_what_depends_on_the_page(run_cli: RunCli, tmp_path: Path) -> None:
    """Editing one page's body reruns that page (and sources, toc, site); the others hit."""
    root = copy("site", tmp_path)
    run_ok(run_cli, root)
    with (root / "content/about.md").open("a") as fh:
        fh.write("\nMore text.\n")
    output = run_ok(run_cli, root)
    assert ran(output) == {"sources", "toc", "page[content/about.md]", "site"}
    assert "ran      page[content/about.md]" in output
    assert "the item (of 'sources') changed" in output
    assert "mapped   page: 3 items: 2 cached, 1 ran" in output
    assert "More text." in (root / "build/site/about.html").read_text()


def test_site_title_change_rebuilds_every_navigation(run_cli: RunCli, tmp_path: Path) -> None:
    """A new title changes toc's product, so every page (each shows the nav) reruns."""
    root = copy("site", tmp_path)
    run_ok(run_cli, root)
    about = root / "content/about.md"
    about.write_text(about.read_text().replace("# About", "# About us"))
    output = run_ok(run_cli, root)
    assert ran(output) == {"sources", "toc", *PAGES, "site"}
    assert "About us</a>" in (root / "build/site/index.html").read_text()


def test_site_touch_reruns_nothing(run_cli: RunCli, tmp_path: Path) -> None:
    """New time stamps with the same content: every task hits."""
    root = copy("site", tmp_path)
    run_ok(run_cli, root)
    files = [*root.glob("content/*.md"), root / "templates/page.html", root / "static/style.css"]
    for path in files:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns + 10**9, stat.st_mtime_ns + 10**9))
    assert ran(run_ok(run_cli, root)) == set()


def test_site_deleted_build_is_restored_without_running(run_cli: RunCli, tmp_path: Path) -> None:
    """rm -rf build: the next run restores every output byte for byte and runs no task."""
    root = copy("site", tmp_path)
    run_ok(run_cli, root)
    before = {n: (root / "build/site" / n).read_bytes() for n in SITE_FILES}
    shutil.rmtree(root / "build")
    output = run_ok(run_cli, root)
    assert ran(output) == set()
    assert "7 tasks: 7 cached, 0 ran, 0 failed" in output
    assert {n: (root / "build/site" / n).read_bytes() for n in SITE_FILES} == before


def test_site_new_page_is_a_new_item_call(run_cli: RunCli, tmp_path: Path) -> None:
    """A new Markdown file found at run time gets its own call (and, a new title, new navs)."""
    root = copy("site", tmp_path)
    run_ok(run_cli, root)
    (root / "content/news.md").write_text("# News\n\nNothing yet.\n")
    output = run_ok(run_cli, root)
    assert "page[content/news.md]" in ran(output)
    assert (root / "build/site/news.html").is_file()
    assert "news.html" in (root / "build/site/sitemap.txt").read_text()


def test_site_task_file_has_no_loop() -> None:
    """The pages are one mapped task, not a task per file made in a loop at import time."""
    text = (EXAMPLES / "site" / "tasks.py").read_text()
    assert '@task(map={"source": sources}' in text
    assert "for stem in" not in text and "name=f" not in text


# -- options -------------------------------------------------------------------------------
def test_options_cold_then_cached(run_cli: RunCli, tmp_path: Path) -> None:
    """The default target with values from pyproject.toml; then all cached."""
    root = copy("options", tmp_path)
    cold = run_ok(run_cli, root)
    assert ran(cold) == {"settings", "config"}
    text = (root / "build/service.toml").read_text()
    assert 'tags = "web,api"' in text and 'port = "8080"' in text
    assert "2 tasks: 2 cached, 0 ran, 0 failed" in run_ok(run_cli, root)


def test_options_parse_into_their_types(run_cli: RunCli, tmp_path: Path) -> None:
    """Enum by name, a custom parse, a File, T | None, a list and a dict from the command line."""
    root = copy("options", tmp_path)
    run_ok(
        run_cli,
        root,
        "-o",
        "level=DEBUG",
        "-o",
        "grace=1.5m",
        "-o",
        "motd=motd.txt",
        "-o",
        "timeout=none",
        "-o",
        "tags=web,admin",
        "-o",
        "limits=cpu=20",
        "-o",
        "fmt=env",
    )
    env = (root / "build/service.env").read_text()
    for line in (
        'SERVICE_LEVEL="DEBUG"',
        'SERVICE_GRACE="90s"',
        'SERVICE_MOTD="Welcome aboard."',
        'SERVICE_TIMEOUT="none"',
        'SERVICE_TAGS="web,admin"',
    ):
        assert line in env


def test_options_bad_values_are_all_reported(run_cli: RunCli, tmp_path: Path) -> None:
    """The README's ten bad values: ten problems, exit 2, nothing run."""
    root = copy("options", tmp_path)
    result = run_cli(
        root,
        "run",
        "-o",
        "port=80",
        "-o",
        "replicas=0",
        "-o",
        "name=My_App",
        "-o",
        "mode=production",
        "-o",
        "level=verbose",
        "-o",
        "grace=soon",
        "-o",
        "tags=web,API",
        "-o",
        "limits=cpu=150",
        "-o",
        "motd=../secret.txt",
        "-o",
        "timeout=never",
    )
    assert result.exit_code == 2
    assert "10 problems with this invocation; nothing was run" in result.output
    assert "80 is not a port an unprivileged user may bind (1024-65535) (UserPort)" in result.output
    assert "0 is not an integer above 0 (PositiveInt)" in result.output
    assert not (root / "build").exists()


def test_options_parent_chain_names_the_broken_rule(run_cli: RunCli, tmp_path: Path) -> None:
    """99999 fails Port, the parent of UserPort."""
    root = copy("options", tmp_path)
    result = run_cli(root, "run", "-o", "settings.port=99999")
    assert result.exit_code == 2
    assert "99999 is not a TCP port (1-65535) (Port)" in result.output


# -- streaming -----------------------------------------------------------------------------
def test_streaming_cold_then_cached(run_cli: RunCli, tmp_path: Path) -> None:
    """Cold: the crawl and one analysis per page found; warm: all cached."""
    root = copy("streaming", tmp_path)
    cold = run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")
    pages = ["index", "cats", "dogs", "about", "food", "parks"]
    assert ran(cold) == {"crawl", "report", *(f"analyse[pages/{p}.txt]" for p in pages)}
    report = (root / "build/report.txt").read_text()
    assert report.startswith("6 pages: index.txt, cats.txt, dogs.txt, about.txt, food.txt")
    assert "orphan" not in report
    assert "8 tasks: 8 cached, 0 ran" in run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")


def test_streaming_edit_one_page_analyses_one_page(run_cli: RunCli, tmp_path: Path) -> None:
    """An edited page: the crawl reruns, one analysis runs, the rest are hits."""
    root = copy("streaming", tmp_path)
    run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")
    with (root / "pages/about.txt").open("a") as fh:
        fh.write("Cats and dogs are friends.\n")
    output = run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")
    assert ran(output) == {"crawl", "analyse[pages/about.txt]", "report"}
    assert "mapped   analyse: 6 items: 5 cached, 1 ran" in output


def test_streaming_a_new_link_finds_one_more_page(run_cli: RunCli, tmp_path: Path) -> None:
    """Linking the orphan page: it is found and analysed; nothing else is."""
    root = copy("streaming", tmp_path)
    run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")
    with (root / "pages/parks.txt").open("a") as fh:
        fh.write("-> orphan.txt\n")
    output = run_ok(run_cli, root, "-o", "delay=0", "-o", "slow=0")
    new = {"analyse[pages/parks.txt]", "analyse[pages/orphan.txt]"}
    assert ran(output) == {"crawl", *new, "report"}
    assert "7 pages" in (root / "build/report.txt").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, the finished task, never waited).
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _taskrun(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_service_example_stops_the_service_and_alerts_only_on_failure(tmp_path: Path) -> None:
    """The failures guide's example end to end: tests pass, then fail; always stopped."""
    import json

    root = copy("service", tmp_path)
    passed = _taskrun(root, "run")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    service = json.loads((root / "build" / "service.json").read_text())
    assert not _alive(service["pid"])
    assert (root / "build" / "service.stopped").read_text().endswith("after tests ran\n")
    assert (root / "build" / "announce.txt").exists()
    assert not (root / "build" / "alert.txt").exists()
    assert "skipped  alert: no upstream failed (run_if='failed')" in passed.stdout

    failed = _taskrun(root, "run", "-o", "expect=goodbye")
    assert failed.returncode == 1
    service = json.loads((root / "build" / "service.json").read_text())
    assert not _alive(service["pid"])
    assert (root / "build" / "service.stopped").read_text().endswith("after tests failed\n")
    alert = (root / "build" / "alert.txt").read_text()
    assert alert.startswith("integration tests failed: AssertionError:") and "'goodbye'" in alert
    assert "skipped  announce: upstream 'integration_tests' failed" in failed.stdout

    plan = _taskrun(root, "run", "--dry-run", "-o", "channel=none")
    assert "skip     announce: when= is false (channel='none')" in plan.stdout


# -- the examples through the pytest plugin (taskrun.testing), as their users would test --
def test_pipeline_through_the_plugin(taskrun_project: Any, run_tasks: Any) -> None:
    """Cold, then cached; an option reruns only what it reaches; products of any task."""
    from taskrun.testing import assert_tasks

    original = EXAMPLES / "pipeline" / "build"  # may exist: the README runs the example
    before = _tree_state(original)
    taskrun_project.copy(EXAMPLES / "pipeline")
    every = ["download", "clean", "aggregate", "report"]
    assert_tasks(run_tasks("report"), ran=every, cached=[])
    assert_tasks(run_tasks("report"), cached=every, ran=[])
    by_month = run_tasks("report", options={"by": "month", "report.top": "2"})
    assert_tasks(by_month, cached=["download", "clean"], ran=["aggregate", "report"])
    assert len(by_month.product("clean")) == 13
    assert "| 2024-03 |" in taskrun_project.path("build/report.md").read_text()
    assert _tree_state(original) == before  # outputs stay in the copy


def test_pipeline_with_a_fake_download(taskrun_project: Any, run_tasks: Any, override: Any) -> None:
    """A fake download (same option names and types, another default) feeds the pipeline."""
    from taskrun.testing import assert_tasks

    taskrun_project.copy(EXAMPLES / "pipeline")

    def fake_download(url: str | None = "unused") -> str:
        return "date,region,product,units,unit_price\n2024-01-01,north,widget,2,1.50\n"

    with override("download", fake_download):
        result = run_tasks("report")
    assert_tasks(result, ran=["download", "clean", "aggregate", "report"])
    assert "| north | 3.00 |" in taskrun_project.path("build/report.md").read_text()


def test_site_through_the_plugin(taskrun_project: Any, run_tasks: Any) -> None:
    """A deleted build comes back from the cache without running a task."""
    from taskrun.testing import assert_tasks

    taskrun_project.copy(EXAMPLES / "site")
    first = run_tasks()
    assert first.ok and first.names("ran")
    shutil.rmtree(taskrun_project.path("build"))
    second = run_tasks()
    assert_tasks(second, ran=[], cached=first.names("ran"))
    for name in SITE_FILES:
        assert taskrun_project.path("build/site").joinpath(name).is_file(), name


def test_options_through_the_plugin(taskrun_project: Any, run_tasks: Any) -> None:
    """options= takes the command line's text forms: enum names, durations, lists, dicts."""
    from taskrun.testing import assert_tasks

    taskrun_project.copy(EXAMPLES / "options")
    result = run_tasks(
        "config",
        options={
            "tags": "web,admin",
            "limits": {"cpu": 20.0},
            "level": "DEBUG",
            "grace": "1.5m",
            "fmt": "env",
        },
    )
    assert_tasks(result, ran=["settings", "config"])
    env = taskrun_project.path("build/service.env").read_text()
    assert 'SERVICE_LEVEL="DEBUG"' in env and 'SERVICE_GRACE="90s"' in env
    with pytest.raises(taskrun.InvocationError, match="0 is not an integer above 0"):
        run_tasks("config", options={"tags": ["web"], "limits": {}, "replicas": "0"})


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``root`` with its size and mtime (empty when ``root`` is absent)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
