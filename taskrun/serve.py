"""``taskrun serve``: the project's run records over read-only HTTP on 127.0.0.1.

Routes (GET and HEAD only; any other method is answered ``405 Method Not Allowed``):

- ``/`` the report page of the run in progress (else of the last run), following it live;
- ``/runs/<id>`` the report page of one run (live while it runs);
- ``/api/runs`` every run, newest first: id, state, start, elapsed, command, totals;
- ``/api/runs/<id>`` one run's record as JSON (``last`` names the newest);
- ``/api/runs/current`` the run in progress, its tasks with their live states, progress
  and last output lines (404 when no run is in progress).

Each request reads the records afresh (they are small, and another process appends to
the one in progress), so the server holds no state. Loopback only: it binds 127.0.0.1.
Built on the standard library's :class:`http.server.ThreadingHTTPServer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from taskrun.errors import UsageError

__all__ = ["make_server", "serve"]

HOST = "127.0.0.1"


def make_server(directory: Path, port: int) -> ThreadingHTTPServer:
    """A server of the records in ``directory`` on 127.0.0.1:``port`` (0: any free port)."""

    class Handler(_Handler):
        runs_dir = directory

    try:
        server = ThreadingHTTPServer((HOST, port), Handler)
    except OSError as exc:
        raise UsageError(
            f"cannot serve on {HOST}:{port}: {exc.strerror or exc}; choose another --port"
            " (0 picks a free one)"
        ) from None
    server.daemon_threads = True
    return server


def serve(directory: Path, port: int, *, announce: Callable[[str], None]) -> None:
    """Serve until Ctrl-C; ``announce`` gets the URL once the port is bound."""
    server = make_server(directory, port)
    host, bound = server.server_address[:2]
    announce(f"http://{host!s}:{bound}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class _Handler(BaseHTTPRequestHandler):
    runs_dir: Path
    server_version = "taskrun"

    # -- read-only: GET and HEAD ------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            _json({"error": f"{self.command} is not allowed: taskrun serve is read-only"}),
            "application/json",
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # perf/quiet: a page polling every second would flood the terminal

    # -- routes ---------------------------------------------------------------------------------
    def _answer(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path).rstrip("/") or "/"
        try:
            status, body, kind = self._route(path)
        except UsageError as exc:
            status, body = HTTPStatus.NOT_FOUND, _json({"error": exc.message})
            kind = "application/json"
        self._send(status, b"" if head else body, kind, length=len(body))

    def _route(self, path: str) -> tuple[HTTPStatus, bytes, str]:
        from taskrun.report_html import render_report
        from taskrun.runs import find_run, list_runs

        if path == "/api/runs":
            doc = [r.brief() for r in list_runs(self.runs_dir)]
            return HTTPStatus.OK, _json(doc), "application/json"
        if path == "/api/runs/current":
            record = self._current()
            if record is None:
                return (
                    HTTPStatus.NOT_FOUND,
                    _json({"error": "no run in progress"}),
                    "application/json",
                )
            return HTTPStatus.OK, _json(record.to_json()), "application/json"
        if path.startswith("/api/runs/"):
            record = find_run(self.runs_dir, path.removeprefix("/api/runs/"))
            return HTTPStatus.OK, _json(record.to_json()), "application/json"
        if path == "/" or path.startswith("/runs/"):
            if path == "/":
                record = self._current() or find_run(self.runs_dir, None)
            else:
                record = find_run(self.runs_dir, path.removeprefix("/runs/"))
            page = render_report(record, live_url=f"/api/runs/{record.id}")
            return HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8"
        return HTTPStatus.NOT_FOUND, _json({"error": f"no such page: {path}"}), "application/json"

    def _current(self) -> Any:
        from taskrun.runs import list_runs

        return next((r for r in list_runs(self.runs_dir) if r.state == "running"), None)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        kind: str,
        *,
        length: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode("utf-8")
