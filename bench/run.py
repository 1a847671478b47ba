"""taskrun's benchmark suite: taskrun against doit, Snakemake and the machine's limits.

Usage (from the repository root, with ``pip install -e '.[bench]'`` done once)::

    python bench/run.py                 # the full suite (about 10 minutes on 2 cores)
    python bench/run.py --quick         # fewer, smaller workloads, 2 repetitions
    python bench/run.py --only 'noop/layered-5000*' --reps 7
    python bench/run.py --json results.json
    python bench/run.py --profile noop/layered-5000/warm   # pyinstrument report
    python bench/run.py --only 'gen/*,inproc/*,sched/*'    # issue 16's table only

Nothing is installed: the suite runs the ``taskrun``, ``doit`` and ``snakemake`` found next
to this interpreter (or on PATH), as real subprocesses timed with ``time.perf_counter``
around ``subprocess.run``. Workloads are generated in a temporary directory. Tools are run
alternately (A B A B ..., the order reversed every repetition) in the same session, and
the table shows medians and **ratios**: the machines are shared and noisy, absolute times
are context only. Every run's output is checked (how many tasks ran / were up to date), so
a tool that silently did nothing cannot win.

Workload names, for ``--only`` (a glob; several may be given, comma-separated)::

    noop/<independent|chain|layered>-<100|1000|5000>   phases: cold, warm, changed
    gen/layered-<1000|5000|20000>                       idiomatic forms: taskrun factory
                                                        vs doit generator (issue 16)
    inproc/warm-5000                                    warm µs/task in one process
    sched/skewed-j2                                     makespan: critical path vs FIFO
    cpu/<inline|thread|process>                         -j 1 against -j 2
    hash/product                                        512 MiB bytes; 100,000 dicts
    hash/digests                                        1M-row DataFrame; 100 MB array
    files/tree-10k                                      cold and warm stat cache
    startup/list-10                                     taskrun list, doit list, python
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402

TIMEOUT = 900.0  # a single subprocess; generous (Snakemake spawning per job takes minutes)


class BenchError(Exception):
    """A tool failed or did something other than what the workload expects."""


# --------------------------------------------------------------------------- tools


def _exe(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return shutil.which(name)


@dataclass
class Run:
    """One timed subprocess."""

    seconds: float
    stdout: str
    stderr: str


def timed(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run CMD in CWD and time it; BenchError on a non-zero exit."""
    full_env = _base_env()
    if env:
        full_env.update(env)
    t0 = time.perf_counter()
    p = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-25:])
        raise BenchError(f"{' '.join(cmd)} (in {cwd}) exited {p.returncode}:\n{tail}")
    return Run(seconds, p.stdout, p.stderr)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKRUN_", "BENCH_"))}
    env.pop("PYTHONHASHSEED", None)
    # A user's Python caches byte-code; this sandbox sets PYTHONDONTWRITEBYTECODE, which
    # would make every run recompile the tools' modules and the generated task files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # ... and PYTHONUNBUFFERED, which makes every line of every tool's output a system call
    # (a user's Python buffers a pipe).
    env.pop("PYTHONUNBUFFERED", None)
    env["NO_COLOR"] = "1"
    return env


class Tool:
    """One contestant on the no-op graphs: how to reset, run a phase, and count its work."""

    name = ""

    def __init__(self, exe: str, directory: Path, graph: wl.Graph) -> None:
        self.exe = exe
        self.dir = directory
        self.graph = graph

    def write(self) -> None:
        raise NotImplementedError

    def prime(self) -> None:
        """An untimed load of the task file, so byte-code caches are in their steady state."""

    def reset(self) -> None:
        raise NotImplementedError

    def run(self, phase: str) -> Run:
        raise NotImplementedError

    def counts(self, run: Run) -> tuple[int, int]:
        """(tasks that ran, tasks that were up to date) according to the tool's output."""
        raise NotImplementedError

    def expected(self, phase: str) -> tuple[int, int]:
        n = len(self.graph.names)
        return {"cold": (n, 0), "warm": (0, n), "changed": (1, n - 1)}[phase]


class Taskrun(Tool):
    name = "taskrun"
    flags: tuple[str, ...] = ("-j", "1", "--executor", "inline")

    def write(self) -> None:
        wl.write(self.dir, [("tasks.py", wl.tasks_py(self.graph))])

    def prime(self) -> None:
        timed([self.exe, "list"], self.dir)

    def reset(self) -> None:
        shutil.rmtree(self.dir / ".taskrun", ignore_errors=True)

    def command(self, phase: str) -> list[str]:
        cmd = [self.exe, "run", *self.flags]
        if phase == "changed":
            cmd += ["-o", f"{self.graph.leaf}.x=2"]
        return cmd

    def run(self, phase: str) -> Run:
        return timed(self.command(phase), self.dir)

    def counts(self, run: Run) -> tuple[int, int]:
        # The closing summary ("5000 tasks: 4999 cached, 1 ran, 0 failed in ..."): plain
        # output lists each ran task but summarises cached ones.
        m = _SUMMARY.search(run.stdout)
        if m is None:
            raise BenchError(f"no summary line in taskrun's output:\n{run.stdout[-2000:]}")
        return int(m.group("ran")), int(m.group("cached"))


