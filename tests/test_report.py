"""Reporters: plain lines, JSON objects, the live console view, and explain's rendering."""

from __future__ import annotations

import io
import json
import re
import threading

import pytest

from taskrun import events as ev
from taskrun.fingerprint import Change
from taskrun.report import (
    ConsoleReporter,
    JsonReporter,
    PlainReporter,
    change_text,
    explain_json,
    explain_lines,
    is_live_terminal,
    make_reporter,
    printable,
)
from taskrun.scheduler import ExplainItem

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Tty(io.StringIO):
    """A string stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Broken(io.StringIO):
    """A stream whose reader went away (a closed pipe)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def finished(**kw: object) -> ev.RunFinished:
    values: dict[str, object] = {
        "total": 2,
        "cached": 1,
        "ran": 1,
        "failed": 0,
        "skipped": 0,
        "elapsed": 1.25,
        "saved": 4.0,
    }
    values.update(kw)
    return ev.RunFinished(**values)  # type: ignore[arg-type]


def a_run() -> list[ev.Event]:
    """A small run: one hit, one miss with output, one failure, one skip."""
    return [
        ev.RunStarted(tasks=("a", "b", "c", "d"), targets=("d",), jobs=2, executor="thread"),
        ev.TaskCached("a", saved=2.0),
        ev.TaskStarted("b", ("option 'n' changed: 1 -> 2",)),
        ev.TaskRan("b", 0.5, ("option 'n' changed: 1 -> 2",), output="hello\nworld\n"),
        ev.TaskStarted("c", ("no entry",)),
        ev.TaskFailedEvent(
            "c",
            "ValueError: bad",
            traceback='  File "tasks.py", line 3\n    raise ValueError',
            output="about to fail\n",
        ),
        ev.Skipped("d", "upstream 'c' did not complete"),
        finished(total=4, cached=1, ran=1, failed=1, skipped=1),
    ]


def plain(events: list[ev.Event], **kw: int) -> str:
    out = io.StringIO()
    reporter = PlainReporter(out, **kw)
    for e in events:
        reporter(e)
    reporter.close()
    return out.getvalue()


# -- printable ---------------------------------------------------------------------------
def test_printable_drops_escape_sequences() -> None:
    """Colours, cursor moves and titles are removed, the text kept."""
    assert printable("\x1b[31mred\x1b[0m \x1b[2Kx \x1b]0;title\x07y") == "red x y"


def test_printable_keeps_what_a_terminal_shows_after_carriage_returns() -> None:
    """A progress bar drawn with \\r collapses to its last state."""
    assert printable("10%\r50%\r100%\nnext\r\n") == "100%\nnext\n"


def test_printable_drops_other_control_characters() -> None:
    """Bells, backspaces and NULs go; tabs and newlines stay."""
    assert printable("a\x07b\x08c\x00d\te\n") == "abcd\te\n"


# -- plain -------------------------------------------------------------------------------
def test_plain_lines_for_each_event() -> None:
    """Each task event is one line naming the task, misses with their reason."""
    text = plain(a_run())
    assert "cached   a\n" in text
    assert "ran      b (0.50s): option 'n' changed: 1 -> 2\n" in text
    assert "b | hello\nb | world\n" in text
    assert "failed   c: ValueError: bad\n" in text
    assert "skipped  d: upstream 'c' did not complete\n" in text
    summary = "4 tasks: 1 cached, 1 ran, 1 failed, 1 skipped in 1.2s (saved 4.0s)"
    assert text.rstrip().endswith(summary)


def test_plain_shows_failures_again_at_the_end_with_output_and_traceback() -> None:
    """The failed task's output and traceback follow the run, before the summary."""
    text = plain(a_run())
    tail = text[text.index("--- c failed") :]
    assert "--- c failed: ValueError: bad" in tail
    assert "  [c] about to fail" in tail
    assert "raise ValueError" in tail
    assert tail.rstrip().endswith("(saved 4.0s)")


def test_plain_never_writes_control_characters() -> None:
    """Task output full of colours and \\r reaches the log as plain text."""
    events: list[ev.Event] = [
        ev.TaskRan("x", 0.1, ("no entry",), output="\x1b[32mgreen\x1b[0m\r\n10%\r100%\n\x07"),
        ev.TaskFailedEvent("y", "boom \x1b[1m!", traceback="tb\x1b[0m", output="\x1b[31merr\n"),
        finished(failed=1),
    ]
    text = plain(events)
    assert not CONTROL.search(text.replace("\n", ""))
    assert "x | green" in text and "x | 100%" in text and "[y] err" in text


