"""`taskrun cache ...` through the CLI, and the cache's trust rules as a user meets them.

Covers info/gc/clear/verify/export/import, that they work without importing the task
file, --cache-dir and TASKRUN_CACHE_DIR, cache modes, signing (never unpickling what is
unsigned or mis-signed), runtime facts and probes, the non-reproducibility report, and
refusing a cache directory whose database was tampered with.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tarfile
from pathlib import Path

import diskcache
import pytest

from taskrun.cache import Cache

TASKS = """
from taskrun import task, File

@task
def numbers(n: int = 4) -> list[int]:
    return list(range(n))

@task(deps=[numbers])
def total(numbers: list[int]) -> int:
    return sum(numbers)

@task(deps=[total], outputs=["build/report.txt"])
def report(total: int) -> File:
    out = File("build/report.txt")
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"total {total}\\n")
    return out
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKRUN_CACHE_KEY", "TASKRUN_CACHE_MODE", "TASKRUN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path, write_project, run_cli) -> Path:
    """The three-task project, run once (everything stored)."""
    root = write_project(tmp_path / "proj", TASKS)
    result = run_cli(root, "run")
    assert result.exit_code == 0, result.output
    return root


def cached(directory: Path) -> dict[str, str]:
    """fingerprint -> task of every valid entry in the cache at ``directory``."""
    with Cache(directory, mode="read", on_warning=lambda message: None) as cache:
        return {m.fingerprint: m.task for m in cache.entries()}


def cache_of(root: Path) -> Path:
    return root / ".taskrun" / "cache"


def last_used(root: Path) -> set[str]:
    return set(json.loads((cache_of(root) / "last-run.json").read_text())["used"])


# --------------------------------------------------------------------------- info


def test_info_reports_location_entries_and_hit_rate(project: Path, run_cli) -> None:
    """`cache info` names the directory, counts entries and shows the last run's hit rate."""
    assert run_cli(project, "run").exit_code == 0
    result = run_cli(project, "cache", "info")
    assert result.exit_code == 0, result.output
    assert str(cache_of(project)) in result.stdout
    assert "entries    3 (1 output blob)" in result.stdout
    assert "of 5.0 GiB" in result.stdout
    assert "hit rate 100%" in result.stdout


def test_info_json(project: Path, run_cli) -> None:
    """`cache info --json` gives the same facts as one JSON document."""
    doc = json.loads(run_cli(project, "cache", "info", "--json").stdout)
    assert doc["entries"] == 3 and doc["blobs"] == 1 and doc["signed"] is False
    assert doc["last_run"] == {**doc["last_run"], "hits": 0, "misses": 3, "used": 3}


def test_info_on_a_fresh_project_creates_nothing(tmp_path: Path, write_project, run_cli) -> None:
    """Looking at a cache that does not exist yet reports it empty and writes nothing."""
    root = write_project(tmp_path / "fresh", TASKS)
    result = run_cli(root, "cache", "info")
    assert result.exit_code == 0, result.output
    assert "entries    0" in result.stdout and "none recorded" in result.stdout
    assert not (root / ".taskrun").exists()


@pytest.mark.parametrize("command", ["gc", "clear", "verify"])
def test_maintenance_of_a_missing_cache_creates_none(
    tmp_path: Path, write_project, run_cli, command: str
) -> None:
    """gc, clear and verify on a project that has no cache yet say so and create nothing."""
    root = write_project(tmp_path / "fresh", TASKS)
    result = run_cli(root, "cache", command)
    assert result.exit_code == 0 and "nothing to do" in result.stdout
    assert not (root / ".taskrun").exists()


def test_maintenance_does_not_import_the_task_file(project: Path, run_cli, tmp_path: Path) -> None:
    """info, verify, gc, clear, export and import work even if tasks.py cannot be imported."""
    (project / "tasks.py").write_text("raise RuntimeError('must not be imported')\n")
    archive = tmp_path / "all.tar.gz"
    for args in (
        ["info"],
        ["verify"],
        ["gc", "--keep-last-run"],
        ["export", str(archive)],
        ["clear", "total"],
        ["import", str(archive)],
    ):
        result = run_cli(project, "cache", *args)
        assert result.exit_code == 0, (args, result.output)
    assert sorted(cached(cache_of(project)).values()) == ["numbers", "report", "total"]


