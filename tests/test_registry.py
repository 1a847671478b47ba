"""The registry: what @task and define_type record, every definition error, and override."""

import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest

import taskrun
from taskrun.errors import DefinitionError, UsageError
from taskrun.files import File
from taskrun.loader import load_task_file
from taskrun.registry import MISSING, Registry, default_registry, define_type, task

HEADER = """\
from typing import Literal
from taskrun import task, define_type, File, Dir
"""


def line_of(source: str, marker: str) -> int:
    """The 1-based line of ``source`` (as written by write_project) holding ``marker``."""
    for number, line in enumerate(textwrap.dedent(source).splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in source")


@pytest.fixture
def definition_error(tmp_path: Path, write_project: Any) -> Any:
    """``definition_error(body) -> (message, 'tasks.py:LINE' of the '# <-' line)``."""

    def load(body: str) -> tuple[str, str]:
        source = HEADER + textwrap.dedent(body)
        write_project(tmp_path, source)
        path = (tmp_path / "tasks.py").resolve()
        with pytest.raises(DefinitionError) as info:
            load_task_file(path)
        return info.value.message, f"{path}:{line_of(source, '# <-')}"

    return load


# -- what a definition records ------------------------------------------------------------


def test_bare_task_returns_the_function_unchanged(registry: Registry) -> None:
    """@task marks; the function is still a plain callable."""

    def add(a: int = 1, b: int = 2) -> int:
        return a + b

    assert task(add) is add
    assert add(3, 4) == 7
    assert list(registry.tasks) == ["add"]


def test_module_level_task_goes_to_the_active_registry_only(registry: Registry) -> None:
    """While a registry is active, @task does not touch the default registry."""

    @task
    def isolated() -> None: ...

    assert "isolated" in registry
    assert "isolated" not in default_registry


def test_options_are_read_from_the_signature(registry: Registry) -> None:
    """Names, types, defaults and required-ness come from parameters and annotations."""

    @task
    def build(top: int, style: Literal["plain", "md"] = "plain", out: File | None = None) -> str:
        """Build it.

        More text.
        """
        return ""

    spec = registry.get("build")
    assert [(o.name, o.type.name, o.default, o.required) for o in spec.options] == [
        ("top", "int", MISSING, True),
        ("style", "{plain|md}", "plain", False),
        ("out", "File | None", None, False),
    ]
    assert spec.product.name == "str"
    assert spec.summary == "Build it."


@pytest.mark.parametrize(
    ("annotation", "product"), [(None, "any"), (Any, "any"), (type(None), "None")]
)
def test_product_type_comes_from_the_return_annotation(
    registry: Registry, annotation: Any, product: str
) -> None:
    """No annotation and -> Any leave the product unchecked; -> None means nothing."""

    def fn() -> None: ...

    fn.__annotations__ = {} if annotation is None else {"return": annotation}
    task(fn)
    assert registry.get("fn").product.name == product


def test_dependencies_pass_products_by_name_or_renamed(registry: Registry) -> None:
    """deps=[t] passes to parameter t; deps={'p': t} to p; an unused dep only orders."""

    @task
    def sources() -> list[str]:
        return []

    @task(name="load-data")
    def load() -> int:
        return 1

    @task(deps=[sources, load])
    def stats(sources: list[str], load_data: int) -> int:
        return 0

    @task(deps={"files": sources})
    def report(files: list[str]) -> None: ...

    @task(deps=[stats])
    def after() -> None: ...

    assert [(d.param, d.task, d.passed) for d in registry.get(stats).deps] == [
        ("sources", "sources", True),
        ("load_data", "load-data", True),
    ]
    assert [(d.param, d.task) for d in registry.get(report).deps] == [("files", "sources")]
    assert [d.passed for d in registry.get(after).deps] == [False]
    assert registry.get(stats).options == ()


def test_settings_are_stored_normalized(registry: Registry) -> None:
    """version= becomes a str, timeout= a float, globs and env names tuples."""

    @task(
        inputs=["data/*.csv"],
        outputs=["build/out.txt"],
        env=["CC"],
        version=2,
        retries=1,
        timeout=5,
    )
    def make() -> None: ...

    spec = registry.get(make)
    assert (spec.inputs, spec.outputs, spec.env) == (("data/*.csv",), ("build/out.txt",), ("CC",))
    assert (spec.version, spec.retries, spec.timeout, spec.cache) == ("2", 1, 5.0, True)


def test_defined_types_are_kept_by_name(registry: Registry) -> None:
    """define_type registers the type in the active registry."""
    positive = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")
    assert registry.types["PositiveInt"] is positive
    assert positive.doc == "an integer above 0"


def test_unknown_task_lookup_suggests_a_name(registry: Registry) -> None:
    """get() of a missing task is a UsageError with did-you-mean."""

    @task
    def report() -> None: ...

    with pytest.raises(UsageError, match=r"unknown task 'reprot' \(did you mean 'report'\?\)"):
        registry.get("reprot")


def test_graph_queries(registry: Registry) -> None:
    """upstream, downstream, subgraph and the topological order by task or name."""

    @task
    def a() -> None: ...

    @task(deps=[a])
    def b() -> None: ...

    @task(deps=[a])
    def c() -> None: ...

    @task(deps=[b, c])
    def d() -> None: ...

    assert registry.upstream(d) == {"a", "b", "c"}
    assert registry.downstream("b") == {"d"}
    assert registry.subgraph(b) == ["a", "b"]
    assert registry.topological_order() == ["a", "b", "c", "d"]


def test_the_graph_follows_registrations_and_overrides(registry: Registry) -> None:
    """The registry builds its graph once per set of specs: a new task, an override that
    drops an upstream, and its undoing each show in the next query."""

    @task
    def a() -> None: ...

    @task(deps=[a])
    def b() -> None: ...

    assert registry.upstream("b") == {"a"}
    assert registry.graph is registry.graph  # built once for the same specs

    @task(deps=[b])
    def c() -> None: ...

    assert registry.downstream("a") == {"b", "c"}

    def lone() -> None: ...

    with registry.override("b", lone):
        assert registry.upstream("c") == {"b"}
        assert registry.downstream("a") == set()
    assert registry.upstream("c") == {"a", "b"}


def test_future_annotations_with_types_local_to_a_function(
    write_project: Any, tmp_path: Path
) -> None:
    """String annotations naming a type defined in the enclosing function resolve."""
    write_project(
        tmp_path,
        """\
        from __future__ import annotations
        from taskrun import task, define_type

        def make():
            Small = define_type("Small", int, lambda v: v < 10)

            @task
            def t(n: Small = 1) -> int:
                return n

        make()
        """,
    )
    registry = load_task_file(tmp_path / "tasks.py")
    assert registry.get("t").options[0].type.name == "Small"


# -- definition errors: each names the thing, file:line, and the fix ---------------------


def test_duplicate_task_name(definition_error: Any) -> None:
    """A second task with a taken name points at both and suggests name=."""
    message, where = definition_error("""
        @task
        def report() -> None: ...

        @task                        # <-
        def report() -> None: ...
        """)
    assert "task 'report' is defined twice" in message
    assert where in message
    assert f"{where.rsplit(':', 1)[0]}:4" in message  # the first definition
    assert "@task(name=...)" in message


def test_duplicate_type_name(definition_error: Any) -> None:
    """A second define_type with a taken name points at both."""
    message, where = definition_error("""
        P = define_type("Positive", int, lambda v: v > 0)
        Q = define_type("Positive", int, lambda v: v >= 0)   # <-
        """)
    assert "type 'Positive' is defined twice" in message
    assert where in message
    assert "rename one" in message


def test_type_named_like_a_builtin(definition_error: Any) -> None:
    """define_type cannot shadow a built-in type name."""
    message, where = definition_error("""
        X = define_type("File", str)   # <-
        """)
    assert "type 'File'" in message and where in message and "choose another name" in message


def test_option_without_annotation(definition_error: Any) -> None:
    """An option with a default but no type says which annotation to write."""
    message, where = definition_error("""
        @task                          # <-
        def report(top=10) -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "option 'top' has no type annotation" in message
    assert "'top: int = 10'" in message


def test_parameter_named_after_no_dependency(definition_error: Any) -> None:
    """An unannotated, undefaulted parameter that names nothing: annotate it or add a dep."""
    message, where = definition_error("""
        @task
        def sources() -> list[str]: ...

        @task                          # <-
        def report(sourcs) -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "parameter 'sourcs' is named after no dependency" in message
    assert "did you mean 'sources'?" in message
    assert "deps=" in message


def test_parameter_naming_a_task_that_is_not_a_dependency(definition_error: Any) -> None:
    """A parameter spelled like an existing task says to add that task to deps=."""
    message, where = definition_error("""
        @task
        def sources() -> int: ...

        @task                          # <-
        def report(sources) -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "names task 'sources', which is not in deps=" in message


def test_default_failing_its_type(definition_error: Any) -> None:
    """A default of the wrong kind names the option, the type and the fix."""
    message, where = definition_error("""
        @task                          # <-
        def report(top: int = "ten") -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "default of option 'top' fails its type int" in message
    assert "'ten'" in message
    assert "change the default or the type" in message


def test_default_failing_a_defined_predicate(definition_error: Any) -> None:
    """A default that fails a define_type predicate is a definition error."""
    message, where = definition_error("""
        PositiveInt = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")

        @task                          # <-
        def report(top: PositiveInt = 0) -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "option 'top' fails its type PositiveInt" in message
    assert "0 is not an integer above 0" in message


def test_dependency_not_a_registered_task(definition_error: Any) -> None:
    """A plain function in deps= says to decorate it with @task."""
    message, where = definition_error("""
        def helper() -> int: ...

        @task(deps=[helper])           # <-
        def report(helper: int) -> None: ...
        """)
    assert f"task 'report' ({where})" in message
    assert "dependency 'helper' is not a registered task" in message
    assert "decorate it with @task" in message


def test_dependency_given_as_a_string(definition_error: Any) -> None:
    """deps=['name'] asks for the task object instead."""
    message, where = definition_error("""
        @task
        def sources() -> int: ...

        @task(deps=["sources"])        # <-
        def report(sources: int) -> None: ...
        """)
    assert where in message and "pass the task object sources itself" in message


def test_dependency_listed_twice(definition_error: Any) -> None:
    """The same task twice in deps= is refused."""
    message, where = definition_error("""
        @task
        def a() -> int: ...

        @task(deps={"x": a, "y": a})   # <-
        def b(x: int, y: int) -> None: ...
        """)
    assert where in message and "dependency 'a' is listed twice" in message


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ("cache=False, version='2'", ["version= and cache=False contradict", "drop one"]),
        ("cache=False, outputs=['out.txt']", ["outputs= and cache=False contradict", "drop one"]),
        ("retries=-1", ["retries= must be a whole number >= 0", "got -1", "retries=2"]),
        ("retries=1.5", ["retries=", "got 1.5"]),
        ("timeout=0", ["timeout= must be a number of seconds above 0", "got 0"]),
        ("timeout=-3", ["timeout=", "got -3"]),
        ("inputs='data.csv'", ["inputs= must be a list of strings", "inputs=['data.csv']"]),
        ("env='CC'", ["env=['CC']"]),
        ("inputs=5", ["inputs= must be a list of non-empty strings", "got 5"]),
        ("outputs=['../x']", ["leaves the project", "relative to the project root"]),
        ("outputs=['/tmp/x']", ["leaves the project"]),
        ("version=True", ["version= must be a str or int"]),
        ("cache='no'", ["cache= must be True or False"]),
        ("name='two words'", ["name 'two words' is not valid"]),
        ("name=''", ["name '' is not valid"]),
        ("deps=sorted", ["deps= must be a list of tasks or a dict"]),
        ("deps=[[1]]", ["is not a registered task"]),
    ],
)
def test_bad_task_arguments(definition_error: Any, arguments: str, words: list[str]) -> None:
    """Contradictory or malformed @task arguments name the task, line and fix."""
    message, where = definition_error(f"""
        @task({arguments})   # <-
        def job() -> None: ...
        """)
    assert where in message
    for word in words:
        assert word in message


def test_unknown_task_argument_suggests_the_right_one(definition_error: Any) -> None:
    """A misspelled @task argument gets did-you-mean and the list of arguments."""
    message, where = definition_error("""
        @task(cahce=False)   # <-
        def job() -> None: ...
        """)
    assert where in message
    assert "unknown argument 'cahce' (did you mean 'cache'?)" in message
    assert "deps, env, executor, inputs" in message


@pytest.mark.parametrize("params", ["*args", "**kwargs", "top: int = 1, *rest: int"])
def test_var_parameters_are_refused(definition_error: Any, params: str) -> None:
    """*args/**kwargs cannot carry products or options by name."""
    message, where = definition_error(f"""
        @task   # <-
        def job({params}) -> None: ...
        """)
    assert f"task 'job' ({where})" in message
    assert "*args/**kwargs" in message and "named parameter" in message


def test_positional_only_parameter_is_refused(definition_error: Any) -> None:
    """Options are passed by name, so '/' is refused."""
    message, where = definition_error("""
        @task   # <-
        def job(top: int = 1, /) -> None: ...
        """)
    assert where in message and "positional-only" in message and "remove the '/'" in message


def test_unsupported_annotation(definition_error: Any) -> None:
    """int | str is refused, naming the option and the way out."""
    message, where = definition_error("""
        @task   # <-
        def job(top: int | str = 1) -> None: ...
        """)
    assert f"task 'job' ({where})" in message
    assert "option 'top'" in message and "int | str" in message and "define_type" in message


def test_unsupported_return_annotation(definition_error: Any) -> None:
    """A return annotation that is no type at all is refused."""
    message, where = definition_error("""
        @task   # <-
        def job() -> 3: ...
        """)
    assert f"task 'job' ({where})" in message and "return annotation" in message


def test_annotation_that_cannot_be_evaluated(definition_error: Any) -> None:
    """A forward reference to nothing says to define the type first."""
    message, where = definition_error("""
        @task   # <-
        def job(top: "Later" = 1) -> None: ...
        """)
    assert where in message and "could not be evaluated" in message and "before the task" in message


def test_callable_default_is_refused(definition_error: Any) -> None:
    """Defaults are values, not factories."""
    message, where = definition_error("""
        @task   # <-
        def job(top: int = len) -> None: ...
        """)
    assert where in message and "callable default" in message


def test_overlapping_outputs_name_both_tasks(definition_error: Any) -> None:
    """Two tasks declaring the same output file are refused."""
    message, where = definition_error("""
        @task(outputs=["build/out.txt"])
        def a() -> None: ...

        @task(outputs=["build/*.txt"])   # <-
        def b() -> None: ...
        """)
    assert "task 'a'" in message and "task 'b'" in message and where in message
    assert "give each task its own files" in message


def test_task_with_positional_argument_is_refused(definition_error: Any) -> None:
    """@task('name') is a mistake for @task(name='name')."""
    message, where = definition_error("""
        @task("job")   # <-
        def job() -> None: ...
        """)
    assert where in message and "keyword arguments only" in message


def test_bad_type_parent_and_predicate(registry: Registry) -> None:
    """define_type refuses a parent it cannot use and a predicate that is not callable."""
    with pytest.raises(DefinitionError, match=r"type 'X' at .*test_registry.py:\d+: parent"):
        define_type("X", "not a type")
    with pytest.raises(DefinitionError, match="predicate 3 is not callable"):
        define_type("Y", int, 3)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="not a valid name"):
        define_type("two words", int)


def test_import_error_in_the_task_file_is_a_definition_error(definition_error: Any) -> None:
    """Any exception while importing the task file names the line that raised."""
    message, where = definition_error("""
        x = 1 / 0   # <-
        """)
    assert where in message and "ZeroDivisionError" in message


def test_syntax_error_names_file_and_line(definition_error: Any) -> None:
    """A syntax error is a definition error at its line."""
    message, where = definition_error("""
        def broken(:   # <-
        """)
    assert where in message and "syntax error" in message


# -- override ----------------------------------------------------------------------------


@pytest.fixture
def pipeline(registry: Registry) -> Registry:
    """download -> count(top: int = 3) -> int."""

    @task
    def download(url: str = "http://example.invalid") -> str:
        raise RuntimeError("no network in tests")

    @task(deps=[download])
    def count(download: str, top: int = 3) -> int:
        return len(download) + top

    return registry


def test_override_swaps_the_function_and_keeps_the_contract(pipeline: Registry) -> None:
    """Inside override the spec calls the replacement; deps and options stay."""
    original = pipeline.get("download")

    def fake_download(url: str = "http://example.invalid") -> str:
        return "data"

    with pipeline.override("download", fake_download) as spec:
        assert pipeline.get("download").fn is fake_download
        assert spec.options == original.options and spec.product.name == "str"
        assert pipeline.get("count").deps[0].task == "download"
    assert pipeline.get("download") == original


def test_override_restores_after_an_exception(pipeline: Registry) -> None:
    """The original comes back even when the block raises."""
    original = pipeline.get("count")

    def fake(download: str, top: int = 3) -> int:
        return 0

    with pytest.raises(KeyError), pipeline.override(original.fn, fake):
        raise KeyError("boom")
    assert pipeline.get("count") == original


def test_nested_overrides_unwind_in_order(pipeline: Registry) -> None:
    """An override inside another restores the outer one first."""

    def one(download: str, top: int = 3) -> int:
        return 1

    def two(download: str, top: int = 3) -> int:
        return 2

    with pipeline.override("count", one):
        with pipeline.override("count", two):
            assert pipeline.get("count").fn is two
        assert pipeline.get("count").fn is one


def test_nested_overrides_of_dependent_tasks(pipeline: Registry, tmp_path: Path) -> None:
    """Overriding the upstream, then (inside) its consumer, keeps the edge between the fakes."""

    def fake_download(url: str = "http://example.invalid") -> str:
        return "abc"

    def fake_count(download: str, top: int = 3) -> int:
        return len(download) * 10 + top

    with pipeline.override("download", fake_download), pipeline.override("count", fake_count):
        assert pipeline.get("count").deps[0].task == "download"
        assert pipeline.get(fake_download).name == "download"
        result = taskrun.run(
            ["count"], registry=pipeline, root=tmp_path, cache_dir=tmp_path / "cache"
        )
        assert result.products["count"] == 33
    with pytest.raises(UsageError):
        pipeline.get(fake_download)


@pytest.mark.parametrize(
    "signature", ["download: str, top: int = 4) -> int", "download: str, top: int) -> int"]
)
def test_override_accepts_other_defaults(
    pipeline: Registry, signature: str, tmp_path: Path
) -> None:
    """A fake needs the option names and types, not the defaults; the run passes its values."""
    namespace: dict[str, Any] = {}
    exec(f"def fake({signature}:\n    return top", namespace)

    def fake_download(url: str = "file:///elsewhere") -> str:
        return "data"

    with (
        pipeline.override("count", namespace["fake"]),
        pipeline.override("download", fake_download),
    ):
        result = taskrun.run("count", registry=pipeline, root=tmp_path, executor="inline")
    assert result.product("count") == 3  # the original's default


@pytest.mark.parametrize(
    ("signature", "words"),
    [
        (
            "download: str, limit: int = 3) -> int",
            ["option 'top' is missing", "option 'limit' is new"],
        ),
        ("download: str, top: str = '3') -> int", ["option 'top' has type str, not int"]),
        ("download: str, top: int = 3) -> str", ["it returns str, not int"]),
        ("download: str, top: int = 3)", ["it returns any, not int"]),
    ],
)
def test_override_refuses_a_different_contract(
    pipeline: Registry, signature: str, words: list[str]
) -> None:
    """A replacement with other options, option types or product type is refused."""
    namespace: dict[str, Any] = {}
    exec(f"def fake({signature}:\n    return 0", namespace)
    with pytest.raises(DefinitionError) as info, pipeline.override("count", namespace["fake"]):
        pass
    message = info.value.message
    assert "override of task 'count'" in message and "breaks its contract" in message
    assert "test_registry.py:" in message  # where count was defined
    for word in words:
        assert word in message
    assert "same options and return annotation" in message
    assert pipeline.get("count").fn.__name__ == "count"


# -- tasks made in a loop: the spec template per code object -------------------------------


def _factory_specs(registry: Registry, *, templates: bool) -> list[Any]:
    """Tasks made by a factory: shared code, per-task name, deps, defaults, annotations."""
    import dataclasses

    if not templates:
        registry._templates = _NoTemplates()  # type: ignore[assignment]

    def make(i: int, ps: list[Any], kind: type, default: Any) -> Any:
        if ps:

            @task(name=f"n{i}", deps={"a": ps[0], "b": ps[-1]}, retries=1)
            def node(a: int, b: int, x: kind = default, *, y: int = i) -> kind:  # type: ignore[valid-type]
                return x

        else:

            @task(name=f"n{i}", retries=1)
            def node(x: kind = default, *, y: int = i) -> kind:  # type: ignore[valid-type]
                return x

        return node

    with registry.activate():
        made: list[Any] = []
        for i in range(6):
            kind, default = (int, i) if i % 2 else (str, f"s{i}")
            made.append(make(i, made[-2:] if i >= 2 else [], kind, default))
    # Each task calls its own function (the factory's closure), never its template's.
    assert [registry.get(f"n{i}").fn for i in range(6)] == made
    return [dataclasses.replace(registry.get(f"n{i}"), fn=None) for i in range(6)]


class _NoTemplates(dict):  # type: ignore[type-arg]
    """A template store that keeps nothing: every task takes the full path."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def test_tasks_made_in_a_loop_keep_their_own_name_deps_defaults_and_types() -> None:
    """The template per code object gives the same specs as reading each task in full."""
    registry = Registry()
    with_templates = _factory_specs(registry, templates=True)
    without = _factory_specs(Registry(), templates=False)
    assert with_templates == without
    # n4 and n5 were made from the templates n2 and n3 left (str and int forms).
    assert len(registry._templates) == 4
    n3, n4 = with_templates[3], with_templates[4]
    assert [(d.param, d.task) for d in n3.deps] == [("a", "n1"), ("b", "n2")]
    assert [(d.param, d.task) for d in n4.deps] == [("a", "n2"), ("b", "n3")]
    assert [(o.name, o.type.name, o.default) for o in n3.options] == [
        ("x", "int", 3),
        ("y", "int", 3),
    ]
    assert [(o.name, o.type.name, o.default) for o in n4.options] == [
        ("x", "str", "s4"),
        ("y", "int", 4),
    ]
    assert n3.product.name == "int" and n4.product.name == "str"
    assert n3.retries == n4.retries == 1


def test_a_task_made_in_a_loop_is_still_checked_after_the_first(registry: Registry) -> None:
    """A later task of the same code with a bad default or dependency gets the full message."""

    def make(name: str, default: Any, deps: Any = ()) -> Any:
        @task(name=name, deps=deps)
        def node(x: int = default) -> int:
            return x

        return node

    with registry.activate():
        first = make("first", 1)
        make("second", 2, [first])
        with pytest.raises(DefinitionError) as info:
            make("third", "ten", [first])
        assert "task 'third' (" in info.value.message
        assert "default of option 'x' fails its type int" in info.value.message
        with pytest.raises(DefinitionError) as info:
            make("fourth", 4, [first, first])
        assert "task 'fourth' (" in info.value.message
        assert "two dependencies are passed to parameter 'first'" in info.value.message
        with pytest.raises(DefinitionError) as info:
            make("bad name", 5)
        assert "name 'bad name' is not valid" in info.value.message
    assert list(registry.tasks) == ["first", "second"]
    assert registry.get("second").options[0].default == 2
