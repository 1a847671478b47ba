"""A warm run from an empty local cache: the remote cache (S3 on loopback) against an archive.

Usage (from the repository root, with ``pip install -e '.[test]'`` for moto and s3fs)::

    python bench/remote.py                       # layered-1000, 3 repetitions
    python bench/remote.py --shape independent --tasks 1000 --reps 5

One machine (a project copy) runs the workload cold with ``--remote-cache s3://...``,
filling a bucket on a moto S3 server started on 127.0.0.1, and exports its cache to an
archive. Then, alternately, fresh copies of the project at other paths with empty local
caches do the same warm run two ways:

* ``remote``: ``taskrun run --remote-cache s3://...`` (lookups batched per ready wave,
  8 threads, verified, adopted into the local cache);
* ``import``: ``taskrun cache import ARCHIVE`` then ``taskrun run`` (what docs/ci.md
  recommends: the CI system moves the archive; its download time is not counted here).

Both must report every task cached. Printed: medians of the wall time (subprocess, from
start to exit) and the ratio, the requests and bytes the remote run made (from
``taskrun cache info --json``), and the archive's size. Loopback has no latency: a real
bucket adds the round trips (about requests / 8 threads x RTT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

KEY = "bench-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def aws_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TASKRUN_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "NO_PROXY": "127.0.0.1,localhost",
            "TASKRUN_CACHE_KEY": KEY,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def taskrun(cwd: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "taskrun", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"taskrun {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return took, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shape", default="layered", choices=wl.SHAPES)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="taskrun-bench-remote-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = aws_env(endpoint)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None:
                raise SystemExit("moto server did not start")
            time.sleep(0.05)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="bench")
        url = "s3://bench/taskrun"
        source = work / "source"
        source.mkdir()
        (source / "tasks.py").write_text(wl.tasks_py(wl.make_graph(args.shape, args.tasks)))
        first = work / "machine-0" / "proj"
        shutil.copytree(source, first)
        cold, out = taskrun(first, env, "run", "-q", "--remote-cache", url)
        archive = work / "cache.tar.gz"
        taskrun(first, env, "cache", "export", str(archive))
        _, info = taskrun(first, env, "cache", "info", "--json")
        up = json.loads(info)["remote_last_run"]
        cold_local = work / "machine-local" / "proj"
        shutil.copytree(source, cold_local)
        local_cold, _ = taskrun(cold_local, env, "run", "-q")
        expected = f"{args.tasks} tasks: {args.tasks} cached, 0 ran"
        times: dict[str, list[float]] = {"remote": [], "import": []}
        stats: list[dict[str, object]] = []
        for rep in range(args.reps):
            order = ("remote", "import") if rep % 2 == 0 else ("import", "remote")
            for how in order:
                root = work / f"{how}-{rep}" / "deeper" / "proj"
                shutil.copytree(source, root)
                if how == "remote":
                    took, out = taskrun(root, env, "run", "-q", "--remote-cache", url)
                    _, info = taskrun(root, env, "cache", "info", "--json")
                    stats.append(json.loads(info)["remote_last_run"])
                else:
                    took_import, _ = taskrun(root, env, "cache", "import", str(archive))
                    took_run, out = taskrun(root, env, "run", "-q")
                    took = took_import + took_run
                if expected not in out:
                    raise SystemExit(f"{how}: not every task was cached:\n{out}")
                times[how].append(took)
        remote, imported = statistics.median(times["remote"]), statistics.median(times["import"])
        last = stats[-1]
        print(f"## remote cache: {args.shape}-{args.tasks}, warm run from an empty local cache")
        print()
        print(f"median of {args.reps}, moto S3 server on 127.0.0.1, {os.cpu_count()} CPUs")
        print()
        print("| how | wall time (s) | ratio | requests | bytes down |")
        print("|---|---|---|---|---|")
        print(
            f"| `run --remote-cache` | {remote:.2f} | {remote / imported:.2f} |"
            f" {last['requests']} | {last['bytes_down']:,} |"
        )
        print(
            f"| `cache import` + `run` | {imported:.2f} | 1.00 | - |"
            f" {archive.stat().st_size:,} (archive) |"
        )
        print()
        print(
            f"cold run with upload: {cold:.2f}s ({up['requests']} requests,"
            f" {up['bytes_up']:,} bytes up, {up['upload_seconds']:.2f}s uploading in the"
            f" background, {up['finish_seconds']:.2f}s waiting for uploads at the end);"
            f" the same cold run without a remote: {local_cold:.2f}s"
        )
        print(
            f"remote lookups: {last['looked_up']} local misses, {last['hits']} hits,"
            f" {last['fetch_seconds']:.2f}s waiting for the remote;"
            f" samples remote={[round(t, 2) for t in times['remote']]}"
            f" import={[round(t, 2) for t in times['import']]}"
        )
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
