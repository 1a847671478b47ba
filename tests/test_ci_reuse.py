"""The CI guide's recipe (docs/ci.md), replayed locally with real processes and directories.

Job A runs the project, trims the cache to what it used and exports it; job B, a fresh
checkout at another path (another HOME and user name, and when the tests run as root,
another uid) imports the archive and reports every task cached with its output files
restored. Tampered archives are refused with nothing entering the cache; read mode (pull
requests) writes nothing; a shared cache directory takes two concurrent writers.

What cannot be replayed here is another *machine*: keys hold the Python version and the
platform by default, so the same recipe on a runner with another Python misses, and
`taskrun explain` says which runtime fact changed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from taskrun.cache import Cache

TASKS = """
from pathlib import Path
from taskrun import task, File

@task(inputs=["data/*.txt"])
def words() -> dict[str, int]:
    return {p.name: len(p.read_text().split()) for p in sorted(Path("data").glob("*.txt"))}

@task(deps=[words])
def total(words: dict[str, int]) -> int:
    return sum(words.values())

@task(deps=[words], outputs=["build/pages/*.txt"])
def pages(words: dict[str, int]) -> list[File]:
    Path("build/pages").mkdir(parents=True, exist_ok=True)
    out = []
    for name, count in words.items():
        page = File("build/pages") / name
        page.write_text(f"{name}: {count} words\\n")
        out.append(page)
    return out

@task(deps=[total, pages], outputs=["build/report.txt"])
def report(total: int, pages: list[File]) -> File:
    out = File("build/report.txt")
    out.write_text(f"{len(pages)} pages, {total} words\\n")
    return out
"""
TASK_NAMES = ("words", "total", "pages", "report")
OUTPUTS = ("build/pages/a.txt", "build/pages/b.txt", "build/report.txt")
KEY = "ci-secret-from-the-secret-store"


def pyproject() -> str:
    # Runtime facts as the guide suggests: a declared variable and a tool probe.
    return textwrap.dedent(f"""\
        [tool.taskrun.runtime]
        env = ["TARGET_ABI"]
        probes = {{ python-exe = '{sys.executable} --version' }}
        """)


def write_source(directory: Path) -> Path:
    """A checkout of the project: tasks, config and inputs, no cache, no build."""
    (directory / "data").mkdir(parents=True)
    (directory / "tasks.py").write_text(TASKS)
    (directory / "pyproject.toml").write_text(pyproject())
    (directory / "data" / "a.txt").write_text("one two three\n")
    (directory / "data" / "b.txt").write_text("four five\n")
    return directory


def checkout(source: Path, where: Path) -> Path:
    """A fresh copy of the project at ``where`` (what `actions/checkout` gives a job)."""
    shutil.copytree(source, where)
    return where


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "TARGET_ABI": "x86_64-v2", **extra})
    return env


def taskrun(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ok: bool = True,
    user: tuple[int, int] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskrun ARGS`` in ``cwd`` as a real process (optionally as uid:gid)."""

    def demote() -> None:
        assert user is not None
        os.setgid(user[1])
        os.setuid(user[0])

    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=cwd,
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=demote if user else None,
    )
    if ok:
        assert proc.returncode == 0, f"taskrun {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def entries(cache_dir: Path, key: str | None = KEY) -> dict[str, str]:
    """fingerprint -> task of the valid entries in a cache directory (read-only look)."""
    secret = key.encode() if key else None
    with Cache(cache_dir, mode="read", key=secret, on_warning=lambda m: None) as cache:
        return {m.fingerprint: m.task for m in cache.entries()}


def blob_count(cache_dir: Path) -> int:
    with Cache(cache_dir, mode="read", on_warning=lambda m: None) as cache:
        return int(cache.info().blobs)


def assert_all_cached(proc: subprocess.CompletedProcess[str]) -> None:
    """Every task was a hit, by name (the run had -v: plain output only counts hits)."""
    n = len(TASK_NAMES)
    assert f"{n} tasks: {n} cached, 0 ran, 0 failed" in proc.stdout, proc.stdout
    states = {
        line.split()[1].rstrip(","): line.split()[0]
        for line in proc.stdout.splitlines()
        if line.split()[:1] in (["cached"], ["ran"])
    }
    assert states == dict.fromkeys(TASK_NAMES, "cached")


