"""Shipping a call's files to a worker without the project directory, and its outputs back.

Backend-neutral and in-process: the driver side (what a call ships, sent once), the worker
side (a scratch copy, outputs collected, the process left as it was) and writing outputs
back into the project. The Dask executor's use of it is in test_dask.py / test_dask_cli.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskrun.executors.base import Call
from taskrun.executors.shipping import (
    Parcels,
    ProjectFiles,
    ShipError,
    collect_outputs,
    materialise,
    run_shipped,
    unpack,
    write_back,
)
from taskrun.executors.trampoline import decode_result, encode_call
from taskrun.files import Dir, File

TASKS = """
import os
from pathlib import Path

from taskrun.files import Dir, File


def build(weights, scale=1):
    import helpers

    values = [int(v) * scale for v in Path("data/in.txt").read_text().split()]
    Path("build").mkdir(exist_ok=True)
    Path("build/out.txt").write_text(helpers.lines(v * int(weights.read_text()) for v in values))
    Path("build/sub").mkdir(exist_ok=True)
    Path("build/sub/extra.txt").write_text("extra")
    Path("notes.txt").write_text("not an output")
    return {"file": File("build/out.txt"), "abs": File(os.path.abspath("build/out.txt")),
            "cwd": os.getcwd()}


def big(size):
    Path("out.bin").write_bytes(b"x" * size)
    return File("out.bin")


def raises():
    import helpers

    Path("out.bin").write_text("partial")
    helpers.fail("no")
"""


HELPERS = """
def lines(values):
    return ''.join(f'{v}\\n' for v in values)


def fail(message):
    raise ValueError(message)
"""


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with modules, input data, and directories that are not the project's own."""
    return write(
        tmp_path / "project",
        {
            "tasks.py": TASKS,
            "helpers.py": HELPERS,
            "pkg/__init__.py": "",
            "pkg/mod.py": "X = 1\n",
            "data/in.txt": "1 2 3",
            "data/unused.txt": "not declared",
            "weights.txt": "10",
            "tree/a.txt": "a",
            "tree/deeper/b.txt": "b",
            ".venv/pyvenv.cfg": "home = /usr\n",
            ".venv/lib/python3/site-packages/dep.py": "",
            "env/pyvenv.cfg": "home = /usr\n",
            "env/lib/thing.py": "",
            "vendor/site-packages/dep.py": "",
            "node_modules/x/y.py": "",
            ".git/hooks/h.py": "",
            ".taskrun/q.py": "",
            "pkg/__pycache__/mod.cpython.py": "",
            "build/generated.py": "OLD = 1\n",
        },
    )


@pytest.fixture
def tasks(project: Path) -> Any:
    """The project's task module, loaded by path and not left in sys.modules."""
    name = f"taskrun_test_shipping_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, project / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wires(root: Path, files: list[Any]) -> list[tuple[str, int, bytes]]:
    return [(f.path, f.mode, (root / f.path).read_bytes()) for f in files]


# -- the driver: what a call ships ----------------------------------------------------------


def test_a_call_ships_its_inputs_arguments_and_the_projects_modules(project: Path) -> None:
    """Declared inputs, File/Dir arguments and the project's own modules; nothing else."""
    files = ProjectFiles(str(project)).collect(
        ["data/in.txt"],
        {
            "weights": File("weights.txt"),
            "trees": [Dir("tree")],
            "outside": File("/etc/hostname"),
            "missing": File("not/there.txt"),
            "text": "data/unused.txt",
        },
        ["build"],
    )
    shipped = {f.path: f.module for f in files}
    assert shipped == {
        "tasks.py": True,
        "helpers.py": True,
        "pkg/__init__.py": True,
        "pkg/mod.py": True,
        "data/in.txt": False,
        "weights.txt": False,
        "tree/a.txt": False,
        "tree/deeper/b.txt": False,
    }


def test_shipped_files_keep_their_mode_and_content_digest(project: Path) -> None:
    """Each file carries its permission bits, size and digest; read() gives its bytes."""
    (project / "helpers.py").chmod(0o750)
    project_files = ProjectFiles(str(project))
    (helpers,) = [f for f in project_files.collect([], {}, []) if f.path == "helpers.py"]
    assert helpers.mode == 0o750 and helpers.size == (project / "helpers.py").stat().st_size
    assert project_files.read(helpers) == (project / "helpers.py").read_bytes()