def test_plain_quiet_keeps_failures_and_summary() -> None:
    """-q drops cached and ran lines; -qq also the summary of a good run."""
    quiet = plain(a_run(), quiet=1)
    assert "cached   a" not in quiet and "ran      b" not in quiet
    assert "failed   c" in quiet and "4 tasks:" in quiet
    good = [ev.TaskRan("b", 0.5, ("no entry",)), finished(total=1, cached=0, ran=1)]
    assert plain(good, quiet=2) == ""


def test_plain_verbose_shows_starts_and_early_cutoff() -> None:
    """-v adds a line when a task starts, and notes an unchanged product."""
    text = plain(
        [
            ev.TaskStarted("b", ("forced",), attempt=2),
            ev.TaskRan("b", 0.5, ("forced",), unchanged=True),
        ],
        verbose=1,
    )
    assert "start    b (attempt 2): forced" in text
    assert "[product unchanged: dependents stay cached]" in text


def test_plain_dry_run_ends_with_a_plan_summary() -> None:
    """Planned events, then close(): hit or run with reasons, and the counts."""
    text = plain(
        [
            ev.Planned("a", "cached"),
            ev.Planned("b", "run", ("input 'x.txt' changed",)),
        ]
    )
    assert text.splitlines() == [
        "cached   a",
        "run      b: input 'x.txt' changed",
        "dry run: 2 tasks: 1 cached, 1 would run (nothing was run)",
    ]


def test_plain_warning_and_interrupted_lines() -> None:
    """Warnings name their task; an interruption names what was in flight."""
    text = plain([ev.Warned("entry corrupt", task="a"), ev.Interrupted(("b", "c"))])
    assert "warning  a: entry corrupt" in text
    assert "interrupted (in flight, not recorded: b, c)" in text


def test_plain_remote_upload_line_counts_what_is_left() -> None:
    """The end-of-run upload line says how many entries are left, in the right number, so
    it cannot clash with the summary's count of every upload of the run."""
    url = "file:///shared"
    summary = ev.RemoteSummary(url, 0, 3, 0, 0, 3600, 6, False)
    one = plain([ev.RemoteUploading(url, 1), summary])
    assert one.splitlines() == [
        "remote   finishing uploads to file:///shared: 1 entry left",
        "remote   file:///shared: 0 hit(s), 3 uploaded, 0 B down, 3.6 kB up, 6 request(s)",
    ]
    two = plain([ev.RemoteUploading(url, 2)])
    assert two == "remote   finishing uploads to file:///shared: 2 entries left\n"


def test_a_broken_stream_silences_the_reporter_not_the_run() -> None:
    """Writing to a closed pipe raises nothing."""
    reporter = PlainReporter(Broken())
    for e in a_run():
        reporter(e)
    reporter.close()
    assert reporter.failures  # it still followed the run


def test_close_twice_writes_the_plan_summary_once() -> None:
    """close() is idempotent."""
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter(ev.Planned("a", "cached"))
    reporter.close()
    reporter.close()
    assert out.getvalue().count("dry run:") == 1


# -- json --------------------------------------------------------------------------------
def test_json_one_object_per_event_and_summary_last() -> None:
    """Every line parses; the last is the summary with ok."""
    out = io.StringIO()
    reporter = JsonReporter(out)
    for e in a_run():
        reporter(e)
    reporter.close()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["event"] for d in docs] == [
        "run-started",
        "cached",
        "started",
        "ran",
        "started",
        "failed",
        "skipped",
        "summary",
    ]
    assert docs[-1]["ok"] is False and docs[-1]["failed"] == 1
    assert docs[3]["output"] == "hello\nworld\n"


def test_json_dry_run_ends_with_plan_summary_object() -> None:
    """A dry run's last object counts hits and runs."""
    out = io.StringIO()
    reporter = JsonReporter(out)
    reporter(ev.Planned("a", "run", ("no entry",)))
    reporter.close()
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last == {"event": "plan-summary", "total": 1, "cached": 0, "run": 1}


# -- choosing ------------------------------------------------------------------------------
def test_make_reporter_picks_by_stream_and_environment() -> None:
    """JSON when asked; console on a terminal; plain in CI, on pipes and dumb terminals."""
    assert isinstance(make_reporter(as_json=True, stream=Tty(), environ={}), JsonReporter)
    assert isinstance(make_reporter(stream=Tty(), environ={}), ConsoleReporter)
    assert type(make_reporter(stream=Tty(), environ={"CI": "true"})) is PlainReporter
    assert type(make_reporter(stream=io.StringIO(), environ={})) is PlainReporter
    assert type(make_reporter(stream=Tty(), environ={"TERM": "dumb"})) is PlainReporter
    assert isinstance(make_reporter(stream=Tty(), environ={"CI": "false"}), ConsoleReporter)