class JobA:
    """The main-branch CI job, run once for the module: run, gc, export."""

    def __init__(self, base: Path) -> None:
        self.source = write_source(base / "src")
        self.root = checkout(self.source, base / "runner-1" / "work" / "proj")
        self.env = base_env(TASKRUN_CACHE_KEY=KEY)
        self.first = taskrun(self.root, "run", env=self.env)
        taskrun(self.root, "cache", "gc", "--keep-last-run", env=self.env)
        self.archive = base / "artifacts" / "taskrun-cache.tar.gz"
        self.archive.parent.mkdir()
        self.export = taskrun(self.root, "cache", "export", str(self.archive), env=self.env)
        self.cache_dir = self.root / ".taskrun" / "cache"
        self.outputs = {rel: (self.root / rel).read_bytes() for rel in OUTPUTS}


@pytest.fixture(scope="module")
def job_a(tmp_path_factory: pytest.TempPathFactory) -> JobA:
    return JobA(tmp_path_factory.mktemp("ci"))


def job_b_env(home: Path, **extra: str) -> dict[str, str]:
    """Another runner: another HOME, user name and temp dir; the same secret."""
    home.mkdir(parents=True, exist_ok=True)
    return base_env(
        **{
            "TASKRUN_CACHE_KEY": KEY,
            "HOME": str(home),
            "USER": "runner-b",
            "LOGNAME": "runner-b",
            "TMPDIR": str(home),
            **extra,
        }
    )


# --------------------------------------------------------------------------- the recipe


def test_job_a_ran_everything_and_exported_it(job_a: JobA) -> None:
    """The first CI job runs every task and exports exactly the entries it used."""
    assert f"{len(TASK_NAMES)} tasks: 0 cached, {len(TASK_NAMES)} ran" in job_a.first.stdout
    assert f"exported {len(TASK_NAMES)} entries and 3 output blobs" in job_a.export.stdout


def test_second_job_at_another_path_reports_every_task_cached(job_a: JobA, tmp_path: Path) -> None:
    """Done-when: a fresh checkout elsewhere imports the archive and hits every task."""
    root = checkout(job_a.source, tmp_path / "runner-2" / "builds" / "x" / "proj")
    env = job_b_env(tmp_path / "home-b")
    imported = taskrun(root, "cache", "import", str(job_a.archive), env=env)
    assert f"imported {len(TASK_NAMES)} entries" in imported.stdout
    for name in TASK_NAMES:
        assert f" {name} " in imported.stdout  # "took     <task> <fingerprint>"
    second = taskrun(root, "run", "-v", env=env)  # -v: every hit by name
    assert_all_cached(second)
    for rel, data in job_a.outputs.items():
        assert (root / rel).read_bytes() == data, rel


def test_restoring_the_cache_directory_itself_also_hits(job_a: JobA, tmp_path: Path) -> None:
    """The actions/cache route (the directory saved and restored as is) hits every task."""
    root = checkout(job_a.source, tmp_path / "elsewhere" / "proj")
    shutil.copytree(job_a.cache_dir, root / ".taskrun" / "cache")
    second = taskrun(root, "run", "-v", env=job_b_env(tmp_path / "home", TASKRUN_CACHE_MODE="read"))
    assert_all_cached(second)
    assert (root / "build" / "report.txt").read_bytes() == job_a.outputs["build/report.txt"]


def _others_can_run_python() -> bool:
    """Root can become 'nobody' only if 'nobody' can reach the interpreter and taskrun."""
    import taskrun

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    for target in (
        Path(os.path.realpath(sys.executable)).parent,
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(taskrun.__file__).parent,
    ):
        for folder in (target, *target.parents):
            if not folder.stat().st_mode & 0o001:
                return False
    return True


