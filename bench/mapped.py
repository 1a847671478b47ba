"""Benchmarks of mapped and streaming tasks (issue 13). Prints Markdown tables.

```
python bench/mapped.py                 # 10,000 items + streaming, 3 repetitions
python bench/mapped.py --items 2000 --reps 2 --stream-items 200   # quicker
```

1. **Fan-out over N items**, cold (empty cache) and warm (everything cached), each as a
   fresh ``taskrun run`` / ``doit`` process, alternating tools each repetition:

   - *taskrun mapped*: ``items() -> list(range(N))`` and ``@task(map={"item": items})``
     ``work(item)``, returning its item: N item calls, each with its own cache entry.
   - *taskrun static*: the same N no-op tasks written out one by one in the task file
     (``bench/workloads.py``'s "independent" graph), as before mapped tasks existed.
   - *doit yield*: ``task_work()`` yielding N subtasks (``{'name': i, 'actions':
     [(_noop, [i])], 'uptodate': [config_changed({'x': i})]}``), doit's own fan-out.

   All run one call at a time (``-j 1 --executor inline`` for taskrun; doit's default).
   The per-item overhead is ``(T(N) - T(0)) / N``, where ``T(0)`` is the same project with
   no item (taskrun mapped: ``-o items.n=0``; doit: ``BENCH_N=0``; static: one task).

2. **Streaming**: a generator yielding M items, each after ``--gen-ms`` of work, mapped by
   a task doing ``--work-ms`` of work per item, at ``-j 2`` (thread executor, cache off),
   against "generate all, then process": the same generator written as a function that
   returns the list, so the item calls start only when it has ended. Both in one run,
   alternating.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl

MAPPED = """
from taskrun import task

@task
def items(n: int = {n}) -> list[int]:
    return list(range(n))

@task(map={{"item": items}})
def work(item: int, x: int = 1) -> int:
    return item
"""

DODO = """
import os
from doit.tools import config_changed

N = int(os.environ.get("BENCH_N", "{n}"))


def _noop(x):
    return {{"v": x}}


def task_work():
    for i in range(N):
        yield {{
            "name": str(i), "actions": [(_noop, [i])], "uptodate": [config_changed({{"x": i}})]
        }}
    if not N:
        yield {{"name": None, "actions": None}}
"""

STREAM = """
import time
from collections.abc import Iterator
from taskrun import task

@task
def streamed(n: int = {n}, ms: float = {gen_ms}) -> Iterator[int]:
    for i in range(n):
        time.sleep(ms / 1000)
        yield i

@task
def listed(n: int = {n}, ms: float = {gen_ms}) -> list[int]:
    out = []
    for i in range(n):
        time.sleep(ms / 1000)
        out.append(i)
    return out

@task(map={{"item": streamed}})
def work_streamed(item: int, ms: float = {work_ms}) -> int:
    time.sleep(ms / 1000)
    return item

@task(map={{"item": listed}})
def work_listed(item: int, ms: float = {work_ms}) -> int:
    time.sleep(ms / 1000)
    return item