def test_is_live_terminal_survives_streams_without_isatty() -> None:
    """An odd stream is not a terminal."""
    assert is_live_terminal(object(), {}) is False  # type: ignore[arg-type]


def test_no_color_turns_off_colours_on_the_console() -> None:
    """NO_COLOR keeps the live view but drops SGR colour codes."""
    out = Tty()
    reporter = make_reporter(stream=out, environ={"NO_COLOR": "1"})
    reporter(ev.TaskRan("b", 0.5, ("no entry",)))
    assert "\x1b[3" not in out.getvalue() and "ran      b" in out.getvalue()


# -- console -----------------------------------------------------------------------------
def console(size: tuple[int, int] = (80, 24), **kw: int) -> tuple[ConsoleReporter, Tty]:
    out = Tty()
    reporter = ConsoleReporter(out, color=False, size=size, **kw)
    reporter.TICK = 3600  # no background redraws unless a test wants them
    return reporter, out


def screen(text: str) -> list[str]:
    """What a terminal would show: apply cursor-up + erase-to-end to the written text."""
    lines: list[str] = [""]
    for token in re.split(r"(\x1b\[\d*A\r\x1b\[J|\n)", text):
        if token == "\n":
            lines.append("")
        elif token.startswith("\x1b["):
            up = int(token[2 : token.index("A")])
            del lines[len(lines) - 1 - up :]
            lines.append("")
        else:
            lines[-1] += token
    return lines[:-1] if lines[-1] == "" else lines


def test_console_shows_tasks_in_flight_with_a_progress_count() -> None:
    """Started tasks appear below the permanent lines with [done/total]."""
    reporter, out = console()
    reporter(ev.RunStarted(tasks=("a", "b", "c"), targets=("c",), jobs=2, executor="thread"))
    reporter(ev.TaskCached("a", saved=1.0))
    reporter(ev.TaskStarted("b", ("no entry",)))
    shown = screen(out.getvalue())
    assert shown[-1] == "[1/3] 1 running"
    assert shown[-2].split() == ["b", "0.0s"]
    reporter.close()


def test_console_erases_the_live_view_before_permanent_lines() -> None:
    """A finished task's line replaces the live view; the view comes back below it."""
    reporter, out = console()
    reporter(ev.RunStarted(tasks=("a", "b"), targets=("b",), jobs=2, executor="thread"))
    reporter(ev.TaskStarted("a", ("no entry",)))
    reporter(ev.TaskStarted("b", ("no entry",)))
    reporter(ev.TaskRan("a", 0.2, ("no entry",), output="hi\n"))
    shown = screen(out.getvalue())
    assert shown[0] == "ran      a (0.20s): no entry"
    assert shown[1] == "a | hi"
    assert shown[-1] == "[1/2] 1 running"
    reporter(ev.TaskRan("b", 0.3, ("no entry",)))
    reporter(finished(total=2, cached=0, ran=2))
    reporter.close()
    assert screen(out.getvalue())[-1].startswith("2 tasks: 0 cached, 2 ran")
    assert not any("running" in line for line in screen(out.getvalue()))


def test_console_lists_cached_tasks_only_when_verbose() -> None:
    """Hits are counted; -v lists them."""
    reporter, out = console()
    reporter(ev.TaskCached("a", saved=1.0))
    assert "cached" not in out.getvalue()
    reporter, out = console(verbose=1)
    reporter(ev.TaskCached("a", saved=1.0))
    assert "cached   a" in out.getvalue()


def test_console_live_lines_fit_a_narrow_terminal() -> None:
    """No live line is wider than the terminal, however long the task names."""
    reporter, out = console(size=(20, 24))
    reporter(ev.RunStarted(tasks=("x" * 50, "y" * 50), targets=(), jobs=2, executor="thread"))
    reporter(ev.TaskStarted("x" * 50, ("no entry",)))
    reporter(ev.TaskStarted("y" * 50, ("no entry",)))
    live = screen(out.getvalue())
    assert len(live) == 3
    assert all(len(line) < 20 for line in live)
    reporter.close()


