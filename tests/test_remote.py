"""The shared remote cache (taskrun.remote) on file://, memory:// and a real S3 server.

The S3 server is moto in server mode, started by these tests as a subprocess on
127.0.0.1 with dummy credentials; nothing leaves the machine (no metadata service, no
shared AWS config, the endpoint is loopback). "Two machines" are two copies of one project
at different paths, each with its own local cache, sharing one store.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskrun.cache import Cache, EntryMeta
from taskrun.cache_format import KIND_ENTRY, blob_digest, seal
from taskrun.cache_values import meta_json
from taskrun.errors import ConfigError
from taskrun.remote import FsspecStore, LocalStore, RemoteCache, Store

pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

KEY = "shared-secret-of-the-team"
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
NAMES = ("words", "total", "pages", "report")
OUTPUTS = ("build/pages/a.txt", "build/pages/b.txt", "build/report.txt")


# --------------------------------------------------------------------------- the S3 server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on a free loopback port, as a real process."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=aws_env(self.endpoint),
        )
        deadline = time.monotonic() + 60
        while not self._accepting():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.05)  # polling for the port to open, not a timed assertion

    def _accepting(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def bucket(self) -> str:
        import boto3

        name = f"taskrun-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        return name

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def aws_env(endpoint: str) -> dict[str, str]:
    """Dummy credentials, loopback endpoint, nothing read from ~/.aws, no metadata service."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TASKRUN_"))},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "NO_PROXY": "127.0.0.1,localhost",
    }


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["file", "memory", "s3"])
def remote_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty shared store of each kind."""
    if request.param == "file":
        yield f"file://{tmp_path / 'shared-store'}"
    elif request.param == "memory":
        import fsspec

        url = f"memory://taskrun-{uuid.uuid4().hex}"
        yield url
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)
    else:
        server = request.getfixturevalue("moto_server")
        for name, value in aws_env(server.endpoint).items():
            if name.startswith("AWS_") or name == "NO_PROXY":
                monkeypatch.setenv(name, value)
        yield f"s3://{server.bucket()}/team/cache"


# --------------------------------------------------------------------------- one store suite


def _entry(fp: str, product: bytes, key: bytes) -> bytes:
    meta = EntryMeta(fp, "t", {}, blob_digest(product), 0.1, time.time(), (), len(product))
    return seal(KIND_ENTRY, fp, meta_json(meta), product, key)


@pytest.fixture(params=["local", "file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each level behind the one Store interface."""
    if request.param == "local":
        with Cache(tmp_path / "cache", key=KEY.encode()) as cache:
            yield LocalStore(cache)
        return
    if request.param == "file":
        yield FsspecStore(f"file://{tmp_path / 'store'}")
    elif request.param == "memory":
        yield FsspecStore(f"memory://taskrun-{uuid.uuid4().hex}")
    else:
        server = request.getfixturevalue("moto_server")
        mp = request.getfixturevalue("monkeypatch")
        for name, value in aws_env(server.endpoint).items():
            if name.startswith("AWS_"):
                mp.setenv(name, value)
        yield FsspecStore(f"s3://{server.bucket()}/suite")


FP = "0123456789abcdef0123456789abcdef"


def test_store_get_of_a_missing_key_is_none(store: Store) -> None:
    """A key never written reads as None and is not there."""
    assert store.get(f"entries/{FP}") is None
    assert not store.has(f"entries/{FP}")


def test_store_put_then_get_returns_the_bytes(store: Store) -> None:
    """What was put is what is got, and the key is listed with its size."""
    data = _entry(FP, b"product", KEY.encode())
    assert store.put(f"entries/{FP}", data) is True
    assert store.get(f"entries/{FP}") == data
    assert store.has(f"entries/{FP}")
    listed = {o.key: o.size for o in store.list("entries/")}
    assert listed == {f"entries/{FP}": len(data)}


def test_store_never_replaces_a_value(store: Store) -> None:
    """Written once: a second put under the same key keeps the first value."""
    first, second = _entry(FP, b"first", KEY.encode()), _entry(FP, b"second", KEY.encode())
    assert store.put(f"entries/{FP}", first) is True
    assert store.put(f"entries/{FP}", second) is False
    assert store.get(f"entries/{FP}") == first