@pytest.mark.skipif(
    not _others_can_run_python(), reason="needs root, and an interpreter that 'nobody' may run"
)
def test_second_job_as_another_user_hits_every_task(job_a: JobA) -> None:
    """Run as uid 'nobody' with its own checkout, the second job still hits every task."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="taskrun-ci-"))  # outside pytest's 0700 tmp tree
    try:
        base.chmod(0o755)
        root = checkout(job_a.source, base / "proj")
        archive = base / "cache.tar.gz"
        shutil.copy(job_a.archive, archive)
        for path in [base, *base.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        env = job_b_env(base / "home", USER="nobody", LOGNAME="nobody")
        os.chown(base / "home", nobody.pw_uid, nobody.pw_gid)
        user = (nobody.pw_uid, nobody.pw_gid)
        taskrun(root, "cache", "import", str(archive), env=env, user=user)
        assert_all_cached(taskrun(root, "run", "-v", env=env, user=user))
        assert (root / "build" / "report.txt").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_another_runtime_misses_and_says_why(job_a: JobA, tmp_path: Path) -> None:
    """A runner whose declared runtime facts differ misses every task, naming the fact."""
    root = checkout(job_a.source, tmp_path / "proj")
    env = job_b_env(tmp_path / "home", TARGET_ABI="aarch64")
    taskrun(root, "cache", "import", str(job_a.archive), env=env)
    run = taskrun(root, "run", "--dry-run", env=env)
    assert "runtime 'env:TARGET_ABI' changed: 'x86_64-v2' -> 'aarch64'" in run.stdout


# --------------------------------------------------------------------------- tampering


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path, "r:gz") as tar:
        return [
            (m, tar.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
            for m in tar
        ]


def write_members(path: Path, items: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def flip_a_byte_of_the_file(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01
    dst.write_bytes(bytes(data))


def flip_a_byte_of_an_entry(src: Path, dst: Path) -> None:
    # The attacker also fixes the manifest: only the envelope's own digest can tell.
    items = read_members(src)
    manifest_at = next(i for i, (m, _) in enumerate(items) if m.name == "manifest.json")
    manifest = json.loads(items[manifest_at][1] or b"")
    at = next(i for i, (m, _) in enumerate(items) if m.name.startswith("entries/"))
    info, data = items[at]
    flipped = bytearray(data or b"")
    flipped[-1] ^= 0x01
    items[at] = (info, bytes(flipped))
    manifest["entries"][info.name.split("/")[1]]["digest"] = xxhash.xxh3_128_hexdigest(flipped)
    items[manifest_at] = (items[manifest_at][0], json.dumps(manifest).encode())
    write_members(dst, items)


def add_a_dotdot_member(src: Path, dst: Path) -> None:
    info = tarfile.TarInfo("../escaped.txt")
    write_members(dst, [*read_members(src), (info, b"out of the box\n")])


def add_a_symlink_member(src: Path, dst: Path) -> None:
    info = tarfile.TarInfo("blobs/" + "ab" * 16)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    write_members(dst, [*read_members(src), (info, None)])


TAMPERS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "flipped byte in the file": (flip_a_byte_of_the_file, "not a valid"),
    "flipped byte in an entry": (flip_a_byte_of_an_entry, "digest mismatch"),
    "../ member": (add_a_dotdot_member, "unexpected name"),
    "symlink member": (add_a_symlink_member, "not a regular file (symlink)"),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_tampered_archive_is_refused_whole(job_a: JobA, tmp_path: Path, how: str) -> None:
    """A tampered archive is refused (exit 1) and not one entry or blob enters the cache."""
    tamper, reason = TAMPERS[how]
    bad = tmp_path / "artifacts" / "cache.tar.gz"
    bad.parent.mkdir()
    tamper(job_a.archive, bad)
    root = checkout(job_a.source, tmp_path / "proj")
    proc = taskrun(root, "cache", "import", str(bad), env=job_b_env(tmp_path / "h"), ok=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert reason in proc.stdout and "nothing was imported" in proc.stderr
    cache_dir = root / ".taskrun" / "cache"
    assert entries(cache_dir) == {} and blob_count(cache_dir) == 0
    assert not (tmp_path / "artifacts" / "escaped.txt").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_archive_signed_with_another_key_is_refused(job_a: JobA, tmp_path: Path) -> None:
    """A job holding another key (or a forged archive) gets nothing from the archive."""
    root = checkout(job_a.source, tmp_path / "proj")
    env = job_b_env(tmp_path / "h", TASKRUN_CACHE_KEY="not-the-ci-secret")
    proc = taskrun(root, "cache", "import", str(job_a.archive), env=env, ok=False)
    assert proc.returncode == 1 and "bad signature" in proc.stdout
    assert entries(root / ".taskrun" / "cache") == {}


# --------------------------------------------------------------------------- read mode and gc


def snapshot(directory: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under ``directory`` with its bytes, mtime (ns) and mode."""
    out = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(directory))] = (data, st.st_mtime_ns, st.st_mode)
    return out