_SUMMARY = re.compile(r"^\d+ tasks?: (?P<cached>\d+) cached, (?P<ran>\d+) ran, ", re.M)


class TaskrunFactory(Taskrun):
    """taskrun on a tasks.py whose tasks come from a factory in a loop (issue 16)."""

    def write(self) -> None:
        wl.write(self.dir, [("tasks.py", wl.factory_tasks_py(self.graph))])


class Doit(Tool):
    name = "doit"

    def write(self) -> None:
        wl.write(self.dir, [("dodo.py", wl.dodo_py(self.graph))])

    def prime(self) -> None:
        timed([self.exe, "list"], self.dir)

    def reset(self) -> None:
        for p in self.dir.glob(".doit.db*"):
            p.unlink()

    def run(self, phase: str) -> Run:
        env = {"BENCH_OPTIONS": f"{self.graph.leaf}=2"} if phase == "changed" else None
        return timed([self.exe], self.dir, env)

    def counts(self, run: Run) -> tuple[int, int]:
        lines = run.stdout.splitlines()
        return (
            sum(line.startswith(". ") for line in lines),
            sum(line.startswith("-- ") for line in lines),
        )


class DoitGenerator(Doit):
    """doit on its idiomatic generator form: one ``task_t`` yielding every node (issue 16)."""

    def write(self) -> None:
        wl.write(self.dir, [("dodo.py", wl.gen_dodo_py(self.graph))])


class Snakemake(Tool):
    name = "snakemake"
    # --force-use-threads: without it Snakemake 9 runs each `run:` job in a fresh
    # Snakemake subprocess (about 2.4 s per job here: 100 no-op jobs took 239 s).
    flags = ("--cores", "1", "--force-use-threads")
    _rule = re.compile(r"^(?:local)?rule t\d+:", re.M)

    def write(self) -> None:
        wl.write(self.dir, [("Snakefile", wl.snakefile(self.graph))])

    def reset(self) -> None:
        shutil.rmtree(self.dir / "out", ignore_errors=True)
        shutil.rmtree(self.dir / ".snakemake", ignore_errors=True)

    def run(self, phase: str) -> Run:
        cmd = [self.exe, *self.flags]
        if phase == "changed":
            cmd += ["--config", f"{self.graph.leaf}=2"]
        return timed(cmd, self.dir)

    def counts(self, run: Run) -> tuple[int, int]:
        ran = len(self._rule.findall(run.stdout + run.stderr))
        return ran, len(self.graph.names) - ran  # Snakemake does not list what it skipped


# --------------------------------------------------------------------------- results


@dataclass
class Results:
    """Samples by (workload, case, tool), and the checks that failed."""

    samples: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, workload: str, case: str, tool: str, seconds: float) -> None:
        self.samples.setdefault((workload, case, tool), []).append(seconds)

    def median(self, workload: str, case: str, tool: str) -> float | None:
        s = self.samples.get((workload, case, tool))
        return statistics.median(s) if s else None

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": [
                {"workload": w, "case": c, "tool": t, "seconds": s, "median": statistics.median(s)}
                for (w, c, t), s in self.samples.items()
            ],
            "problems": self.problems,
        }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Bench:
    """A named workload and the function that measures it."""

    name: str
    fn: Callable[[Path, int, Results], None]


def _exes() -> dict[str, str | None]:
    return {name: _exe(name) for name in ("taskrun", "doit", "snakemake")}


def noop_bench(
    shape: str,
    n: int,
    *,
    snakemake: bool,
    prefix: str = "noop",
    contestants: Sequence[type[Tool]] = (Taskrun, Doit),
) -> Bench:
    name = f"{prefix}/{shape}-{n}"

    def measure(tmp: Path, reps: int, results: Results) -> None:
        graph = wl.make_graph(shape, n)
        exes = _exes()
        tools: list[Tool] = []
        classes: list[type[Tool]] = [*contestants] + ([Snakemake] if snakemake else [])
        for cls in classes:
            exe = exes[cls.name]
            if exe is None:
                results.problems.append(f"{name}: {cls.name} not installed; skipped")
                continue
            contestant = cls(exe, tmp / name.replace("/", "_") / cls.name, graph)
            contestant.write()
            tools.append(contestant)
        failed: set[str] = set()
        for tool in tools:
            try:
                tool.prime()
            except BenchError as exc:
                failed.add(tool.name)
                results.problems.append(f"{name}: {tool.name} failed: {exc}")
        for rep in range(reps):
            order = [t for t in (tools if rep % 2 == 0 else tools[::-1]) if t.name not in failed]
            for tool in order:
                tool.reset()
            for phase in ("cold", "warm", "changed"):
                for tool in order:
                    if tool.name in failed:
                        continue
                    try:
                        run = tool.run(phase)
                    except (BenchError, subprocess.TimeoutExpired) as exc:
                        failed.add(tool.name)
                        results.problems.append(f"{name} {phase}: {tool.name} failed: {exc}")
                        continue
                    got, want = tool.counts(run), tool.expected(phase)
                    if got != want:
                        results.problems.append(
                            f"{name} {phase} rep {rep}: {tool.name} ran/up-to-date {got}, "
                            f"expected {want}"
                        )
                    results.add(name, phase, tool.name, run.seconds)
                    log(f"  {name:<22} {phase:<8} {tool.name:<10} {run.seconds:8.3f} s")

    return Bench(name, measure)


