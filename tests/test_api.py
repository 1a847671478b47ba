"""The public API: what `import taskrun` offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import taskrun


def test_all_is_sorted_and_importable() -> None:
    """__all__ is sorted and every name in it resolves."""
    assert list(taskrun.__all__) == sorted(taskrun.__all__)
    for name in taskrun.__all__:
        assert getattr(taskrun, name) is not None


def test_import_taskrun_stays_light() -> None:
    """`import taskrun` loads neither the cache, cloudpickle nor the scheduler."""
    code = (
        "import sys, taskrun; heavy = {'diskcache', 'cloudpickle', 'taskrun.scheduler',"
        " 'taskrun.cache', 'taskrun.executors'}; print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_sh_is_the_shell_helper() -> None:
    """taskrun.sh is the documented helper, loaded on first use."""
    from taskrun.shell import sh

    assert taskrun.sh is sh


# -- taskrun.run: signature, results, options --------------------------------------------
PIPELINE = """
    from taskrun import task

    @task
    def numbers(n: int = 3) -> list[int]:
        return list(range(n))

    @task(deps=[numbers])
    def total(numbers: list[int], scale: float = 1.0) -> float:
        return sum(numbers) * scale
"""


def test_run_has_a_real_signature() -> None:
    """Editors see taskrun.run's parameters and its return type, not *args/**kwargs."""
    import inspect

    sig = inspect.signature(taskrun.run)
    assert list(sig.parameters)[:4] == ["targets", "options", "registry", "root"]
    assert {"jobs", "executor", "cache_dir", "force", "keep_going"} <= set(sig.parameters)
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY
        for n, p in sig.parameters.items()
        if n != "targets"
    )
    assert sig.return_annotation == "RunResult"
    assert taskrun.RunResult.__name__ == "RunResult"
    assert taskrun.TaskResult.__name__ == "TaskResult"


def test_product_of_any_task_of_the_run(write_project: Any, tmp_path: Path) -> None:
    """result.product() gives an upstream's product too, by name or by function."""
    from taskrun.loader import load_task_file

    root = write_project(tmp_path / "p", PIPELINE)
    reg = load_task_file(root / "tasks.py")
    result = taskrun.run("total", registry=reg, options={"n": "4", "scale": "0.5"})
    assert result.ok
    assert result.product("total") == 3.0
    assert result.product("numbers") == [0, 1, 2, 3]
    assert result.product(reg.get("numbers").fn) == [0, 1, 2, 3]
    again = taskrun.run("total", registry=reg, options={"n": "4", "scale": "0.5"})
    assert again.names("cached") == ["numbers", "total"]
    assert again.product("numbers") == [0, 1, 2, 3]  # lazily loaded from its entry
    with pytest.raises(taskrun.TaskrunError, match="did you mean 'total'"):
        again.product("totl")


def test_options_accept_the_command_line_forms(write_project: Any, tmp_path: Path) -> None:
    """{"task.opt": v}, {"opt": v}, {task: {opt: v}}, and "0.3" for a float."""
    from taskrun.loader import load_task_file

    root = write_project(tmp_path / "p", PIPELINE)
    reg = load_task_file(root / "tasks.py")
    total = reg.get("total").fn
    assert taskrun.run(total, registry=reg, options={"total.scale": "0.5"}).product(total) == 1.5
    assert taskrun.run(total, registry=reg, options={"scale": 2}).product(total) == 6.0
    assert taskrun.run(total, registry=reg, options={total: {"scale": 3.0}}).product(total) == 9.0
    with pytest.raises(taskrun.InvocationError, match="scale"):
        taskrun.run(total, registry=reg, options={"scale": "lots"})


SETTINGS = """
[tool.taskrun]
default = ["total"]
cache-dir = "elsewhere"
executor = "inline"

[tool.taskrun.options]
n = 5

[tool.taskrun.options.total]
scale = 2.0
"""


def test_run_reads_tool_taskrun_like_the_cli(write_project: Any, tmp_path: Path) -> None:
    """[tool.taskrun] gives default targets, option values, cache dir and executor;
    arguments win over it, option by option; project_settings=False reads no file."""
    from taskrun.loader import load_task_file

    root = write_project(tmp_path / "p", PIPELINE, SETTINGS)
    reg = load_task_file(root / "tasks.py")
    result = taskrun.run(registry=reg)  # no target: the default one
    assert result.products == {"total": 20.0}  # sum(range(5)) * 2.0
    assert (root / "elsewhere").is_dir() and not (root / ".taskrun" / "cache").exists()
    assert taskrun.run(registry=reg).names("cached") == ["numbers", "total"]
    assert taskrun.run(registry=reg, options={"scale": 1.0}).products == {"total": 10.0}
    assert taskrun.run(registry=reg, options={"numbers.n": 3}).products == {"total": 6.0}
    ignored = taskrun.run("total", registry=reg, project_settings=False)
    assert ignored.products == {"total": 3.0}  # the tasks' own defaults
    assert (root / ".taskrun" / "cache").is_dir()


def test_run_reports_a_bad_tool_taskrun(write_project: Any, tmp_path: Path) -> None:
    """A setting the CLI would refuse is refused by taskrun.run too, naming the file."""
    from taskrun.loader import load_task_file

    root = write_project(tmp_path / "p", PIPELINE, '[tool.taskrun]\nexecutor = "threads"\n')
    reg = load_task_file(root / "tasks.py")
    with pytest.raises(taskrun.TaskrunError, match=r"pyproject.toml.*'thread'"):
        taskrun.run("total", registry=reg)
    assert taskrun.run("total", registry=reg, project_settings=False).ok