@pytest.mark.parametrize("how", ["env", "flag"])
def test_read_mode_writes_nothing(job_a: JobA, tmp_path: Path, how: str) -> None:
    """A pull-request job (read mode) with misses leaves .taskrun byte- and time-identical."""
    root = checkout(job_a.source, tmp_path / "pr")
    shutil.copytree(job_a.root / ".taskrun", root / ".taskrun")
    (root / "data" / "a.txt").write_text("changed by the pull request\n")
    before = snapshot(root / ".taskrun")
    env = job_b_env(tmp_path / "h", **({"TASKRUN_CACHE_MODE": "read"} if how == "env" else {}))
    args = ["run"] if how == "env" else ["run", "--cache-mode", "read"]
    run = taskrun(root, *args, env=env)
    assert "ran      words" in run.stdout and "0 failed" in run.stdout
    assert snapshot(root / ".taskrun") == before


def test_gc_keep_last_run_leaves_exactly_the_used_entries(job_a: JobA, tmp_path: Path) -> None:
    """After a run on changed inputs, gc --keep-last-run keeps only that run's entries."""
    root = checkout(job_a.source, tmp_path / "main")
    shutil.copytree(job_a.cache_dir, root / ".taskrun" / "cache")
    env = job_b_env(tmp_path / "h")
    (root / "data" / "b.txt").write_text("four five six\n")
    taskrun(root, "run", env=env)
    cache_dir = root / ".taskrun" / "cache"
    used = set(json.loads((cache_dir / "last-run.json").read_text())["used"])
    assert len(entries(cache_dir)) > len(used)
    gc = taskrun(root, "cache", "gc", "--keep-last-run", env=env)
    assert "removed" in gc.stdout
    assert set(entries(cache_dir)) == used
    assert_all_cached(taskrun(root, "run", "-v", env=env))


# --------------------------------------------------------------------------- shared directory

SLOW_TASKS = """
import time
from taskrun import task

def _work(i: int) -> int:
    time.sleep(0.3)
    return i * i

@task
def s0() -> int:
    return _work(0)

@task
def s1() -> int:
    return _work(1)

@task
def s2() -> int:
    return _work(2)

@task(deps=[s0, s1, s2])
def mine(s0: int, s1: int, s2: int, who: str = "nobody") -> str:
    return f"{who}: {s0 + s1 + s2}"
"""


@pytest.fixture
def two_projects(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    shared = tmp_path / "shared-cache"
    roots = []
    for who in ("p", "q"):
        root = tmp_path / f"team-{who}" / "proj"
        root.mkdir(parents=True)
        (root / "tasks.py").write_text(SLOW_TASKS)
        (root / "pyproject.toml").write_text(f'[tool.taskrun.options]\nwho = "{who}"\n')
        roots.append(root)
    return roots[0], roots[1], shared


def test_two_concurrent_writers_share_one_cache_dir(two_projects: tuple[Path, Path, Path]) -> None:
    """Two projects writing one TASKRUN_CACHE_DIR at once: each shared task computed once."""
    p, q, shared = two_projects
    env = base_env(TASKRUN_CACHE_DIR=str(shared))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "taskrun", "run", "--json", "-j", "3"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for root in (p, q)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    events = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    ran = [e["task"] for e in events if e["event"] == "ran"]
    assert sorted(ran) == ["mine", "mine", "s0", "s1", "s2"]  # each shared one exactly once
    assert sorted(entries(shared, key=None).values()) == ["mine", "mine", "s0", "s1", "s2"]
    verify = taskrun(p, "cache", "verify", env=env)
    assert "checked 5 entries" in verify.stdout and "all good" in verify.stdout
    for root in (p, q):
        assert "4 tasks: 4 cached" in taskrun(root, "run", env=env).stdout


def test_shared_cache_files_keep_the_directory_permissions(
    two_projects: tuple[Path, Path, Path],
) -> None:
    """In a group-writable shared directory, taskrun's own files stay group-readable."""
    p, _, shared = two_projects
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    taskrun(p, "run", env=base_env(TASKRUN_CACHE_DIR=str(shared)))
    assert (shared / "last-run.json").stat().st_mode & 0o060 == 0o060


def test_archive_is_a_plain_gzip_tar(job_a: JobA) -> None:
    """The export is a gzip-compressed tar holding a manifest, entries and blobs only."""
    with gzip.open(job_a.archive) as gz:
        assert gz.read(1)  # decompresses
    names = [m.name for m, _ in read_members(job_a.archive)]
    assert "manifest.json" in names
    assert {n.split("/")[0] for n in names if n != "manifest.json"} == {"entries", "blobs"}