def _calibrate_loops(target_s: float = 1.0) -> int:
    """Loop count for which workloads.spin takes about TARGET_S in this interpreter.

    The fastest of three timings: on a shared machine a slow one measures the neighbours.
    """
    n = 1_000_000
    best = min(_time_spin(n) for _ in range(3))
    return int(n * target_s / best)


def _time_spin(n: int) -> float:
    t0 = time.perf_counter()
    wl.spin(n, 1)
    return time.perf_counter() - t0


_RAN = re.compile(r"^ran +burn_\w+ \((\d+(?:\.\d+)?)s\)", re.M)


def cpu_bench(executor: str) -> Bench:
    name = f"cpu/{executor}"

    def measure(tmp: Path, reps: int, results: Results) -> None:
        exe = _exes()["taskrun"]
        if exe is None:
            results.problems.append(f"{name}: taskrun not installed; skipped")
            return
        d = tmp / "cpu"
        if not (d / "tasks.py").exists():
            loops = _calibrate_loops()
            wl.write(d, [("tasks.py", wl.cpu_tasks_py(loops)), ("spin.py", wl.spin_py(loops))])
            timed([exe, "list"], d)
        for rep in range(reps):
            # The machine's own limit, measured beside taskrun: the same two loops in one
            # bare Python process, then in two at once. On a shared machine the neighbours'
            # load shows here too, and the speed-up taskrun can reach is this one.
            _machine_control(d, rep, results)
            for jobs in ("1", "2") if rep % 2 == 0 else ("2", "1"):
                cmd = [exe, "run", "--force-all", "--executor", executor, "-j", jobs]
                try:
                    run = timed(cmd, d)
                except BenchError as exc:
                    results.problems.append(f"{name} -j {jobs}: {exc}")
                    return
                # Each task's own time as taskrun reports it ("ran      burn_a (1.02s): ...").
                durations = [float(x) for x in _RAN.findall(run.stdout)]
                if len(durations) != 2:
                    results.problems.append(
                        f"{name} -j {jobs}: {len(durations)} tasks ran, expected 2"
                    )
                else:
                    results.add(name, f"j{jobs}-task", "taskrun", statistics.mean(durations))
                results.add(name, f"j{jobs}", "taskrun", run.seconds)
                log(f"  {name:<22} -j {jobs:<5} taskrun    {run.seconds:8.3f} s")

    return Bench(name, measure)


def _machine_control(d: Path, rep: int, results: Results) -> None:
    """Time the CPU loops without taskrun: sequential in one process, then two processes."""
    for jobs in ("1", "2") if rep % 2 == 0 else ("2", "1"):
        env = _base_env()
        t0 = time.perf_counter()
        if jobs == "1":
            subprocess.run([sys.executable, "spin.py", "2"], cwd=d, env=env, check=True)
        else:
            procs = [
                subprocess.Popen([sys.executable, "spin.py", "1"], cwd=d, env=env) for _ in range(2)
            ]
            if any(p.wait() for p in procs):
                raise BenchError("spin.py failed")
        results.add("cpu/machine", f"j{jobs}", "python", time.perf_counter() - t0)


def _inproc(args: list[str], name: str, results: Results) -> None:
    try:
        run = timed([sys.executable, str(HERE / "inproc.py"), *args], HERE)
    except BenchError as exc:
        results.problems.append(f"{name}: {exc}")
        return
    for case, seconds in json.loads(run.stdout.strip().splitlines()[-1]).items():
        group, _, tool = case.partition("/")
        for s in seconds:
            results.add(name, group, tool, s)
        log(f"  {name:<22} {case:<20} {statistics.median(seconds):8.4f} s (median)")


def hash_bench() -> Bench:
    def measure(tmp: Path, reps: int, results: Results) -> None:
        _inproc(["hash", "--reps", str(max(reps, 5))], "hash/product", results)

    return Bench("hash/product", measure)


def digests_bench() -> Bench:
    def measure(tmp: Path, reps: int, results: Results) -> None:
        _inproc(["digests", "--reps", str(max(reps, 5))], "hash/digests", results)

    return Bench("hash/digests", measure)


def files_bench() -> Bench:
    def measure(tmp: Path, reps: int, results: Results) -> None:
        _inproc(
            ["files", "--dir", str(tmp / "files"), "--files", "10000", "--reps", str(max(reps, 5))],
            "files/tree-10k",
            results,
        )

    return Bench("files/tree-10k", measure)