def test_console_live_lines_use_80_columns_when_the_terminal_says_0x0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A terminal that never set its size (0x0, and shutil says 0x0 too, as on Python
    3.10) gets 80x24: live lines are not cut to 10 characters."""
    import os
    import shutil

    class SizedTty(Tty):
        def fileno(self) -> int:
            return 1

    zero = os.terminal_size((0, 0))
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: zero)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: zero)
    out = SizedTty()
    reporter = ConsoleReporter(out, color=False)
    reporter.TICK = 3600
    name = "a_task_with_a_rather_long_name"
    reporter(ev.RunStarted(tasks=(name,), targets=(name,), jobs=1, executor="thread"))
    reporter(ev.TaskStarted(name, ("no entry",)))
    live = screen(out.getvalue())
    assert live[-2].split() == [name, "0.0s"]
    assert live[-1] == "[0/1] 1 running"
    reporter.close()


def test_console_caps_the_live_view_to_the_terminal_height() -> None:
    """Many tasks in flight on a short terminal: the rest are counted, not drawn."""
    reporter, out = console(size=(80, 5))
    names = tuple(f"t{i}" for i in range(8))
    reporter(ev.RunStarted(tasks=names, targets=(), jobs=8, executor="thread"))
    for n in names:
        reporter(ev.TaskStarted(n, ("no entry",)))
    live = screen(out.getvalue())
    assert len(live) <= 4
    assert "and 6 more" in live[-2]
    assert live[-1] == "[0/8] 8 running"
    reporter.close()


def test_console_shows_waiting_tasks() -> None:
    """A task another process computes is shown as waiting."""
    reporter, out = console()
    reporter(ev.RunStarted(tasks=("a",), targets=("a",), jobs=1, executor="thread"))
    reporter(ev.TaskWaiting("a"))
    live = screen(out.getvalue())
    assert "waiting for another taskrun" in live[-2]
    assert live[-1] == "[0/1] 0 running, 1 waiting"
    reporter.close()


def test_console_close_erases_the_view_and_stops_the_ticker() -> None:
    """After close() nothing live is on screen and the thread has ended."""
    reporter, out = console()
    reporter.TICK = 0.01
    reporter(ev.RunStarted(tasks=("a",), targets=("a",), jobs=1, executor="thread"))
    reporter(ev.TaskStarted("a", ("no entry",)))
    ticker = reporter._ticker
    assert ticker is not None and ticker.is_alive()
    reporter.close()
    ticker.join(timeout=10)
    assert not ticker.is_alive()
    assert screen(out.getvalue()) == []


def test_console_ticker_redraws_elapsed_time() -> None:
    """The background thread redraws the view without any event."""
    drawn = threading.Event()

    class Watch(Tty):
        writes = 0

        def write(self, text: str) -> int:
            Watch.writes += 1
            if Watch.writes >= 4:
                drawn.set()
            return super().write(text)

    reporter = ConsoleReporter(Watch(), color=False, size=(80, 24))
    reporter.TICK = 0.01
    reporter(ev.RunStarted(tasks=("a",), targets=("a",), jobs=1, executor="thread"))
    reporter(ev.TaskStarted("a", ("no entry",)))
    assert drawn.wait(timeout=30)
    reporter.close()


def test_console_falls_back_to_plain_lines_when_drawing_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the live view turns it off; the events still print, nothing raises."""
    reporter, out = console()

    def broken(self: ConsoleReporter) -> str:
        raise RuntimeError("drawing bug")

    monkeypatch.setattr(ConsoleReporter, "_live_text", broken)
    reporter(ev.TaskStarted("a", ("no entry",)))
    reporter(ev.TaskRan("a", 0.1, ("no entry",)))
    reporter.close()
    assert "ran      a (0.10s): no entry" in out.getvalue()
    assert "\x1b[" not in out.getvalue()


def test_console_survives_a_broken_terminal() -> None:
    """A terminal that went away: events are taken, nothing raises."""
    reporter = ConsoleReporter(Broken(), color=True, size=(80, 24))
    for e in a_run():
        reporter(e)
    reporter.close()
    assert reporter.failures


def test_console_colours_lines_when_asked() -> None:
    """With colour, a failure is red and the summary bold."""
    out = Tty()
    reporter = ConsoleReporter(out, color=True, size=(80, 24))
    for e in a_run():
        reporter(e)
    reporter.close()
    text = out.getvalue()
    assert "\x1b[31m" in text and "\x1b[1m" in text
    assert "failed   c: ValueError: bad" in ANSI.sub("", text)


