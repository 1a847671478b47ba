"""In-process micro-benchmarks, run by ``bench/run.py`` in a fresh interpreter each.

``python bench/inproc.py hash --reps N``
    ``taskrun.fingerprint.product_digest`` of a 512 MiB ``bytes`` product against raw
    ``xxhash.xxh3_128(data).hexdigest()`` on the same bytes, and of a list of 100,000
    small dicts against ``xxh3_128(pickle.dumps(lst, protocol=5))`` (the fastest stdlib
    serialisation of the same data; ``json.dumps(sort_keys=True)`` + xxh3 is also timed,
    for context).
``python bench/inproc.py digests --reps N``
    ``product_digest`` of a 1,000,000-row pandas DataFrame (int64, float64, float64, int32
    and bool columns; then the same frame plus a string column) and of a 100 MB float64
    NumPy array (C order, then Fortran order), each against raw ``xxh3_128`` of the bytes
    the values occupy (the numeric columns' buffers, the strings as UTF-8; the array's
    buffer). Needs pandas and NumPy.
``python bench/inproc.py files --dir D --files 10000 --reps N``
    ``taskrun.files.tree_digest`` of a 10,000-file tree: without a stat cache, cold (the
    persisted stat cache deleted first, then loaded, walked and flushed) and warm (the
    persisted stat cache loaded from disk, walked, flushed). The OS page cache is warm in
    every case: dropping it would need root and would disturb the machine's other users.

``python bench/inproc.py warm --dir D --tasks 5000 --reps N``
    The warm per-task cost in one process (issue 16): a layered graph of 5000 tasks made
    by a factory (``workloads.factory_tasks_py``), its cache filled by one untimed run;
    then, timed apart, loading the task file (``taskrun.loader.load_task_file``: executing
    it, registering every task) and a warm ``taskrun.run(registry=..., executor="inline",
    jobs=1)`` in which every task is a hit (checked). The same for a 100-task graph,
    alternately, so that per task = (T(5000) - T(100)) / 4900 leaves out what a run costs
    whatever its size (opening the cache, runtime facts). Interpreter start-up and imports
    are not in it (they happen once, before).

Each prints one JSON object ``{"case": [seconds, ...], ...}`` on stdout. The cases of one
benchmark are timed alternately, one repetition at a time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BYTES_SIZE = 512 << 20
DICTS = 100_000


def _time(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(cases: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            out[name].append(_time(cases[name]))
    return out


def bench_hash(reps: int, size: int) -> dict[str, list[float]]:
    """Product digests against raw xxh3-128 (bytes, then a list of small dicts)."""
    import xxhash

    from taskrun.fingerprint import product_digest

    rng = random.Random(8)
    data = b"".join(rng.randbytes(1 << 20) for _ in range(size >> 20))
    dicts = [{"id": i, "name": f"item-{i}", "score": i / 7, "ok": i % 3 == 0} for i in range(DICTS)]
    # One untimed call each: imports, first-touch page faults.
    product_digest(data[:1024])
    product_digest(dicts[:10])
    results = _alternate(
        {
            "bytes/taskrun": lambda: product_digest(data),
            "bytes/xxh3": lambda: xxhash.xxh3_128(data).hexdigest(),
        },
        reps,
    )
    results.update(
        _alternate(
            {
                "dicts/taskrun": lambda: product_digest(dicts),
                "dicts/pickle+xxh3": lambda: xxhash.xxh3_128(
                    pickle.dumps(dicts, protocol=5)
                ).hexdigest(),
                "dicts/json+xxh3": lambda: xxhash.xxh3_128(
                    json.dumps(dicts, sort_keys=True).encode()
                ).hexdigest(),
            },
            reps,
        )
    )
    return results


FRAME_ROWS = 1_000_000
ARRAY_BYTES = 100_000_000


def bench_digests(reps: int) -> dict[str, list[float]]:
    """Canonical digests of a DataFrame and a NumPy array against raw xxh3 of their bytes."""
    import numpy as np
    import pandas as pd
    import xxhash

    from taskrun.fingerprint import product_digest

    rng = np.random.default_rng(11)
    n = FRAME_ROWS
    frame = pd.DataFrame(
        {
            "id": np.arange(n, dtype="int64"),
            "x": rng.random(n),
            "y": rng.random(n),
            "bucket": rng.integers(0, 1000, n, dtype="int32"),
            "ok": rng.random(n) < 0.5,
        }
    )
    names = np.array([f"name-{i % 5000}" for i in range(n)], dtype=object)
    with_text = frame.assign(name=pd.Series(names, dtype=object))
    numeric_columns = [np.ascontiguousarray(frame[c].to_numpy()) for c in frame.columns]
    index_values = np.ascontiguousarray(frame.index.to_numpy())

    def raw_frame() -> str:
        h = xxhash.xxh3_128()
        h.update(memoryview(index_values))
        for col in numeric_columns:
            h.update(memoryview(col))
        return h.hexdigest()

    def raw_text_frame() -> str:
        h = xxhash.xxh3_128()
        h.update(memoryview(index_values))
        for col in numeric_columns:
            h.update(memoryview(col))
        for text in names:
            h.update(text.encode())
        return h.hexdigest()

    array = rng.random(ARRAY_BYTES // 8)
    fortran = np.asfortranarray(array.reshape(-1, 1000))
    # One untimed call each: imports, first-touch page faults; and the layout claim.
    if product_digest(fortran) != product_digest(np.ascontiguousarray(fortran)):
        raise SystemExit("layout changed a NumPy digest")
    product_digest(frame.head())
    product_digest(with_text.head())
    results = _alternate(
        {
            "frame/taskrun": lambda: product_digest(frame),
            "frame/xxh3": raw_frame,
            "frame+text/taskrun": lambda: product_digest(with_text),
            "frame+text/xxh3": raw_text_frame,
        },
        reps,
    )
    results.update(
        _alternate(
            {
                "array/taskrun": lambda: product_digest(array),
                "array/xxh3": lambda: xxhash.xxh3_128(memoryview(array)).hexdigest(),
                "array-fortran/taskrun": lambda: product_digest(fortran),
                "array-fortran/xxh3": lambda: xxhash.xxh3_128(
                    memoryview(fortran.T)  # the same buffer, C-contiguous as its transpose
                ).hexdigest(),
            },
            reps,
        )
    )
    return results


def bench_files(directory: Path, files: int, reps: int) -> dict[str, list[float]]:
    """tree_digest of a FILES-file tree: no stat cache, cold stat cache, warm stat cache."""
    from taskrun.files import StatCache, tree_digest

    sys.path.insert(0, str(Path(__file__).parent))
    from workloads import make_tree

    tree = directory / "tree"
    if not tree.exists():
        make_tree(tree, files)
    # The stat cache refuses entries whose time stamps are too recent to trust (racy
    # mtime, 0.1 s on fine-grained file systems, 2 s on coarse ones): let them settle.
    time.sleep(2.2)
    cache_path = directory / "stat-cache"

    def cold() -> str:
        cache_path.unlink(missing_ok=True)
        with StatCache(cache_path) as sc:
            return tree_digest(tree, stat_cache=sc)

    def warm() -> str:
        with StatCache(cache_path) as sc:
            return tree_digest(tree, stat_cache=sc)

    expected = tree_digest(tree)
    cold()
    with StatCache(cache_path) as sc:
        entries = len(sc)
    if warm() != expected or entries != files:
        raise SystemExit(f"stat cache check failed: {entries} entries for {files} files")
    return _alternate(
        {"tree/no-stat-cache": lambda: tree_digest(tree), "tree/cold": cold, "tree/warm": warm},
        reps,
    )


WARM_SMALL = 100  # the fixed-cost baseline of bench_warm


def bench_warm(directory: Path, tasks: int, reps: int) -> dict[str, list[float]]:
    """Load + warm run of TASKS factory-made cached tasks, against a 100-task baseline."""
    import taskrun
    from taskrun.loader import load_task_file

    sys.path.insert(0, str(Path(__file__).parent))
    from workloads import factory_tasks_py, make_graph, write

    paths: dict[int, Path] = {}
    for n in (tasks, WARM_SMALL):
        d = directory / f"warm-{n}"
        write(d, [("tasks.py", factory_tasks_py(make_graph("layered", n)))])
        paths[n] = d / "tasks.py"
        taskrun.run(registry=load_task_file(paths[n]), executor="inline", jobs=1)  # cold

    def once(n: int, out: dict[str, list[float]]) -> None:
        gc.collect()
        t0 = time.perf_counter()
        registry = load_task_file(paths[n])
        t1 = time.perf_counter()
        result = taskrun.run(registry=registry, executor="inline", jobs=1)
        t2 = time.perf_counter()
        states = {t.state for t in result.tasks.values()}
        if len(result.tasks) != n or states != {"cached"}:
            raise SystemExit(f"warm run of {n} tasks was not all cached: {sorted(states)}")
        out.setdefault(f"warm-{n}/load", []).append(t1 - t0)
        out.setdefault(f"warm-{n}/run", []).append(t2 - t1)

    out: dict[str, list[float]] = {}
    once(tasks, {})  # untimed: byte-code of the task files, the source memo, first touches
    once(WARM_SMALL, {})
    for rep in range(reps):
        for n in (tasks, WARM_SMALL) if rep % 2 == 0 else (WARM_SMALL, tasks):
            once(n, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    h = sub.add_parser("hash")
    h.add_argument("--reps", type=int, default=5)
    h.add_argument("--size", type=int, default=BYTES_SIZE)
    d = sub.add_parser("digests")
    d.add_argument("--reps", type=int, default=5)
    f = sub.add_parser("files")
    f.add_argument("--dir", type=Path, required=True)
    f.add_argument("--files", type=int, default=10_000)
    f.add_argument("--reps", type=int, default=5)
    w = sub.add_parser("warm")
    w.add_argument("--dir", type=Path, required=True)
    w.add_argument("--tasks", type=int, default=5000)
    w.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.what == "warm":
        out = bench_warm(args.dir, args.tasks, args.reps)
    elif args.what == "hash":
        out = bench_hash(args.reps, args.size)
    elif args.what == "digests":
        out = bench_digests(args.reps)
    else:
        os.makedirs(args.dir, exist_ok=True)
        out = bench_files(args.dir, args.files, args.reps)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