def startup_bench() -> Bench:
    name = "startup/list-10"

    def measure(tmp: Path, reps: int, results: Results) -> None:
        exes = _exes()
        d = tmp / "startup"
        wl.write(d, [("tasks.py", wl.startup_tasks_py(10)), ("dodo.py", wl.startup_dodo_py(10))])
        cmds: dict[str, list[str]] = {"python -c pass": [sys.executable, "-c", "pass"]}
        for tool in ("taskrun", "doit"):
            exe = exes[tool]
            if exe is None:
                results.problems.append(f"{name}: {tool} not installed; skipped")
            else:
                cmds[f"{tool} list"] = [exe, "list"]
        for cmd in cmds.values():  # untimed: byte-code caches, OS file cache
            timed(cmd, d)
        labels = list(cmds)
        for rep in range(max(reps * 4, 10)):
            for label in labels if rep % 2 == 0 else labels[::-1]:
                results.add(name, "list", label, timed(cmds[label], d).seconds)
        for label in labels:
            log(f"  {name:<22} {label:<20} {results.median(name, 'list', label):8.4f} s (median)")

    return Bench(name, measure)


def gen_bench(n: int) -> Bench:
    """The layered graph in each tool's idiomatic form: a taskrun factory, doit's generator."""
    return noop_bench(
        "layered", n, snakemake=False, prefix="gen", contestants=(TaskrunFactory, DoitGenerator)
    )


GEN_SIZES = (1000, 5000, 20000)
GEN_SIZES_QUICK = (1000, 5000)


def warm_inproc_bench(n: int = 5000) -> Bench:
    """µs per task of a warm ``taskrun.run`` in one process (issue 16's fourth target)."""
    name = f"inproc/warm-{n}"

    def measure(tmp: Path, reps: int, results: Results) -> None:
        _inproc(
            [
                "warm",
                "--dir",
                str(tmp / "inproc-warm"),
                "--tasks",
                str(n),
                "--reps",
                str(max(reps, 5)),
            ],
            name,
            results,
        )

    return Bench(name, measure)


SCHEDULES = ("critical-path", "fifo")


def skewed_bench() -> Bench:
    """Makespan at -j 2 of a skewed graph: critical-path order against FIFO (issue 16).

    ``critical-path`` is taskrun's order, weighted by the durations of the last recorded
    run; ``fifo`` is the order before it (``TASKRUN_SCHEDULE=fifo``, a benchmarking aid).
    Makespan = the run's own elapsed time from its ``--json`` summary.
    """
    name = "sched/skewed-j2"

    def measure(tmp: Path, reps: int, results: Results) -> None:
        exe = _exes()["taskrun"]
        if exe is None:
            results.problems.append(f"{name}: taskrun not installed; skipped")
            return
        d = tmp / "skewed"
        wl.write(d, [("tasks.py", wl.skewed_tasks_py())])
        timed([exe, "list"], d)
        base = [exe, "run", "-j", "2", "--executor", "thread", "--json"]
        timed(base, d)  # records every task's duration in .taskrun/runs
        for rep in range(max(reps, 3)):
            for mode in SCHEDULES if rep % 2 == 0 else SCHEDULES[::-1]:
                env = {"TASKRUN_SCHEDULE": "fifo"} if mode == "fifo" else None
                run = timed([*base, "--force-all"], d, env)
                summary = [
                    json.loads(line)
                    for line in run.stdout.splitlines()
                    if line.startswith("{") and '"summary"' in line
                ]
                if not summary or summary[-1].get("ran") != summary[-1].get("total"):
                    results.problems.append(f"{name} {mode} rep {rep}: not every task ran")
                    continue
                makespan = float(summary[-1]["elapsed"])
                results.add(name, "makespan", mode, makespan)
                log(f"  {name:<22} {mode:<26} {makespan:8.3f} s")

    return Bench(name, measure)