def test_an_s3fs_that_cannot_create_exclusively_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s3fs before 2024.12 overwrites on pipe_file(mode="create"): an S3 remote needs a
    newer one, said with the fix (the write-once test above fails on 2024.6)."""
    import s3fs

    monkeypatch.setattr(s3fs, "__version__", "2024.10.0")
    with pytest.raises(ConfigError, match=r"needs s3fs >= 2024\.12.*2024\.10\.0.*pip install"):
        FsspecStore("s3://some-bucket/prefix")
    monkeypatch.setattr(s3fs, "__version__", "2024.12.0")
    assert FsspecStore("s3://some-bucket/prefix").protocol == "s3"


def test_concurrent_writers_of_one_key_leave_one_valid_object(store: Store) -> None:
    """Eight threads put different valid entries under one key: exactly one wins, whole."""
    values = [_entry(FP, f"product {n}".encode(), KEY.encode()) for n in range(8)]
    barrier = threading.Barrier(len(values))
    won: list[bool] = [False] * len(values)

    def write(n: int) -> None:
        barrier.wait()
        won[n] = store.put(f"entries/{FP}", values[n])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    assert store.get(f"entries/{FP}") == values[won.index(True)]


def test_store_blobs_are_content_addressed(store: Store) -> None:
    """A blob is stored under its digest; putting it again writes nothing."""
    from taskrun.cache_format import KIND_BLOB

    digest = blob_digest(b"output bytes")
    envelope = seal(KIND_BLOB, digest, b"", b"output bytes", KEY.encode())
    assert store.put(f"blobs/{digest}", envelope) is True
    assert store.put(f"blobs/{digest}", envelope) is False
    assert [o.key for o in store.list("blobs/")] == [f"blobs/{digest}"]


# --------------------------------------------------------------------------- two machines


def make_copy(where: Path) -> Path:
    """A checkout of the project at ``where``: tasks and inputs, no cache, no build."""
    (where / "data").mkdir(parents=True)
    (where / "tasks.py").write_text(textwrap.dedent(TASKS))
    (where / "data" / "a.txt").write_text("one two three\n")
    (where / "data" / "b.txt").write_text("four five\n")
    return where


def run(run_cli, root: Path, *args: str, key: str | None = KEY, ok: bool = True):  # type: ignore[no-untyped-def]
    env = {"TASKRUN_CACHE_KEY": key, "TASKRUN_REMOTE_CACHE": None, "TASKRUN_REMOTE_MODE": None}
    result = run_cli(root, "run", "-v", *args, env=env)  # -v: every cache hit by name
    if ok:
        assert result.exit_code == 0, result.output
    return result


def states(output: str) -> dict[str, str]:
    return {
        line.split()[1].rstrip(","): line.split()[0]
        for line in output.splitlines()
        if line.split()[:1] in (["cached"], ["ran"])
    }


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning")]


@pytest.fixture
def machines(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of the project at different paths (each gets its own local cache)."""
    return make_copy(tmp_path / "laptop" / "proj"), make_copy(tmp_path / "ci" / "w" / "x" / "p")


