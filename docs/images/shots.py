"""Make the screenshots of docs/watching.md (needs chromium): python docs/images/shots.py

live-view.png: a real run's events (``taskrun run --json``) replayed into the console
reporter up to the moment its slowest task is half way, the terminal screen that leaves
drawn as HTML, screenshotted. report.png: ``taskrun report`` of the same run.
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from taskrun import events as ev
from taskrun.report import ConsoleReporter

HERE = Path(__file__).resolve().parent
TASKS = '''
import logging, time
import taskrun
from taskrun import sh, task

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


@task
def download() -> int:
    for i in range(1, 41):
        time.sleep(0.05)
        taskrun.progress(i, 40, f"fetched part-{i:02d}.csv")
    return 40


@task
def lint() -> None:
    sh("echo 'checking 12 modules'; sleep 0.5; echo 'no problems found'")


@task
def compile() -> int:
    for step in ("parse", "typecheck", "codegen", "link"):
        print(f"{step}: ok", flush=True)
        time.sleep(0.3)
    return 4


@task(deps=[download, compile])
def report(download: int, compile: int) -> str:
    logging.getLogger("report").info("writing report.md")
    return f"{download} parts, {compile} steps"
'''
CHROMIUM = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SGR = {"1": "font-weight:bold", "2": "opacity:0.6", "31": "color:#ef5350",
       "32": "color:#66bb6a", "33": "color:#ffca28"}


def screen(raw: str) -> list[str]:
    """The terminal's lines after ``raw``: the reporter only erases upwards and writes."""
    lines: list[str] = [""]
    for part in re.split(r"(\x1b\[\d+A\r\x1b\[J)", raw):
        up = re.fullmatch(r"\x1b\[(\d+)A\r\x1b\[J", part)
        if up:
            del lines[len(lines) - 1 - int(up[1]) : len(lines) - 1]
            continue
        chunks = part.split("\n")
        lines[-1] += chunks[0]
        lines.extend(chunks[1:])
    return lines


def to_html(line: str) -> str:
    out, style = [], ""
    for piece in re.split(r"(\x1b\[[\d;]*m)", line):
        code = re.fullmatch(r"\x1b\[([\d;]*)m", piece)
        if code:
            styles = [SGR[c] for c in code[1].split(";") if c in SGR]
            style = ";".join(styles)
            continue
        if piece:
            out.append(f'<span style="{style}">{html.escape(piece)}</span>')
    return "".join(out)


def main() -> None:
    chromium = shutil.which("chromium") or sys.exit("needs chromium")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tasks.py").write_text(TASKS)
        done = subprocess.run(
            [sys.executable, "-m", "taskrun", "run", "-j", "3", "--json"],
            cwd=root, capture_output=True, text=True, check=True,
        )
        events = [json.loads(line) for line in done.stdout.splitlines()]
        kinds = {
            c.kind: c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event)
        }
        out = io.StringIO()
        reporter = ConsoleReporter(out, color=True, size=(96, 24))
        reporter._start_ticker = lambda: None  # type: ignore[method-assign]  # no redraw thread
        import taskrun.report as shown

        clock = [0.0]  # the replay runs on the run's own clock: elapsed times as they were

        class Clock:
            @staticmethod
            def monotonic() -> float:
                return clock[0]

        shown.time = Clock  # type: ignore[assignment]
        for doc in events:
            clock[0] = doc.get("time", clock[0])
            kind = kinds[doc.pop("event")]
            doc.pop("ok", None)
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
            event = kind(**fields)
            reporter(event)
            if isinstance(event, ev.TaskProgress) and event.done >= 20:
                with reporter._lock:
                    out.write(reporter._erase() + reporter._live_text())
                break
        lines = screen(out.getvalue())
        page = root / "live.html"
        body = "\n".join(to_html(line) for line in lines)
        page.write_text(
            "<html><body style='margin:0;background:#1e1e1e'><pre style='color:#ddd;"
            "font:14px/1.35 DejaVu Sans Mono,monospace;padding:12px;margin:0'>"
            f"$ taskrun run -j 3\n{body}</pre></body></html>"
        )
        run = [chromium, *CHROMIUM, f"--user-data-dir={root / 'profile'}"]
        subprocess.run([*run, "--window-size=860,260", f"--screenshot={HERE / 'live-view.png'}",
                        page.as_uri()], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "taskrun", "report", "-o", str(root / "r.html")],
                       cwd=root, check=True, capture_output=True)
        subprocess.run([*run, "--window-size=1100,900", f"--screenshot={HERE / 'report.png'}",
                        (root / "r.html").as_uri()], check=True, capture_output=True)
        print("\n".join(re.sub(r"\x1b\[[\d;]*m", "", line) for line in lines))


if __name__ == "__main__":
    main()