def all_benches(quick: bool) -> list[Bench]:
    sizes = (100, 1000) if quick else (100, 1000, 5000)
    # Quick: Snakemake (1-3 s a run) only on the layered graph, the process executor only.
    benches = [
        noop_bench(shape, n, snakemake=(n == 100 and (shape == "layered" or not quick)))
        for n in sizes
        for shape in wl.SHAPES
    ]
    if quick:
        benches.append(noop_bench("layered", 5000, snakemake=False))
    benches += [cpu_bench(e) for e in (("process",) if quick else ("inline", "thread", "process"))]
    benches += [hash_bench(), digests_bench(), files_bench(), startup_bench()]
    benches += [gen_bench(n) for n in (GEN_SIZES_QUICK if quick else GEN_SIZES)]
    benches += [warm_inproc_bench(), skewed_bench()]
    return benches


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    """One issue-8 target: a measured value against a limit."""

    label: str
    value: float | None
    limit: float
    kind: str  # "max" (value must be <= limit) or "min"
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.kind == "max" else self.value >= self.limit

    def line(self) -> str:
        sign = "≤" if self.kind == "max" else "≥"
        limit = f"{sign} {self.limit:g}{self.unit}"
        if self.value is None:
            return f"| {self.label} | {limit} | not measured | — |"
        verdict = "met" if self.met else "**missed**"
        if not self.met:
            factor = self.value / self.limit if self.kind == "max" else self.limit / self.value
            verdict += f" (by {factor:.2f}x)"
        return f"| {self.label} | {limit} | {self.value:.3g}{self.unit} | {verdict} |"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}f}"


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def targets(r: Results) -> list[Target]:
    lay = "noop/layered-5000"
    su = "startup/list-10"
    j1 = r.median("cpu/process", "j1", "taskrun")
    j2 = r.median("cpu/process", "j2", "taskrun")
    hb = r.median("hash/product", "bytes", "taskrun")
    hx = r.median("hash/product", "bytes", "xxh3")
    return [
        Target(
            "warm run, 5000 layered: taskrun / doit",
            _ratio(r.median(lay, "warm", "taskrun"), r.median(lay, "warm", "doit")),
            0.2,
            "max",
        ),
        Target(
            "cold run, 5000 layered, inline: taskrun / doit",
            _ratio(r.median(lay, "cold", "taskrun"), r.median(lay, "cold", "doit")),
            0.5,
            "max",
        ),
        Target(
            "`taskrun list` / `doit list` (10 tasks)",
            _ratio(r.median(su, "list", "taskrun list"), r.median(su, "list", "doit list")),
            1.0,
            "max",
        ),
        Target(
            "`taskrun list` / `python -c pass`",
            _ratio(r.median(su, "list", "taskrun list"), r.median(su, "list", "python -c pass")),
            8.0,
            "max",
        ),
        Target("512 MiB bytes product: throughput vs raw xxh3-128", _ratio(hx, hb), 0.5, "min"),
        Target("2 CPU-bound 1 s tasks, process: speed-up -j 2 / -j 1", _ratio(j1, j2), 1.8, "min"),
        Target(
            "warm tree_digest, 10,000 files, stat cache",
            r.median("files/tree-10k", "tree", "warm"),
            0.3,
            "max",
            " s",
        ),
    ]


def warm_us_per_task(r: Results, n: int = 5000) -> float | None:
    """In-process warm cost per task: (T(n) - T(100)) / (n - 100), load + run, in µs."""
    w = f"inproc/warm-{n}"
    parts = [r.median(w, f"warm-{k}", part) for k in (n, 100) for part in ("load", "run")]
    if any(x is None for x in parts):
        return None
    big_load, big_run, small_load, small_run = parts  # type: ignore[misc]
    return ((big_load + big_run) - (small_load + small_run)) / (n - 100) * 1e6


def targets16(r: Results) -> list[Target]:
    """Issue 16's targets: ratios against doit's generator form, measured in the same run."""

    def vs_doit(n: int, phase: str) -> float | None:
        w = f"gen/layered-{n}"
        return _ratio(r.median(w, phase, "taskrun"), r.median(w, phase, "doit"))

    sk = "sched/skewed-j2"
    return [
        Target(
            "warm 5,000 layered: taskrun factory / doit generator",
            vs_doit(5000, "warm"),
            0.35,
            "max",
        ),
        Target(
            "warm 20,000 layered: taskrun factory / doit generator",
            vs_doit(20000, "warm"),
            0.35,
            "max",
        ),
        Target(
            "cold 5,000 layered, inline: taskrun factory / doit generator",
            vs_doit(5000, "cold"),
            0.8,
            "max",
        ),
        Target(
            "warm per-task cost in-process (5,000 tasks)", warm_us_per_task(r), 40.0, "max", " µs"
        ),
        Target(
            "skewed-duration graph at -j 2: makespan critical path / FIFO",
            _ratio(r.median(sk, "makespan", "critical-path"), r.median(sk, "makespan", "fifo")),
            0.8,
            "max",
        ),
    ]


def _phase_table(r: Results, prefix: str, title: str, peers: Sequence[str]) -> list[str]:
    """Median seconds and ratios for every PREFIX/SHAPE-N workload measured."""
    ws = sorted(
        {w for (w, _, _) in r.samples if w.startswith(prefix + "/")},
        key=lambda w: (
            int(w.rsplit("-", 1)[1]),
            wl.SHAPES.index(w[len(prefix) + 1 :].rsplit("-", 1)[0]),
        ),
    )
    if not ws:
        return []
    head = " | ".join(peers)
    out = [
        title,
        "",
        f"| workload | phase | taskrun | {head} | "
        + " | ".join(f"taskrun/{p}" for p in peers)
        + " |",
        "|---|---|---:|" + "---:|" * (2 * len(peers)),
    ]
    for w in ws:
        for phase in ("cold", "warm", "changed"):
            t = r.median(w, phase, "taskrun")
            ms = [r.median(w, phase, p) for p in peers]
            out.append(
                f"| {w[len(prefix) + 1 :]} | {phase} | {_fmt(t)} | "
                + " | ".join(_fmt(m) for m in ms)
                + " | "
                + " | ".join(_fmt_ratio(_ratio(t, m)) for m in ms)
                + " |"
            )
    return [*out, ""]