def test_cache_dir_needs_no_task_file(project: Path, run_cli, tmp_path: Path) -> None:
    """--cache-dir or TASKRUN_CACHE_DIR alone is enough, from a directory without tasks.py."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_option = run_cli(elsewhere, "cache", "info", "--cache-dir", str(cache_of(project)))
    by_env = run_cli(elsewhere, "cache", "info", env={"TASKRUN_CACHE_DIR": str(cache_of(project))})
    for result in (by_option, by_env):
        assert result.exit_code == 0, result.output
        assert "entries    3" in result.stdout


def test_no_task_file_and_no_cache_dir_is_a_usage_error(tmp_path: Path, run_cli) -> None:
    """Without a project or --cache-dir there is no cache to look at: exit 2, saying so."""
    result = run_cli(tmp_path, "cache", "info")
    assert result.exit_code == 2
    assert "no tasks.py" in result.stderr


def test_cache_dir_from_pyproject(tmp_path: Path, write_project, run_cli) -> None:
    """`cache-dir` in [tool.taskrun] is where both `run` and `cache` look."""
    root = write_project(tmp_path / "p", TASKS, '[tool.taskrun]\ncache-dir = "my-cache"\n')
    assert run_cli(root, "run").exit_code == 0
    result = run_cli(root, "cache", "info")
    assert str(root / "my-cache") in result.stdout and "entries    3" in result.stdout


# --------------------------------------------------------------------------- gc and clear


def test_gc_keep_last_run_keeps_exactly_the_used_entries(project: Path, run_cli) -> None:
    """After two generations, --keep-last-run leaves precisely what the last run used."""
    assert run_cli(project, "run", "-o", "n=9").exit_code == 0
    assert len(cached(cache_of(project))) == 6
    result = run_cli(project, "cache", "gc", "--keep-last-run")
    assert result.exit_code == 0, result.output
    assert "removed 3 entries" in result.stdout
    assert set(cached(cache_of(project))) == last_used(project)
    assert run_cli(project, "run", "-v", "-o", "n=9").stdout.count("cached ") == 3


def test_gc_max_age(project: Path, run_cli) -> None:
    """--max-age keeps entries younger than the age and removes older ones."""
    assert run_cli(project, "cache", "gc", "--max-age", "1h").exit_code == 0
    assert len(cached(cache_of(project))) == 3
    assert run_cli(project, "cache", "gc", "--max-age", "0s").exit_code == 0
    assert cached(cache_of(project)) == {}


def test_gc_max_size(project: Path, run_cli) -> None:
    """--max-size removes the oldest entries until the cache fits (here: all of them)."""
    result = run_cli(project, "cache", "gc", "--max-size", "1KiB")
    assert result.exit_code == 0, result.output
    assert cached(cache_of(project)) == {}


@pytest.mark.parametrize("args", [["--max-age", "soon"], ["--max-size", "big"]])
def test_gc_bad_limits_are_usage_errors(project: Path, run_cli, args: list[str]) -> None:
    """An unparsable age or size is exit 2 and removes nothing."""
    result = run_cli(project, "cache", "gc", *args)
    assert result.exit_code == 2
    assert len(cached(cache_of(project))) == 3


@pytest.mark.parametrize("args", [["gc", "--max-age", "0s"], ["clear"], ["import", "x.tar.gz"]])
def test_changing_commands_refuse_read_mode(project: Path, run_cli, args: list[str]) -> None:
    """With TASKRUN_CACHE_MODE=read, commands that would change the cache refuse (exit 2)."""
    result = run_cli(project, "cache", *args, env={"TASKRUN_CACHE_MODE": "read"})
    assert result.exit_code == 2
    assert "cache mode is 'read'" in result.stderr
    assert len(cached(cache_of(project))) == 3


def test_clear_everything(project: Path, run_cli) -> None:
    """`cache clear` removes every entry."""
    result = run_cli(project, "cache", "clear")
    assert result.exit_code == 0 and "removed 3 entries" in result.stdout
    assert cached(cache_of(project)) == {}


def test_clear_one_task(project: Path, run_cli) -> None:
    """`cache clear TASK` removes that task's entries only."""
    result = run_cli(project, "cache", "clear", "total")
    assert result.exit_code == 0 and "removed 1 entry of task 'total'" in result.stdout
    assert sorted(cached(cache_of(project)).values()) == ["numbers", "report"]