def test_a_file_edited_between_calls_ships_its_new_content(project: Path) -> None:
    """The second call of a run sees the file as it is then, not as the first call saw it."""
    project_files = ProjectFiles(str(project))
    first = project_files.collect(["data/in.txt"], {}, [])
    (project / "data" / "in.txt").write_text("4 5 6 7")
    second = project_files.collect(["data/in.txt"], {}, [])
    (old,) = [f for f in first if f.path == "data/in.txt"]
    (new,) = [f for f in second if f.path == "data/in.txt"]
    assert old.digest != new.digest and project_files.read(new) == b"4 5 6 7"


def test_a_module_added_during_the_run_ships_with_the_next_call(project: Path) -> None:
    """A Python file created since the last call (generated code, say) is found."""
    project_files = ProjectFiles(str(project))
    project_files.collect([], {}, [])
    write(project, {"pkg/new.py": "Y = 2\n"})
    assert "pkg/new.py" in {f.path for f in project_files.collect([], {}, [])}


def test_a_file_changed_after_it_was_listed_is_refused(project: Path) -> None:
    """read() checks the digest: a file changed since it was listed is not sent as it."""
    write(project, {"data/big.bin": b"a" * 300_000})
    project_files = ProjectFiles(str(project))
    (big,) = [f for f in project_files.collect(["data/big.bin"], {}, []) if f.path.endswith("bin")]
    (project / "data" / "big.bin").write_bytes(b"b" * 300_000)
    with pytest.raises(ShipError, match="changed while it was being sent"):
        project_files.read(big)


def test_more_than_the_limit_is_refused_naming_the_largest_files(project: Path) -> None:
    """Past the limit the call is refused, naming the biggest files and the way out."""
    write(project, {"data/big.bin": b"x" * (3 << 20)})
    with pytest.raises(ShipError) as caught:
        ProjectFiles(str(project)).collect(["data/big.bin"], {}, [], limit=1 << 20)
    message = str(caught.value)
    assert "add up to 3.0 MiB, more than the 1.0 MiB" in message
    assert (
        "(largest: data/big.bin (3.0 MiB), " in message
        and "file system the workers share" in message
    )


# -- parcels: sent once ---------------------------------------------------------------------


class FakeCluster:
    """send() keeps the bytes under a handle; alive() is what the test says."""

    def __init__(self) -> None:
        self.sent: dict[int, bytes] = {}
        self.lost: set[int] = set()

    def send(self, data: bytes) -> int:
        handle = len(self.sent)
        self.sent[handle] = data
        return handle

    def alive(self, handle: int) -> bool:
        return handle not in self.lost

    def resolve(self, parcel: dict[str, Any]) -> dict[str, Any]:
        """The parcel as a worker gets it: handles replaced by their bytes."""

        def get(thing: Any) -> Any:
            return self.sent[thing] if isinstance(thing, int) else thing

        return {
            **parcel,
            "packs": [get(p) for p in parcel["packs"]],
            "blobs": {k: get(v) for k, v in parcel["blobs"].items()},
        }


def test_big_files_are_sent_once_for_every_call_that_needs_them(project: Path, tasks: Any) -> None:
    """A big input goes through send() once; small files travel inside each parcel."""
    write(project, {"data/big.bin": os.urandom(300_000)})
    cluster = FakeCluster()
    parcels = Parcels(cluster.send, cluster.alive)
    call = Call("big", tasks.big, {}, str(project), None, inputs=("data/big.bin", "data/in.txt"))
    first, second = parcels.build(call), parcels.build(call)
    assert len(cluster.sent) == 1 and cluster.sent[0] == (project / "data/big.bin").read_bytes()
    assert first["blobs"] == second["blobs"]
    assert all(isinstance(pack, bytes) for pack in first["packs"])  # small: inline
    got = {rel: data for rel, _, data in unpack(cluster.resolve(second))}
    assert got["data/big.bin"] == (project / "data/big.bin").read_bytes()
    assert got["data/in.txt"] == b"1 2 3" and "helpers.py" in got