def report16(r: Results) -> list[str]:
    """Issue 16's tables: idiomatic forms, in-process warm cost, skewed makespan, targets."""
    out = _phase_table(
        r,
        "gen",
        "### Idiomatic forms: taskrun factory-made tasks.py against doit's generator "
        "`task_t` (median seconds; ratio = taskrun / doit, lower is better)",
        ["doit"],
    )
    if ("inproc/warm-5000", "warm-5000", "run") in r.samples:
        out += [
            "### Warm per-task cost in one process (median seconds)",
            "",
            "| tasks | load the task file | warm `taskrun.run` | together |",
            "|---:|---:|---:|---:|",
        ]
        for n in (5000, 100):
            a = r.median("inproc/warm-5000", f"warm-{n}", "load")
            b = r.median("inproc/warm-5000", f"warm-{n}", "run")
            both = a + b if a is not None and b is not None else None
            out.append(f"| {n} | {_fmt(a, 4)} | {_fmt(b, 4)} | {_fmt(both, 4)} |")
        us = warm_us_per_task(r)
        out += [
            "",
            f"Per task, (T(5000) - T(100)) / 4900: {'—' if us is None else f'{us:.1f} µs'}.",
            "",
        ]
    sk = "sched/skewed-j2"
    if (sk, "makespan", "fifo") in r.samples:
        cp = r.median(sk, "makespan", "critical-path")
        out += [
            "### Skewed durations at -j 2, thread executor: makespan by start order "
            "(median seconds of the run's own elapsed time)",
            "",
            "| order | makespan | / FIFO |",
            "|---|---:|---:|",
        ]
        fifo = r.median(sk, "makespan", "fifo")
        for mode in SCHEDULES:
            m = r.median(sk, "makespan", mode)
            out.append(f"| {mode} | {_fmt(m)} | {_fmt_ratio(_ratio(m, fifo))} |")
        out += ["", f"(critical path / FIFO: {_fmt_ratio(_ratio(cp, fifo))})", ""]
    out += [
        "### Targets (issue 16)",
        "",
        "| target | limit | measured | verdict |",
        "|---|---|---|---|",
        *[t.line() for t in targets16(r)],
        "",
    ]
    return out