HELPER_TASKS = """
    import helpers
    from taskrun import task

    @task
    def answer() -> str:
        import helpers as again  # imported inside the task body too
        assert again is helpers
        return helpers.WHO
"""


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_two_projects_with_a_same_named_helper(
    write_project: Any, tmp_path: Path, executor: str
) -> None:
    """Each project gets its own helpers.py; cwd, sys.path and sys.modules are restored."""
    from taskrun.loader import load_task_file

    roots = [
        write_project(tmp_path / name, HELPER_TASKS, files={"helpers.py": f"WHO = {name!r}\n"})
        for name in ("one", "two")
    ]
    cwd, path, modules = os.getcwd(), list(sys.path), set(sys.modules)
    registries = [load_task_file(r / "tasks.py") for r in roots]
    answers = [
        taskrun.run("answer", registry=reg, executor=executor, cache_mode="off").product("answer")
        for reg in registries
    ]
    assert answers == ["one", "two"]
    assert os.getcwd() == cwd
    assert sys.path == path
    assert "helpers" not in sys.modules
    left = [
        n
        for n in set(sys.modules) - modules
        if str(getattr(sys.modules[n], "__file__", None) or "").startswith(str(tmp_path))
    ]
    assert left == []


def test_process_workers_get_sys_path_in_a_file(
    write_project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sys.path beyond Linux's 128 KiB single-argument limit does not stop workers."""
    root = write_project(tmp_path / "p", PIPELINE)
    from taskrun.loader import load_task_file

    reg = load_task_file(root / "tasks.py")
    long = [str(tmp_path / f"missing-{i:04d}" / ("x" * 100)) for i in range(1500)]
    monkeypatch.setattr(sys, "path", [*sys.path, *long])
    assert len(json.dumps(sys.path)) > 128 * 1024
    result = taskrun.run("total", registry=reg, executor="process", jobs=1, cache_mode="off")
    assert result.ok, result.tasks
    assert result.product("total") == 3.0


# -- the project root of a script that imports its task file ---------------------------------

WHERE_TASKS = """
    import os
    from pathlib import Path
    from taskrun import task

    @task(outputs=["build/where.txt"])
    def where() -> str:
        Path("build").mkdir(exist_ok=True)
        Path("build/where.txt").write_text(os.getcwd())
        return os.getcwd()
"""

SCRIPT = """
import taskrun
import tasks

result = taskrun.run(["where"])
print(result.tasks["where"].state, result.products["where"])
"""


def _script(root: Path, cwd: Path, name: str = "api.py") -> list[str]:
    """`python ROOT/NAME` started in CWD; its stdout split into words."""
    cwd.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(root / name)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_script_importing_tasks_runs_in_the_task_files_folder(
    write_project: Any, tmp_path: Path
) -> None:
    """`import tasks; taskrun.run(...)` from anywhere: root, outputs and cache are the project's."""
    root = write_project(tmp_path / "p", WHERE_TASKS, files={"api.py": SCRIPT})
    elsewhere = tmp_path / "elsewhere"
    assert _script(root, elsewhere) == ["ran", str(root)]
    assert (root / "build" / "where.txt").read_text() == str(root)
    assert (root / ".taskrun").is_dir()
    assert sorted(os.listdir(elsewhere)) == []  # no build/, no .taskrun/ where it started
    cli = subprocess.run(
        [sys.executable, "-m", "taskrun", "run", "where"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "1 cached" in cli.stdout  # the CLI and the script share one cache
    assert _script(root, elsewhere) == ["cached", str(root)]


def test_tasks_from_a_module_beside_tasks_py_use_tasks_py_folder(
    write_project: Any, tmp_path: Path
) -> None:
    """tasks.py that re-exports tasks defined in pipeline/defs.py: the root is tasks.py's folder."""
    root = write_project(
        tmp_path / "p",
        "from pipeline.defs import where  # noqa: F401\n",
        files={
            "pipeline/__init__.py": "",
            "pipeline/defs.py": WHERE_TASKS.replace("\n    ", "\n"),
            "api.py": SCRIPT,
        },
    )
    assert _script(root, tmp_path / "elsewhere") == ["ran", str(root)]
    assert (root / "build" / "where.txt").is_file()
    assert not (root / "pipeline" / "build").exists()


def test_a_script_defining_its_own_tasks_runs_in_its_folder(tmp_path: Path) -> None:
    """Tasks defined in the script itself (no tasks.py): the root is the script's folder."""
    root = tmp_path / "p"
    root.mkdir()
    body = WHERE_TASKS.replace("\n    ", "\n")
    (root / "build_all.py").write_text(body + SCRIPT.replace("import tasks\n", ""))
    assert _script(root, tmp_path / "elsewhere", "build_all.py") == ["ran", str(root)]
    assert (root / "build" / "where.txt").is_file()


def test_run_with_nothing_registered_says_to_import_the_task_file(
    write_project: Any, tmp_path: Path
) -> None:
    """`taskrun.run(["where"])` without `import tasks`: the error says what to import."""
    root = write_project(tmp_path / "p", WHERE_TASKS)
    done = subprocess.run(
        [sys.executable, "-c", "import taskrun; taskrun.run(['where'])"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "no tasks are registered; import your task file (e.g. `import tasks`)" in done.stderr
    assert "pass registry=" in done.stderr
    assert "is not a task" not in done.stderr
    assert not (root / "build").exists()


def test_run_with_an_empty_registry_names_the_argument(tmp_path: Path) -> None:
    """An empty registry= is named as the thing to fix, and nothing runs."""
    from taskrun.registry import Registry

    with pytest.raises(taskrun.InvocationError, match="registry= has no tasks"):
        taskrun.run(["anything"], registry=Registry(), root=tmp_path)
    assert list(tmp_path.iterdir()) == []