def test_a_big_pack_of_small_files_is_sent_once(project: Path, tasks: Any) -> None:
    """Many small modules adding up to more than travels inline go ahead as one pack."""
    write(project, {f"gen/m{i}.py": "# " + "x" * 1000 + "\n" for i in range(300)})
    cluster = FakeCluster()
    parcels = Parcels(cluster.send, cluster.alive)
    call = Call("big", tasks.big, {}, str(project), None)
    first, second = parcels.build(call), parcels.build(call)
    assert len(cluster.sent) == 1 and first["packs"] == second["packs"] == [0]
    assert len(unpack(cluster.resolve(first))) == len(
        ProjectFiles(str(project)).collect([], {}, [])
    )


def test_a_handle_whose_data_was_lost_is_sent_again(project: Path, tasks: Any) -> None:
    """Data that died with a worker (alive() says so) is sent again for the next call."""
    write(project, {"data/big.bin": os.urandom(300_000)})
    cluster = FakeCluster()
    parcels = Parcels(cluster.send, cluster.alive)
    call = Call("big", tasks.big, {}, str(project), None, inputs=("data/big.bin",))
    parcels.build(call)
    cluster.lost.add(0)
    assert list(parcels.build(call)["blobs"].values()) == [1] and len(cluster.sent) == 2


# -- the worker: a scratch copy -------------------------------------------------------------


def run_here(call: Call, project: Path, outputs: tuple[str, ...], limit: int = 1 << 30) -> Any:
    """Ship ``call`` as a worker would run it (in this process), return (outcome, outputs)."""
    files = ProjectFiles(str(project)).collect(call.inputs, call.kwargs, outputs)
    data, back = run_shipped(
        encode_call(call), str(project), wires(project, files), outputs, capture="none", limit=limit
    )
    return decode_result(call.task, data), back


def test_a_shipped_call_runs_in_a_scratch_copy_and_sends_its_outputs_back(
    project: Path, tasks: Any
) -> None:
    """Inputs and modules are there; outputs and product files come back; the copy is gone."""
    call = Call(
        "build", tasks.build, {"weights": File("weights.txt")}, str(project), None,
        inputs=("data/in.txt",), outputs=("build/out.txt",),
    )  # fmt: skip
    cwd, path = os.getcwd(), list(sys.path)
    outcome, back = run_here(call, project, ("build/out.txt",))
    assert outcome.ok, outcome.error + outcome.traceback
    scratch = outcome.value["cwd"]
    assert scratch != str(project) and not os.path.exists(scratch)
    assert (os.getcwd(), sys.path) == (cwd, path) and "helpers" not in sys.modules
    assert back == [("build/out.txt", 0o666 & ~_umask(), b"10\n20\n30\n")]
    assert not (project / "build" / "out.txt").exists()  # the driver writes it, not the worker


def test_product_paths_into_the_scratch_copy_come_back_under_the_project(
    project: Path, tasks: Any
) -> None:
    """An absolute File into the scratch directory is the same file under the project root."""
    call = Call("build", tasks.build, {"weights": File("weights.txt")}, str(project), None,
                inputs=("data/in.txt",))  # fmt: skip
    outcome, _ = run_here(call, project, ())
    assert outcome.value["file"] == File("build/out.txt")
    assert outcome.value["abs"] == File(project / "build" / "out.txt")
    assert type(outcome.value["abs"]) is File


def test_declared_output_directories_come_back_whole(project: Path, tasks: Any) -> None:
    """An output glob naming a directory brings back every file beneath it, nothing else."""
    call = Call("build", tasks.build, {"weights": File("weights.txt")}, str(project), None,
                inputs=("data/in.txt",))  # fmt: skip
    _, back = run_here(call, project, ("build",))
    assert sorted(rel for rel, _, _ in back) == ["build/out.txt", "build/sub/extra.txt"]