def report(r: Results) -> str:
    """The Markdown tables: no-op graphs, CPU, hashing, files, start-up, targets."""
    out: list[str] = []
    noop = sorted(
        {w for (w, _, _) in r.samples if w.startswith("noop/")},
        key=lambda w: (int(w.rsplit("-", 1)[1]), wl.SHAPES.index(w[5:].rsplit("-", 1)[0])),
    )
    if noop:
        out += [
            "### No-op task graphs (median seconds; ratio = taskrun / peer, lower is better)",
            "",
            "| workload | phase | taskrun | doit | snakemake | taskrun/doit | taskrun/snakemake |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for w in noop:
            for phase in ("cold", "warm", "changed"):
                t, d, s = (r.median(w, phase, tool) for tool in ("taskrun", "doit", "snakemake"))
                out.append(
                    f"| {w[5:]} | {phase} | {_fmt(t)} | {_fmt(d)} | {_fmt(s)} | "
                    f"{_fmt_ratio(_ratio(t, d))} | {_fmt_ratio(_ratio(t, s))} |"
                )
        out.append("")
    cpu = [
        w for w in ("cpu/inline", "cpu/thread", "cpu/process") if (w, "j1", "taskrun") in r.samples
    ]
    if cpu:
        out += [
            "### Two CPU-bound ~1 s tasks (median seconds of the whole `taskrun run --force-all`)",
            "",
            "| executor | -j 1 | -j 2 | speed-up | one task, -j 1 | one task, -j 2 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        if ("cpu/machine", "j1", "python") in r.samples:
            a, b = r.median("cpu/machine", "j1", "python"), r.median("cpu/machine", "j2", "python")
            out.append(
                f"| (no taskrun: 1 vs 2 bare python processes) | {_fmt(a)} | {_fmt(b)} "
                f"| {_fmt_ratio(_ratio(a, b))} | — | — |"
            )
        for w in cpu:
            a, b = r.median(w, "j1", "taskrun"), r.median(w, "j2", "taskrun")
            ta, tb = r.median(w, "j1-task", "taskrun"), r.median(w, "j2-task", "taskrun")
            out.append(
                f"| {w[4:]} | {_fmt(a)} | {_fmt(b)} | {_fmt_ratio(_ratio(a, b))} "
                f"| {_fmt(ta, 2)} | {_fmt(tb, 2)} |"
            )
        out += ["", "(one task = the task's own duration as taskrun reports it, mean of the two)"]
        out.append("")
    if ("hash/product", "bytes", "taskrun") in r.samples:
        hb = r.median("hash/product", "bytes", "taskrun")
        hx = r.median("hash/product", "bytes", "xxh3")
        dt = r.median("hash/product", "dicts", "taskrun")
        dp = r.median("hash/product", "dicts", "pickle+xxh3")
        dj = r.median("hash/product", "dicts", "json+xxh3")
        gib = 0.5
        out += [
            "### Product hashing (in-process, median seconds)",
            "",
            "| product | taskrun `product_digest` | baseline | baseline time "
            "| taskrun / baseline |",
            "|---|---:|---|---:|---:|",
            f"| 512 MiB `bytes` | {_fmt(hb, 4)} ({gib / hb:.1f} GiB/s) | raw `xxh3_128(data)` | "
            f"{_fmt(hx, 4)} ({gib / hx:.1f} GiB/s) | {_fmt_ratio(_ratio(hb, hx))} |"
            if hb and hx
            else "",
            f"| 100,000 small dicts | {_fmt(dt, 4)} | `xxh3_128(pickle.dumps(lst, 5))` | "
            f"{_fmt(dp, 4)} | {_fmt_ratio(_ratio(dt, dp))} |",
            f"| 100,000 small dicts | {_fmt(dt, 4)} | "
            "`xxh3_128(json.dumps(lst, sort_keys=True))` | "
            f"{_fmt(dj, 4)} | {_fmt_ratio(_ratio(dt, dj))} |",
            "",
        ]
    if ("hash/digests", "frame", "taskrun") in r.samples:
        out += [
            "### Canonical digests against raw xxh3 of the same bytes (in-process, median s)",
            "",
            "| product | taskrun `product_digest` | raw `xxh3_128` of its bytes | taskrun / raw |",
            "|---|---:|---:|---:|",
        ]
        for group, label in (
            ("frame", "1,000,000-row DataFrame, 5 numeric/bool columns"),
            ("frame+text", "the same + a string column (object dtype)"),
            ("array", "100 MB float64 array, C order"),
            ("array-fortran", "the same values, Fortran order"),
        ):
            a = r.median("hash/digests", group, "taskrun")
            b = r.median("hash/digests", group, "xxh3")
            out.append(f"| {label} | {_fmt(a, 4)} | {_fmt(b, 4)} | {_fmt_ratio(_ratio(a, b))} |")
        out.append("")
    if ("files/tree-10k", "tree", "warm") in r.samples:
        out += [
            "### File hashing: `tree_digest` of 10,000 files of 1 KiB (in-process, median seconds)",
            "",
            "| no stat cache | cold stat cache (incl. flush) | warm stat cache (incl. load) |",
            "|---:|---:|---:|",
            "| "
            + " | ".join(
                _fmt(r.median("files/tree-10k", "tree", c), 4)
                for c in ("no-stat-cache", "cold", "warm")
            )
            + " |",
            "",
        ]
    su = "startup/list-10"
    if (su, "list", "python -c pass") in r.samples:
        py = r.median(su, "list", "python -c pass")
        out += [
            "### Start-up on a 10-task file (median seconds)",
            "",
            "| command | median | / `python -c pass` |",
            "|---|---:|---:|",
        ]
        for label in ("python -c pass", "taskrun list", "doit list"):
            m = r.median(su, "list", label)
            out.append(f"| `{label}` | {_fmt(m, 4)} | {_fmt_ratio(_ratio(m, py))} |")
        out.append("")
    out += report16(r)
    out += ["### Targets (issue 8)", "", "| target | limit | measured | verdict |"]
    out.append("|---|---|---|---|")
    out += [t.line() for t in targets(r)]
    out.append("")
    machine_speedup = _ratio(
        r.median("cpu/machine", "j1", "python"), r.median("cpu/machine", "j2", "python")
    )
    if machine_speedup is not None:
        out += [
            f"The machine's own speed-up for the same two loops in 1 vs 2 bare Python "
            f"processes, measured alongside: {machine_speedup:.2f}x.",
            "",
        ]
    if r.problems:
        out += ["### Problems", ""] + [f"- {p}" for p in r.problems] + [""]
    return "\n".join(out)


def machine() -> str:
    """One line on the machine and the tools' versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for mod in ("taskrun", "doit", "snakemake", "xxhash", "diskcache"):
        try:
            from importlib.metadata import version

            versions.append(f"{mod} {version(mod)}")
        except Exception:  # noqa: BLE001 - an absent tool is reported, not fatal
            versions.append(f"{mod} absent")
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; " + ", ".join(versions) + _commit()
    )


def _commit() -> str:
    """The repository's commit (and whether taskrun/ had uncommitted changes), if any."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "taskrun"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"; commit {head}{' + uncommitted taskrun/ changes' if dirty else ''}" if head else ""


# --------------------------------------------------------------------------- profile


def profile(spec: str, out: Path) -> None:
    """Run taskrun under pyinstrument for one no-op workload phase (noop/SHAPE-N/PHASE)."""
    m = re.fullmatch(r"(noop|gen)/(\w+)-(\d+)/(cold|warm|changed)", spec)
    if not m:
        raise SystemExit(
            "--profile takes noop/SHAPE-N/PHASE or gen/layered-N/PHASE, e.g."
            f" gen/layered-5000/warm; got {spec!r}"
        )
    kind, shape, n, phase = m.group(1), m.group(2), int(m.group(3)), m.group(4)
    exe = _exes()["taskrun"]
    if exe is None:
        raise SystemExit("taskrun is not installed")
    with tempfile.TemporaryDirectory(prefix="taskrun-profile-") as tmp:
        cls = TaskrunFactory if kind == "gen" else Taskrun
        tool = cls(exe, Path(tmp), wl.make_graph(shape, n))
        tool.write()
        tool.prime()
        if phase != "cold":
            tool.run("cold")
        cmd = tool.command(phase)
        session = Path(tmp) / "profile.pyisession"
        t0 = time.perf_counter()
        timed(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                "pyisession",
                "-o",
                str(session),
                "-i",
                "0.0005",
                "-m",
                "taskrun",
                *cmd[1:],
            ],
            Path(tmp),
        )
        log(f"profiled {' '.join(cmd)} in {time.perf_counter() - t0:.2f} s (with profiler)")
        tree = timed(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                "text",
                "--no-color",
                "--unicode",
            ],
            Path(tmp),
        ).stdout
        stats = Path(tmp) / "profile.pstats"
        timed(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                "pstats",
                "-o",
                str(stats),
            ],
            Path(tmp),
        )
        flat = _flat(stats)
    out.write_text(
        f"# taskrun profile: {spec}\n# command: {' '.join(cmd)}\n# {machine()}\n"
        "# pyinstrument (statistical), interval 0.5 ms; library frames folded into callers\n\n"
        f"{flat}\n\n## Call tree\n\n{tree}"
    )
    log(f"wrote {out}")