def test_clear_unknown_task_suggests_a_name(project: Path, run_cli) -> None:
    """A misspelt task is an error (exit 2) that removes nothing and suggests a name."""
    result = run_cli(project, "cache", "clear", "reprot")
    assert result.exit_code == 2
    assert "there is no task 'reprot'" in result.output
    assert "did you mean 'report'?" in result.output
    assert len(cached(cache_of(project))) == 3


def test_clear_a_task_without_entries(project: Path, run_cli) -> None:
    """A real task with nothing cached is not an error: nothing to remove."""
    (project / "tasks.py").write_text(
        (project / "tasks.py").read_text() + "\n\n@task\ndef extra() -> int:\n    return 1\n"
    )
    result = run_cli(project, "cache", "clear", "extra")
    assert result.exit_code == 0, result.output
    assert "no entries of task 'extra'" in result.output


# --------------------------------------------------------------------------- verify


def corrupt_entry(root: Path, task: str) -> str:
    """Flip one payload byte of ``task``'s entry in place; return its fingerprint."""
    fp = next(fp for fp, t in cached(cache_of(root)).items() if t == task)
    with diskcache.Cache(str(cache_of(root))) as dc:
        raw = bytearray(dc.get(fp))
        raw[-1] ^= 0xFF
        dc.set(fp, bytes(raw), tag="entry")
    return fp


def test_verify_all_good(project: Path, run_cli) -> None:
    """A sound cache verifies with exit 0."""
    result = run_cli(project, "cache", "verify")
    assert result.exit_code == 0
    assert "checked 3 entries and 1 blob" in result.stdout and "all good" in result.stdout


def test_verify_reports_and_removes_a_corrupt_entry(project: Path, run_cli) -> None:
    """A corrupt entry is named, removed, and makes verify exit 1; then all is good."""
    fp = corrupt_entry(project, "total")
    result = run_cli(project, "cache", "verify")
    assert result.exit_code == 1
    assert f"bad entry {fp}: digest mismatch" in result.stdout and "removed" in result.stdout
    assert run_cli(project, "cache", "verify").exit_code == 0
    assert sorted(cached(cache_of(project)).values()) == ["numbers", "report"]


def test_verify_in_read_mode_only_reports(project: Path, run_cli) -> None:
    """In read mode verify says what is bad but removes nothing."""
    fp = corrupt_entry(project, "total")
    result = run_cli(project, "cache", "verify", env={"TASKRUN_CACHE_MODE": "read"})
    assert result.exit_code == 1 and "not removed" in result.stdout
    with Cache(cache_of(project), mode="read") as cache:
        assert cache.info().entries == 3  # the bad one included
    assert fp not in cached(cache_of(project))


# --------------------------------------------------------------------------- export and import


def test_export_targets_exports_their_graph_only(project: Path, run_cli, tmp_path: Path) -> None:
    """`export FILE total` carries total and what it needs, not report."""
    archive = tmp_path / "total.tar.gz"
    result = run_cli(project, "cache", "export", str(archive), "total")
    assert result.exit_code == 0, result.output
    assert "exported 2 entries and 0 output blobs" in result.stdout
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert sorted(e["task"] for e in manifest["entries"].values()) == ["numbers", "total"]


