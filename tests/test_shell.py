"""Tests for taskrun.shell: sh() runs commands, captures and echoes output, reports failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from taskrun.errors import ShellError, TaskrunError
from taskrun.shell import ShResult, sh


def test_sh_returns_captured_output(capsys: pytest.CaptureFixture[str]) -> None:
    """A successful command returns its exit code and both streams."""
    result = sh("echo out; echo err >&2")
    assert result == ShResult("echo out; echo err >&2", 0, "out\n", "err\n")
    assert result.ok


def test_sh_echoes_to_sys_streams(capsys: pytest.CaptureFixture[str]) -> None:
    """Output is also written to sys.stdout/sys.stderr, a last partial line included."""
    sh("echo line; echo oops >&2; printf tail")
    captured = capsys.readouterr()
    assert captured.out == "line\ntail"
    assert captured.err == "oops\n"


def test_sh_echo_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    """With echo=False output is captured but not shown."""
    assert sh("echo quiet", echo=False).stdout == "quiet\n"
    assert capsys.readouterr().out == ""


def test_sh_failure_names_command_code_and_tail(capsys: pytest.CaptureFixture[str]) -> None:
    """A non-zero exit raises ShellError with the command, the code and the last 20 lines."""
    cmd = "for i in $(seq 1 30); do echo line-$i; done; echo boom >&2; exit 3"
    with pytest.raises(ShellError) as info:
        sh(cmd)
    error = info.value
    message = str(error)
    assert cmd in message and "exited with code 3" in message
    assert "boom" in message and "line-30" in message and "line-12" in message
    assert "line-11\n" not in message + "\n"  # only the last 20 lines
    assert (error.returncode, error.command, error.exit_code) == (3, cmd, 1)
    assert isinstance(error, TaskrunError)


def test_sh_without_check_returns_failure() -> None:
    """check=False returns the non-zero result instead of raising."""
    result = sh("exit 4", check=False)
    assert (result.returncode, result.ok) == (4, False)


def test_sh_list_runs_without_shell(capsys: pytest.CaptureFixture[str]) -> None:
    """A list is run directly: shell syntax in an argument stays literal."""
    result = sh([sys.executable, "-c", "import sys; print(sys.argv[1])", "$HOME; echo x"])
    assert result.stdout == "$HOME; echo x\n"
    assert result.cmd.startswith(sys.executable)


def test_sh_env_adds_to_environment(capsys: pytest.CaptureFixture[str]) -> None:
    """env= adds variables on top of the current environment (PATH still works)."""
    result = sh('echo "$TASKRUN_TEST_VAR"; command -v sh', env={"TASKRUN_TEST_VAR": "v1"})
    first, second = result.stdout.splitlines()
    assert first == "v1" and second.endswith("/sh")


def test_sh_runs_in_cwd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cwd= sets the command's working directory."""
    assert sh("pwd", cwd=tmp_path).stdout.strip() == str(tmp_path.resolve())


def test_sh_timeout_kills_and_raises() -> None:
    """A command running past its timeout is killed and reported."""
    with pytest.raises(ShellError, match=r"timed out after 0\.2s"):
        sh("sleep 10", timeout=0.2)


def test_sh_unstartable_command_raises() -> None:
    """A program that cannot be started is a ShellError naming it, even with check=False."""
    with pytest.raises(ShellError, match=r"no-such-program-xyz.*could not be started"):
        sh(["no-such-program-xyz"], check=False)


def test_sh_decodes_invalid_utf8_with_replacement(capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes that are not UTF-8 do not break capture: they are replaced."""
    result = sh(r"printf 'a\377b\n'")
    assert result.stdout == "a\ufffdb\n"