def _flat(pstats_file: Path, top: int = 30) -> str:
    """Self-time and cumulative-time tables (seconds) from pyinstrument's pstats output."""
    import pstats

    st = pstats.Stats(str(pstats_file))
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = st.stats  # type: ignore[attr-defined]

    def where(key: tuple[str, int, str]) -> str:
        filename, line, func = key
        short = filename.split("/taskrun/")[-1] if "/taskrun/" in filename else Path(filename).name
        prefix = "taskrun/" if "/taskrun/" in filename else ""
        return f"{func} ({prefix}{short}:{line})"

    by_self = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    ours = [kv for kv in raw.items() if "/taskrun/" in kv[0][0]]
    by_cum = sorted(ours, key=lambda kv: -kv[1][3])[:top]
    lines = ["## Self time (top functions, any module)", "", "| self s | function |", "|---:|---|"]
    lines += [f"| {v[2]:.3f} | {where(k)} |" for k, v in by_self]
    lines += [
        "",
        "## Cumulative time (taskrun's functions)",
        "",
        "| total s | function |",
        "|---:|---|",
    ]
    lines += [f"| {v[3]:.3f} | {where(k)} |" for k, v in by_cum]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _selected(benches: Iterable[Bench], only: str | None) -> list[Bench]:
    if not only:
        return list(benches)
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [b for b in benches if any(fnmatch.fnmatch(b.name, p) for p in pats)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N = 100 and 1000 (+ the 5000 layered graph), 2 repetitions",
    )
    parser.add_argument("--only", metavar="GLOB", help="only workloads matching GLOB[,GLOB...]")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 2)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every sample as JSON")
    parser.add_argument(
        "--profile",
        metavar="noop|gen/SHAPE-N/PHASE",
        help="profile taskrun on one workload with pyinstrument instead",
    )
    parser.add_argument("--profile-out", type=Path, default=Path("bench-profile.txt"))
    parser.add_argument("--list", action="store_true", help="list workload names and exit")
    args = parser.parse_args(argv)

    if args.profile:
        profile(args.profile, args.profile_out)
        return 0
    benches = _selected(all_benches(args.quick), args.only)
    if args.list:
        print("\n".join(b.name for b in benches))
        return 0
    if not benches:
        parser.error(f"no workload matches {args.only!r} (see --list)")
    reps = args.reps or (2 if args.quick else 5)
    results = Results()
    log(f"{machine()}\n{len(benches)} workloads, {reps} repetitions")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        for bench in benches:
            log(f"{bench.name}")
            try:
                bench.fn(Path(tmp), reps, results)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                results.problems.append(f"{bench.name}: {exc}")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"Machine: {machine()}\nRepetitions: {reps}\n")
    print(report(results))
    if args.json:
        doc = results.to_json()
        doc["machine"] = machine()
        doc["targets"] = [
            {"label": t.label, "value": t.value, "limit": t.limit, "kind": t.kind, "met": t.met}
            for t in [*targets(results), *targets16(results)]
        ]
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