def test_second_machine_gets_every_hit_with_outputs_restored(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """Done-when: the second copy runs nothing, every task hits, every output is restored."""
    first, second = machines
    a = run(run_cli, first, "--remote-cache", remote_url)
    assert set(states(a.output).values()) == {"ran"}
    assert "4 uploaded" in a.output
    b = run(run_cli, second, "--remote-cache", remote_url)
    assert states(b.output) == dict.fromkeys(NAMES, "cached"), b.output
    assert "4 hit(s)" in b.output and not warnings_in(b.output)
    for rel in OUTPUTS:
        assert (second / rel).read_bytes() == (first / rel).read_bytes(), rel


def test_upload_lines_agree_with_each_other(tmp_path: Path) -> None:
    """A real run: what is left to upload at the end never exceeds what the summary says
    was uploaded, and one entry is "1 entry"."""
    root = make_copy(tmp_path / "p")
    env = {**os.environ, "TASKRUN_CACHE_KEY": KEY, "CI": ""}
    done = subprocess.run(
        [sys.executable, "-m", "taskrun", "run", "--remote-cache", f"file://{tmp_path / 's'}"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "remote   uploading" not in done.stdout and " 1 entries" not in done.stdout
    assert ": 0 hit(s), 4 uploaded," in done.stdout
    for left in re.findall(r"finishing uploads to \S+: (\d+) (entry|entries) left", done.stdout):
        assert 1 <= int(left[0]) <= 4
        assert left[1] == ("entry" if left[0] == "1" else "entries")


def test_cache_info_shows_the_remote_hits_and_bytes(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """`cache info` reports the last run's remote hits, bytes down and requests."""
    first, second = machines
    run(run_cli, first, "--remote-cache", remote_url)
    run(run_cli, second, "--remote-cache", remote_url)
    info = run_cli(second, "cache", "info", "--json", env={"TASKRUN_CACHE_KEY": KEY})
    import json

    remote = json.loads(info.output)["remote_last_run"]
    assert remote["url"] == remote_url
    assert remote["hits"] == 4 and remote["uploaded"] == 0 and remote["bytes_down"] > 0
    text = run_cli(second, "cache", "info", env={"TASKRUN_CACHE_KEY": KEY}).output
    assert f"remote     {remote_url} (mode rw)" in text
    assert "4 hits of 4 local misses" in text


def test_read_mode_fetches_but_never_writes(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """--remote-mode read (pull requests) hits what is there and uploads nothing."""
    import fsspec

    first, second = machines
    (second / "data" / "b.txt").write_text("changed in the pull request\n")
    run(run_cli, first, "--remote-cache", remote_url)
    fs, root = fsspec.core.url_to_fs(remote_url)
    before = sorted(fs.find(root))
    b = run(run_cli, second, "--remote-cache", remote_url, "--remote-mode", "read")
    assert set(states(b.output).values()) == {"ran"}  # every task reads data/*.txt
    assert sorted(fs.find(root)) == before


def test_an_unsigned_remote_is_refused_with_the_fix(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """Without TASKRUN_CACHE_KEY a remote is refused before anything runs, saying what to set."""
    first, _ = machines
    result = run(run_cli, first, "--remote-cache", remote_url, key=None, ok=False)
    assert result.exit_code != 0
    assert "TASKRUN_CACHE_KEY is not set" in result.output
    assert "--remote-mode off" in result.output
    assert not (first / "build").exists()


def test_a_foreign_key_store_is_refused_and_the_run_goes_on(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """Entries signed with another key are never trusted: every task runs, one warning."""
    first, second = machines
    run(run_cli, first, "--remote-cache", remote_url, key="somebody-elses-key")
    b = run(run_cli, second, "--remote-cache", remote_url)
    assert states(b.output) == dict.fromkeys(NAMES, "ran")
    found = warnings_in(b.output)
    assert len(found) == 1 and "refused" in found[0], b.output


def test_a_tampered_object_is_refused(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """One entry's bytes changed in the store: that task reruns; the others still hit."""
    import fsspec

    first, second = machines
    run(run_cli, first, "--remote-cache", remote_url)
    with Cache(first / ".taskrun" / "cache", mode="read", key=KEY.encode()) as cache:
        fp = next(m.fingerprint for m in cache.entries() if m.task == "total")
    fs, root = fsspec.core.url_to_fs(remote_url)
    path = f"{root}/entries/{fp}"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0x01  # the pickled product: an attacker's edit
    fs.pipe_file(path, bytes(data))
    b = run(run_cli, second, "--remote-cache", remote_url)
    assert states(b.output)["total"] == "ran"
    assert states(b.output)["words"] == "cached" and states(b.output)["pages"] == "cached"
    assert [w for w in warnings_in(b.output) if fp in w and "refused" in w], b.output


def test_a_remote_gc_removes_old_entries(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """`cache gc --remote --max-age` keeps young entries and removes older ones."""
    first, second = machines
    run(run_cli, first, "--remote-cache", remote_url)
    env = {"TASKRUN_CACHE_KEY": KEY}
    kept = run_cli(
        first, "cache", "gc", "--remote", "--remote-cache", remote_url, "--max-age", "30d", env=env
    )
    assert kept.exit_code == 0 and "removed 0 entries" in kept.output and "kept 4" in kept.output
    gone = run_cli(
        first, "cache", "gc", "--remote", "--remote-cache", remote_url, "--max-age", "0", env=env
    )
    assert gone.exit_code == 0 and "removed 4 entries" in gone.output, gone.output
    b = run(run_cli, second, "--remote-cache", remote_url)
    assert set(states(b.output).values()) == {"ran"}


def test_the_remote_comes_from_the_project_settings(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """`remote-cache` in [tool.taskrun] works like --remote-cache."""
    first, second = machines
    for root in machines:
        (root / "pyproject.toml").write_text(f'[tool.taskrun]\nremote-cache = "{remote_url}"\n')
    run(run_cli, first)
    b = run(run_cli, second)
    assert states(b.output) == dict.fromkeys(NAMES, "cached")


# --------------------------------------------------------------------------- a dying server


KILLER = """
import os, signal, socket
from taskrun import task

@task
def before() -> int:
    return 1

@task(deps=[before])
def kill_the_server(before: int) -> int:
    os.kill(int(os.environ["MOTO_PID"]), signal.SIGKILL)
    port = int(os.environ["MOTO_PORT"])
    while True:  # until the port is closed: the server is gone
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
    return before + 1

@task(deps=[kill_the_server])
def after_a(kill_the_server: int) -> int:
    return kill_the_server * 10

@task(deps=[kill_the_server])
def after_b(kill_the_server: int) -> int:
    return kill_the_server * 100
"""


@pytest.mark.slow
def test_a_server_killed_mid_run_degrades_to_local_with_one_warning(tmp_path: Path) -> None:
    """The S3 server dies while the run goes on: every task runs and is stored locally."""
    server = MotoServer()
    try:
        bucket = server.bucket()
        root = tmp_path / "proj"
        root.mkdir()
        (root / "tasks.py").write_text(KILLER)
        env = {
            **aws_env(server.endpoint),
            "TASKRUN_CACHE_KEY": KEY,
            "PYTHONDONTWRITEBYTECODE": "1",
            "MOTO_PID": str(server.proc.pid),
            "MOTO_PORT": str(server.port),
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "taskrun",
                "run",
                "--executor",
                "inline",
                "--remote-cache",
                f"s3://{bucket}/c",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        server.proc.wait()  # reap it: the task killed it
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "4 tasks: 0 cached, 4 ran, 0 failed" in proc.stdout, proc.stdout
        found = warnings_in(proc.stdout)
        assert len(found) == 1 and "local cache only" in found[0], proc.stdout
        again = subprocess.run(
            [sys.executable, "-m", "taskrun", "run"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "4 tasks: 4 cached" in again.stdout, again.stdout
    finally:
        server.kill()


def test_a_store_that_fails_turns_the_remote_off_once(tmp_path: Path) -> None:
    """Errors from the store never escape: the first one turns the remote off, warned once."""

    class Broken(Store):
        url = "broken://store"

        def get(self, key: str) -> bytes | None:
            raise ConnectionError("connection reset by peer")

        put = has = get  # type: ignore[assignment]

        def list(self, prefix: str) -> Iterator[Any]:
            raise ConnectionError("connection reset by peer")

    said: list[str] = []
    with Cache(tmp_path / "cache", key=KEY.encode()) as cache:
        remote = RemoteCache(Broken(), mode="rw", key=KEY.encode(), on_warning=said.append)
        assert remote.fetch(cache, [FP]) == []
        assert remote.fetch(cache, [FP[::-1]]) == []
        stats = remote.finish()
    assert len(said) == 1 and "connection reset by peer" in said[0]
    assert stats.failure and stats.hits == 0


def test_a_remote_that_never_answers_is_given_up(tmp_path: Path) -> None:
    """A store that hangs: the lookup returns after the timeout, the remote is off, one warning."""
    release = threading.Event()

    class Hanging(Store):
        url = "hanging://store"

        def get(self, key: str) -> bytes | None:
            release.wait()
            return None

        put = has = get  # type: ignore[assignment]

        def list(self, prefix: str) -> Iterator[Any]:
            return iter(())

    said: list[str] = []
    try:
        with Cache(tmp_path / "cache", key=KEY.encode()) as cache:
            remote = RemoteCache(
                Hanging(), mode="read", key=KEY.encode(), on_warning=said.append, timeout=0.3
            )
            assert remote.fetch(cache, [FP]) == []
            assert not remote.active
            assert remote.fetch(cache, [FP[::-1]]) == []  # off: asks nothing more
            remote.finish()
    finally:
        release.set()
    assert len(said) == 1 and "no answer for 0.3s" in said[0]


def test_the_python_api_takes_a_remote(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """taskrun.run(remote_cache=...) shares results between two project roots."""
    import taskrun
    from taskrun import task

    @task
    def answer() -> int:
        return 42

    monkeypatch.setenv("TASKRUN_CACHE_KEY", KEY)
    url = f"memory://taskrun-{uuid.uuid4().hex}"
    first = taskrun.run(["answer"], registry=registry, root=tmp_path / "one", remote_cache=url)
    second = taskrun.run(["answer"], registry=registry, root=tmp_path / "two", remote_cache=url)
    assert first.tasks["answer"].state == "ran"
    assert second.tasks["answer"].state == "cached"
    assert second.products["answer"] == 42


def test_a_read_only_local_cache_says_the_remote_is_unused(
    run_cli, machines: tuple[Path, Path], remote_url: str
) -> None:
    """With --cache-mode read the remote cannot be used; a warning says so and why."""
    first, _ = machines
    result = run(run_cli, first, "--remote-cache", remote_url, "--cache-mode", "read")
    found = warnings_in(result.output)
    assert len(found) == 1 and "--cache-mode rw" in found[0]


def test_an_unknown_store_is_a_config_error(run_cli, machines: tuple[Path, Path]) -> None:
    """A URL fsspec cannot open is refused before anything runs, naming it."""
    first, _ = machines
    result = run(run_cli, first, "--remote-cache", "nosuchproto://bucket/x", ok=False)
    assert result.exit_code == 2, result.output
    assert "nosuchproto://bucket/x" in result.output
    assert not (first / "build").exists()