def test_a_missing_literal_output_is_left_for_the_driver_to_report(
    project: Path, tasks: Any
) -> None:
    """The worker sends back what exists; the driver's capture step names what is missing."""
    call = Call("build", tasks.build, {"weights": File("weights.txt")}, str(project), None,
                inputs=("data/in.txt",))  # fmt: skip
    outcome, back = run_here(call, project, ("never/written.txt",))
    assert outcome.ok and [rel for rel, _, _ in back] == ["build/out.txt"]  # the product file


def test_outputs_past_the_limit_fail_the_call(project: Path, tasks: Any) -> None:
    """Output files adding up to more than the limit fail the call, with the task's output."""
    outcome, back = run_here(Call("big", tasks.big, {"size": 5000}, str(project), None), project,
                             ("out.bin",), limit=1000)  # fmt: skip
    assert not outcome.ok and back == []
    assert "the task's output files add up to" in outcome.error and "out.bin" in outcome.error


def test_a_failed_call_sends_nothing_back(project: Path, tasks: Any) -> None:
    """Outputs of a task that raised are not collected, as after a local failure."""
    outcome, back = run_here(Call("raises", tasks.raises, {}, str(project), None), project,
                             ("out.bin",))  # fmt: skip
    assert not outcome.ok and outcome.error == "ValueError: no" and back == []


def test_tracebacks_show_the_projects_files_and_lines(project: Path, tasks: Any) -> None:
    """Frames name the project's files, with their source lines, even where it is not."""
    files = wires(project, ProjectFiles(str(project)).collect([], {}, []))
    moved = project.rename(project.with_name("elsewhere"))  # a worker that cannot see it
    call = Call("raises", tasks.raises, {}, str(project), None)
    data, _ = run_shipped(encode_call(call), str(project), files, (), capture="none")
    shown = decode_result("raises", data).traceback
    assert f'File "{project / "tasks.py"}"' in shown and 'helpers.fail("no")' in shown
    assert f'File "{project / "helpers.py"}"' in shown and "raise ValueError(message)" in shown
    assert "taskrun-call-" not in shown and str(moved) not in shown


@pytest.mark.parametrize("rel", ["../escape.txt", "/abs.txt", "a/../../b.txt", ""])
def test_materialise_refuses_paths_out_of_the_scratch_directory(tmp_path: Path, rel: str) -> None:
    """A shipped file may not land outside its scratch directory; nothing is left behind."""
    with pytest.raises(ShipError, match="refused"):
        materialise([("ok.txt", 0o644, b"x"), (rel, 0o644, b"y")], str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_outputs_through_a_symlink_out_of_the_scratch_copy_are_not_collected(
    tmp_path: Path,
) -> None:
    """A product or output that resolves outside the scratch directory is not read."""
    (tmp_path / "secret.txt").write_text("secret")
    scratch = Path(materialise([("mine.txt", 0o644, b"mine")], str(tmp_path)))
    (scratch / "link.txt").symlink_to(tmp_path / "secret.txt")
    back = collect_outputs(str(scratch), ["*.txt"], File("link.txt"))
    assert [rel for rel, _, _ in back] == ["mine.txt"]


# -- the driver: outputs back into the project ----------------------------------------------


def test_write_back_puts_files_into_the_project_with_their_mode(tmp_path: Path) -> None:
    """Files land under the root (directories made, old content replaced), modes kept."""
    write(tmp_path, {"build/old.txt": "old"})
    write_back(
        [("build/old.txt", 0o644, b"new"), ("bin/run", 0o755, b"#!/bin/sh\n")], str(tmp_path)
    )
    assert (tmp_path / "build/old.txt").read_text() == "new"
    assert (tmp_path / "bin/run").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["old.txt"]  # no temp left


@pytest.mark.parametrize("rel", ["../escape.txt", "/abs.txt", "out/link/x.txt"])
def test_write_back_refuses_paths_out_of_the_project(tmp_path: Path, rel: str) -> None:
    """Absolute paths, `..` and parents that are symlinks leading out write nothing at all."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (root / "out").mkdir(parents=True)
    (root / "out" / "link").symlink_to(outside)
    with pytest.raises(ShipError, match="cannot write the output files"):
        write_back([("out/fine.txt", 0o644, b"x"), (rel, 0o644, b"y")], str(root))
    assert not (root / "out" / "fine.txt").exists() and list(outside.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