def test_export_says_what_is_not_cached(project: Path, run_cli, tmp_path: Path) -> None:
    """Targets whose entries are missing are reported with the reason they would run."""
    result = run_cli(project, "cache", "export", str(tmp_path / "a.tgz"), "report", "-o", "n=9")
    assert result.exit_code == 0, result.output
    assert "not cached numbers: would run (option 'n' changed: 4 -> 9)" in result.stdout
    assert "exported 0 entries" in result.stdout


def test_import_into_a_copy_reports_what_it_took(
    project: Path, run_cli, write_project, tmp_path: Path
) -> None:
    """Import names each entry it took; the copy then hits every task, files restored."""
    archive = tmp_path / "a.tar.gz"
    assert run_cli(project, "cache", "export", str(archive)).exit_code == 0
    copy = write_project(tmp_path / "copy", TASKS)
    result = run_cli(copy, "cache", "import", str(archive))
    assert result.exit_code == 0, result.output
    assert {line.split()[1] for line in result.stdout.splitlines() if line.startswith("took")} == {
        "numbers",
        "total",
        "report",
    }
    run = run_cli(copy, "run")
    assert "3 tasks: 3 cached, 0 ran" in run.stdout
    assert (copy / "build" / "report.txt").read_text() == "total 6\n"


def test_import_with_the_wrong_key_takes_nothing(project: Path, run_cli, tmp_path: Path) -> None:
    """Entries signed with another key refuse the whole archive: exit 1, the cache empty."""
    signed = tmp_path / "signed"
    env = {"TASKRUN_CACHE_KEY": "key-A", "TASKRUN_CACHE_DIR": str(signed)}
    assert run_cli(project, "run", env=env).exit_code == 0
    archive = tmp_path / "a.tar.gz"
    assert run_cli(project, "cache", "export", str(archive), env=env).exit_code == 0
    dest = tmp_path / "dest"
    result = run_cli(
        project,
        "cache",
        "import",
        str(archive),
        "--cache-dir",
        str(dest),
        env={"TASKRUN_CACHE_KEY": "key-B"},
    )
    assert result.exit_code == 1
    assert "bad signature" in result.stdout and "nothing was imported" in result.stderr
    assert cached(dest) == {}


def test_import_of_a_missing_file_is_a_usage_error(project: Path, run_cli) -> None:
    """Importing a file that does not exist is exit 2."""
    result = run_cli(project, "cache", "import", "nowhere.tar.gz")
    assert result.exit_code == 2 and "no archive" in result.stderr


def test_import_of_a_non_archive_is_refused(project: Path, run_cli, tmp_path: Path) -> None:
    """A file that is not a gzip tar is refused, saying so."""
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"hello")
    result = run_cli(project, "cache", "import", str(bogus))
    assert result.exit_code == 1 and "not a valid gzip file" in result.stdout


# --------------------------------------------------------------------------- signing

UNPICKLE_SPY = """
from pathlib import Path
from taskrun import task

def _revive(value):
    Path("UNPICKLED").write_text("yes")
    return Spy(value)

class Spy:
    def __init__(self, value):
        self.value = value
    def __reduce__(self):
        return (_revive, (self.value,))

@task(version="1")
def obj():
    return Spy(41)

@task(deps=[obj], version="1")
def use(obj) -> int:
    return obj.value + 1
"""


def test_unsigned_or_mis_signed_entries_are_never_unpickled(
    tmp_path: Path, write_project, run_cli
) -> None:
    """With a key set, unsigned and mis-signed entries rerun with a warning, unopened."""
    root = write_project(tmp_path / "spy", UNPICKLE_SPY)
    marker = root / "UNPICKLED"
    assert run_cli(root, "run").exit_code == 0  # stored unsigned
    unsigned = run_cli(root, "run", "--force", "use", env={"TASKRUN_CACHE_KEY": "K"})
    assert unsigned.exit_code == 0, unsigned.output
    assert "unsigned, but a signing key is set" in unsigned.stdout
    assert "ran      obj" in unsigned.stdout and not marker.exists()
    # Control: a signed hit that `use` needs *is* unpickled, so the spy would have told.
    control = run_cli(root, "run", "--force", "use", env={"TASKRUN_CACHE_KEY": "K"})
    assert "cached   obj" in control.stdout and marker.exists()
    marker.unlink()
    other = run_cli(root, "run", "--force", "use", env={"TASKRUN_CACHE_KEY": "other"})
    assert "bad signature" in other.stdout and "ran      obj" in other.stdout
    assert not marker.exists()