# -- explain -------------------------------------------------------------------------------
def item(
    task: str,
    action: str,
    changes: tuple[Change, ...] = (),
    reasons: tuple[str, ...] = (),
    latest: str | None = "f" * 32,
    fingerprint: str = "e" * 32,
) -> ExplainItem:
    return ExplainItem(task, action, fingerprint, reasons, changes, latest)


def test_change_text_shows_old_and_new_values() -> None:
    """Digests are cut to 12 digits; values already in the reason are not repeated."""
    assert change_text(Change("input", "a.txt", "1" * 32, "2" * 32)) == (
        "input 'a.txt' changed: 111111111111 -> 222222222222"
    )
    assert change_text(Change("option", "n", "1", "2")) == "option 'n' changed: 1 -> 2"
    assert change_text(Change("helper", "h", "a" * 32, None)) == (
        "code of helper 'h' changed: aaaaaaaaaaaa -> none"
    )
    assert "runs first" in change_text(Change("upstream", "u", "3" * 32, "(will run)"))


def test_explain_lines_per_task() -> None:
    """Hits, misses with each change, a task never recorded, and the counts."""
    lines = explain_lines(
        [
            item("a", "cached", latest="e" * 32),
            item("b", "run", (Change("option", "n", "1", "2"),), ("option 'n' changed: 1 -> 2",)),
            item("c", "run", reasons=("no entry",), latest=None),
        ]
    )
    assert lines == [
        "a: cached",
        "b: would run",
        "  - option 'n' changed: 1 -> 2",
        "c: would run",
        "  - no entry: nothing recorded for this task yet",
        "3 tasks: 1 cached, 2 would run (compared with the entry each task last used)",
    ]


def test_explain_lines_note_a_hit_on_an_older_entry() -> None:
    """A hit on another entry than the one the task last used says how that one differs."""
    lines = explain_lines([item("a", "cached", (Change("option", "n", "2", "1"),))])
    assert lines[0] == "a: cached (another entry than the one it last used, which differs:)"
    assert lines[1] == "  - option 'n' changed: 2 -> 1"


def test_explain_json_carries_kind_name_old_new() -> None:
    """Machines get every change as data."""
    doc = explain_json([item("b", "run", (Change("env", "CC", "1" * 32, None),), ("x",))])
    assert doc["run"] == 1 and doc["cached"] == 0
    change = doc["tasks"][0]["changes"][0]
    assert change["kind"] == "env" and change["name"] == "CC"
    assert change["old"] == "1" * 32 and change["new"] is None
    json.dumps(doc)


def test_explain_renders_the_caches_warnings_first_and_as_data() -> None:
    """The cache's warnings open the text (control characters removed) and are a JSON list."""
    lines = explain_lines([item("a", "cached", latest="e" * 32)], ["entry x is corrupt\x1b[2J"])
    assert lines[:2] == ["warning  entry x is corrupt", "a: cached"]
    doc = explain_json([item("a", "cached")], ["entry x is corrupt"])
    assert doc["warnings"] == ["entry x is corrupt"]
    assert explain_json([])["warnings"] == []


def test_console_counts_the_items_of_a_mapped_task() -> None:
    """A mapped task in progress shows `compile done/items`; its items replace it in the count."""
    reporter, out = console()
    reporter(
        ev.RunStarted(tasks=("src", "compile"), targets=("compile",), jobs=2, executor="thread")
    )
    reporter(ev.TaskCached("src", saved=0.1))
    names = ("compile[a.c]", "compile[b.c]", "compile[c.c]")
    reporter(ev.MapExpanded("compile", items=names, keys=("a.c", "b.c", "c.c")))
    reporter(ev.TaskCached("compile[a.c]", saved=0.1))
    reporter(ev.TaskStarted("compile[b.c]", ("no entry",)))
    assert screen(out.getvalue())[-1] == "[2/4] 1 running, compile 1/3"
    reporter.close()


def test_json_events_of_item_calls_carry_their_mapped_task_and_key() -> None:
    """`mapped` and `item` fields on every event of an item call."""
    out = io.StringIO()
    reporter = JsonReporter(out)
    reporter(ev.MapExpanded("compile", items=("compile[src/a.c]",), keys=("src/a.c",)))
    reporter(ev.TaskRan("compile[src/a.c]", 0.1, ("no entry",)))
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[0] == {
        "event": "mapped",
        "task": "compile",
        "items": ["compile[src/a.c]"],
        "keys": ["src/a.c"],
    }
    assert docs[1]["mapped"] == "compile" and docs[1]["item"] == "src/a.c"