"""


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TASKRUN_", "BENCH_"))}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out.update(CI="true", NO_COLOR="1")
    return out


def timed(cmd: list[str], cwd: Path, extra: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd,
        cwd=cwd,
        env={**env(), **(extra or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{(p.stdout + p.stderr)[-3000:]}")
    return seconds


def exe(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found; pip install -e '.[bench]'")
    return found


def fan_out(n: int, reps: int, tmp: Path) -> None:
    taskrun, doit = exe("taskrun"), exe("doit")
    dirs = {name: tmp / name for name in ("mapped", "static", "doit", "static1")}
    for d in dirs.values():
        d.mkdir()
    (dirs["mapped"] / "tasks.py").write_text(MAPPED.format(n=n))
    (dirs["static"] / "tasks.py").write_text(wl.tasks_py(wl.make_graph("independent", n)))
    (dirs["static1"] / "tasks.py").write_text(wl.tasks_py(wl.make_graph("independent", 1)))
    (dirs["doit"] / "dodo.py").write_text(DODO.format(n=n))
    run = [taskrun, "run", "-q", "-j", "1", "--executor", "inline"]

    def reset(d: Path) -> None:
        shutil.rmtree(d / ".taskrun", ignore_errors=True)
        for p in d.glob(".doit.db*"):
            p.unlink()

    cases = {
        ("taskrun mapped", n): (dirs["mapped"], run, None),
        ("taskrun mapped", 0): (dirs["mapped"], [*run, "-o", "items.n=0"], None),
        ("taskrun static", n): (dirs["static"], run, None),
        ("taskrun static", 1): (dirs["static1"], run, None),
        ("doit yield", n): (dirs["doit"], [doit, "-n", "1"], None),
        ("doit yield", 0): (dirs["doit"], [doit, "-n", "1"], {"BENCH_N": "0"}),
    }
    times: dict[tuple[str, int, str], list[float]] = {}
    for d, cmd, extra in cases.values():  # prime byte-code caches, untimed
        reset(d)
        timed(cmd, d, extra)
    for rep in range(reps):
        for key, (d, cmd, extra) in cases.items():
            reset(d)
            cold = timed(cmd, d, extra)
            warm = timed(cmd, d, extra)
            times.setdefault((*key, "cold"), []).append(cold)
            times.setdefault((*key, "warm"), []).append(warm)
            print(
                f"rep {rep + 1}: {key[0]} n={key[1]}: cold {cold:.2f}s warm {warm:.2f}s",
                file=sys.stderr,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n### Fan-out over {n:,} items (median of {reps}; seconds; -j 1)\n")
    print("| | cold | warm | per item, cold | per item, warm |")
    print("|---|---:|---:|---:|---:|")
    base = {"taskrun mapped": 0, "taskrun static": 1, "doit yield": 0}
    for tool, zero in base.items():
        row = [f"{med[(tool, n, p)]:.2f}" for p in ("cold", "warm")]
        for phase in ("cold", "warm"):
            per = (med[(tool, n, phase)] - med[(tool, zero, phase)]) / (n - zero) * 1e6
            row.append(f"{per:.0f} µs")
        print(f"| {tool} | " + " | ".join(row) + " |")
    for phase in ("cold", "warm"):
        mapped = med[("taskrun mapped", n, phase)]
        print(
            f"\n{phase}: mapped/static {mapped / med[('taskrun static', n, phase)]:.2f}x,"
            f" mapped/doit {mapped / med[('doit yield', n, phase)]:.2f}x"
        )


def streaming(m: int, gen_ms: float, work_ms: float, jobs: int, reps: int, tmp: Path) -> None:
    taskrun = exe("taskrun")
    d = tmp / "stream"
    d.mkdir()
    (d / "tasks.py").write_text(STREAM.format(n=m, gen_ms=gen_ms, work_ms=work_ms))
    times: dict[str, list[float]] = {}
    for rep in range(reps):
        pairs = (("streaming", "work_streamed"), ("generate, then process", "work_listed"))
        for name, target in pairs:
            cmd = [taskrun, "run", "-q", "-j", str(jobs), "--cache-mode", "off", target]
            t = timed(cmd, d)
            times.setdefault(name, []).append(t)
            print(f"rep {rep + 1}: {name}: {t:.2f}s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n### Streaming: {m:,} items, generator {gen_ms:g} ms and work {work_ms:g} ms"
        f" per item, -j {jobs} (median of {reps}; seconds)\n"
    )
    print("| | seconds |")
    print("|---|---:|")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} |")
    ratio = med["streaming"] / med["generate, then process"]
    print(f"\nstreaming / generate-then-process: {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stream-items", type=int, default=1000)
    ap.add_argument("--gen-ms", type=float, default=10.0)
    ap.add_argument("--work-ms", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", choices=["fan-out", "streaming"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-mapped-") as tmp:
        if args.only in (None, "fan-out"):
            fan_out(args.items, args.reps, Path(tmp))
        if args.only in (None, "streaming"):
            streaming(args.stream_items, args.gen_ms, args.work_ms, args.jobs, args.reps, Path(tmp))


if __name__ == "__main__":
    main()