# --------------------------------------------------------------------------- non-determinism

STAMP = """
import uuid
from pathlib import Path
from taskrun import task, File

@task
def stamp() -> str:
    value = uuid.uuid4().hex
    with open("stamps.log", "a") as log:
        log.write(value + "\\n")
    return value

@task(deps=[stamp], outputs=["build/show.txt"])
def show(stamp: str) -> File:
    Path("build").mkdir(exist_ok=True)
    Path("build/show.txt").write_text(stamp)
    return File("build/show.txt")
"""


def test_forced_rerun_replaces_the_entry_and_the_next_run_uses_it(
    tmp_path: Path, write_project, run_cli
) -> None:
    """--force-all stores its new results over the old entries; a plain run then uses them."""
    root = write_project(tmp_path / "stamp", STAMP)
    assert run_cli(root, "run").exit_code == 0
    forced = run_cli(root, "run", "--force-all")
    assert forced.exit_code == 0, forced.output
    assert "not reproducible" not in forced.output
    first, second = (root / "stamps.log").read_text().split()
    assert (root / "build" / "show.txt").read_text() == second
    again = run_cli(root, "run")
    assert "2 tasks: 2 cached" in again.stdout
    assert (root / "build" / "show.txt").read_text() == second != first


def test_force_one_task_then_plain_run_keeps_the_refetched_product(
    tmp_path: Path, write_project, run_cli
) -> None:
    """`run --force stamp` (refetch) then `run`: the new product and its dependent's file stay."""
    root = write_project(tmp_path / "stamp", STAMP)
    assert run_cli(root, "run").exit_code == 0
    assert run_cli(root, "run", "--force", "stamp").exit_code == 0
    _, second = (root / "stamps.log").read_text().split()
    again = run_cli(root, "run")
    assert "2 tasks: 2 cached" in again.stdout, again.output
    assert (root / "build" / "show.txt").read_text() == second
    assert len((root / "stamps.log").read_text().split()) == 2  # nothing ran again


# --------------------------------------------------------------------------- runtime facts


def probe(command: str) -> str:
    return f"[tool.taskrun.runtime]\nprobes = {{ tool = '{command}' }}\n"


def test_failing_probe_is_an_error(tmp_path: Path, write_project, run_cli) -> None:
    """A probe that exits non-zero stops the run with exit 2; it is never an empty fact."""
    failing = probe(f'{sys.executable} -c "raise SystemExit(3)"')
    root = write_project(tmp_path / "p", TASKS, failing)
    result = run_cli(root, "run")
    assert result.exit_code == 2
    assert "runtime probe 'tool'" in result.stderr and "status 3" in result.stderr
    assert cached(cache_of(root)) == {}


def test_missing_probe_command_is_an_error(tmp_path: Path, write_project, run_cli) -> None:
    """A probe whose command does not exist is exit 2, naming it."""
    root = write_project(tmp_path / "p", TASKS, probe("no-such-tool-xyz --version"))
    result = run_cli(root, "run")
    assert result.exit_code == 2 and "'no-such-tool-xyz' was not found" in result.stderr


def test_probe_output_enters_every_fingerprint(tmp_path: Path, write_project, run_cli) -> None:
    """A changed probe output (a new compiler version) reruns every task, saying why."""
    v1 = probe(f'{sys.executable} -c "print(1)"')
    root = write_project(tmp_path / "p", TASKS, v1)
    assert run_cli(root, "run").exit_code == 0
    assert "3 cached" in run_cli(root, "run").stdout
    (root / "pyproject.toml").write_text(probe(f'{sys.executable} -c "print(2)"'))
    result = run_cli(root, "run")
    assert "ran      numbers" in result.stdout
    assert "runtime 'tool' changed: '1' -> '2'" in result.stdout


