"""The pytest plugin taskrun.testing, run as a user would: in a pytest of its own."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
    from pathlib import Path

    import pytest

    from taskrun import File, task
    from taskrun.testing import assert_tasks


    def define():
        @task
        def numbers(n: int = 3) -> list[int]:
            return list(range(n))

        @task(deps=[numbers], outputs=["build/total.txt"])
        def total(numbers: list[int], scale: float = 1.0) -> File:
            out = File("build/total.txt")
            out.parent.mkdir(exist_ok=True)
            out.write_text(str(sum(numbers) * scale))
            return out

        return numbers, total


    def test_ran_then_cached(run_tasks, taskrun_project):
        numbers, total = define()
        assert_tasks(run_tasks(total), ran=["numbers", "total"], cached=[])
        second = run_tasks(total)
        assert_tasks(second, cached=["numbers", "total"], ran=[])
        assert second.product(numbers) == [0, 1, 2]
        assert taskrun_project.path("build/total.txt").read_text() == "3.0"
        assert (taskrun_project.cache_dir).is_dir()


    def test_options_and_fakes(run_tasks, override):
        numbers, total = define()

        def fake_numbers(n: int = 100) -> list[int]:
            return [n, n]

        with override(numbers, fake_numbers):
            result = run_tasks(total, options={"scale": "0.5"})
        assert result.product(numbers) == [3, 3]
        assert_tasks(result, ran=["numbers", "total"])


    def test_fake_with_another_type_is_refused(override):
        numbers, total = define()

        def fake_numbers(n: str = "3") -> list[int]:
            return []

        with pytest.raises(Exception, match="option 'n' has type str, not int"):
            with override(numbers, fake_numbers):
                pass


    def test_assert_tasks_says_what_happened(run_tasks):
        numbers, total = define()
        result = run_tasks(total)
        with pytest.raises(AssertionError) as info:
            assert_tasks(result, cached=["numbers"])
        message = str(info.value)
        assert "cached: not ['numbers']" in message
        assert "numbers: ran" in message and "total: ran" in message


    def test_a_written_project(taskrun_project, run_tasks):
        taskrun_project.write(
            """
            import helpers
            from taskrun import task

            @task
            def greet(name: str = "world") -> str:
                return helpers.hello(name)
            """,
            files={"helpers.py": "def hello(name):\\n    return 'hello ' + name\\n"},
        )
        assert run_tasks("greet", options={"name": "you"}).product("greet") == "hello you"
'''


def test_plugin_fixtures_work_in_a_users_test_suite(pytester: pytest.Pytester) -> None:
    """Registered by its entry point: a user's tests get the fixtures without any import."""
    pytester.makepyfile(test_user=TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_outputs_stay_in_the_temporary_project(pytester: pytest.Pytester) -> None:
    """A copied project writes its outputs under the temporary copy, not the original."""
    original = pytester.mkdir("myproject")
    (original / "tasks.py").write_text(
        "from taskrun import File, task\n\n"
        "@task(outputs=['build/out.txt'])\n"
        "def make() -> File:\n"
        "    out = File('build/out.txt')\n"
        "    out.parent.mkdir(exist_ok=True)\n"
        "    out.write_text('made')\n"
        "    return out\n"
    )
    pytester.makepyfile(
        test_copy=f"""
        from taskrun.testing import assert_tasks

        def test_copy(taskrun_project, run_tasks):
            taskrun_project.copy({str(original)!r})
            assert_tasks(run_tasks("make"), ran=["make"])
            assert taskrun_project.path("build/out.txt").read_text() == "made"
    """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (original / "build").exists()
    assert not (original / ".taskrun").exists()