def test_declared_environment_enters_every_fingerprint(
    tmp_path: Path, write_project, run_cli
) -> None:
    """`env = [...]` in [tool.taskrun.runtime] makes those variables part of every key."""
    root = write_project(tmp_path / "p", TASKS, '[tool.taskrun.runtime]\nenv = ["TARGET_ABI"]\n')
    assert run_cli(root, "run", env={"TARGET_ABI": "a"}).exit_code == 0
    assert "3 cached" in run_cli(root, "run", env={"TARGET_ABI": "a"}).stdout
    assert "3 ran" in run_cli(root, "run", env={"TARGET_ABI": "b"}).stdout


# --------------------------------------------------------------------------- tampered databases


def _bad_row(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, tag, size,"
        " mode, filename, value) VALUES ('x', 1, 0, NULL, 0, 'entry', 0, 2,"
        " '../../victim.txt', NULL)"
    )


def _bad_trigger(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TRIGGER evil AFTER INSERT ON Cache BEGIN"
        " UPDATE Cache SET filename = '../../victim.txt'; END"
    )


def _bad_setting(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO Settings VALUES ('sqlite_writable_schema', 1)")


@pytest.mark.parametrize("tamper", [_bad_row, _bad_trigger, _bad_setting])
def test_tampered_cache_database_is_never_opened_for_writing(
    project: Path, run_cli, tmp_path: Path, tamper
) -> None:
    """A restored cache.db with a stray file name, trigger or setting is refused, untouched."""
    victim = project / "victim.txt"  # what a planted '../../victim.txt' would delete
    victim.write_text("precious")
    with sqlite3.connect(cache_of(project) / "cache.db") as db:
        tamper(db)
    db.close()
    before = (cache_of(project) / "cache.db").read_bytes()
    for args in (["run"], ["cache", "clear"], ["cache", "gc", "--max-age", "0s"]):
        result = run_cli(project, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "was not written by taskrun, or was tampered with" in result.stderr
    assert victim.read_text() == "precious"
    assert (cache_of(project) / "cache.db").read_bytes() == before


def test_symlinked_lock_directory_is_refused(project: Path, run_cli, tmp_path: Path) -> None:
    """A `locks` symlink (gc would unlink *.lock files wherever it points) is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.lock").write_text("")
    locks = cache_of(project) / "locks"
    for lock in locks.iterdir():
        lock.unlink()
    locks.rmdir()
    locks.symlink_to(outside)
    result = run_cli(project, "cache", "gc")
    assert result.exit_code == 1 and "locks is not a plain directory" in result.stderr
    assert (outside / "keep.lock").exists()


# --------------------------------------------------------------------------- the CI guide

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "ci.md"


def guide_commands() -> list[list[str]]:
    """Every `taskrun ...` command line in docs/ci.md's code blocks, as argv after `taskrun`."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```([a-z]*)\n(.*?)```", GUIDE.read_text(), re.S):
        lang, body = block
        for line in body.splitlines():
            text = line.strip().removeprefix("- ").removeprefix("run: ")
            if lang == "":  # the reference table: command, two spaces, description
                text = re.split(r"\s{2,}", text)[0]
            words = shlex.split(text.split(" #")[0]) if "taskrun " in text else []
            while words and "=" in words[0]:
                words.pop(0)  # VAR=value prefixes
            if words[:1] != ["taskrun"]:
                continue
            args = ["x.tar.gz" if w == "FILE" else w for w in words[1:] if not w.startswith("[")]
            commands.append(args)
    return commands


def test_every_command_in_the_ci_guide_exists() -> None:
    """Each taskrun command and option the CI guide shows is accepted by the CLI."""
    from click.testing import CliRunner

    from taskrun.cli import main

    commands = guide_commands()
    assert ["cache", "gc", "--keep-last-run"] in commands and len(commands) > 12
    for args in commands:
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
