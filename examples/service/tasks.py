"""Start a service, run integration tests against it, always stop it, alert on failure.

`taskrun run` (no target) runs the tasks nothing depends on: `stop_service` and `alert`,
and through them everything else. See README.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from taskrun import Outcome, task

STATE = Path("build")


@task(cache=False, timeout=30)
def start_service(port: int = 0) -> dict[str, int]:
    """Serve site/ over HTTP on loopback (PORT 0: any free port); wait until it answers."""
    STATE.mkdir(exist_ok=True)
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            "site",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (STATE / "service.json").write_text(json.dumps({"pid": proc.pid, "port": port}))
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError(f"the service did not answer on port {port}")
    print(f"service {proc.pid} listening on 127.0.0.1:{port}")
    return {"pid": proc.pid, "port": port}


@task(deps=[start_service], cache=False, retries=2, retry_delay=0.2, retry_on=(ConnectionError,))
def integration_tests(start_service: dict[str, int], expect: str = "hello") -> int:
    """Fetch the service's page and check that it contains EXPECT."""
    url = f"http://127.0.0.1:{start_service['port']}/index.html"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    if expect not in page:
        raise AssertionError(f"{url} does not contain {expect!r}")
    print(f"ok: {url} contains {expect!r}")
    return 1


@task(deps=[start_service, integration_tests], run_if="always", cache=False)
def stop_service(start_service: Outcome[dict[str, int]], integration_tests: Outcome[int]) -> str:
    """Stop the service, whatever the tests did (a `finally`)."""
    if not start_service.ok:
        return f"nothing to stop (start_service {start_service.state})"
    pid = start_service.value["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    (STATE / "service.stopped").write_text(f"{pid} after tests {integration_tests.state}\n")
    return f"stopped {pid} (tests {integration_tests.state})"


@task(deps=[integration_tests], run_if="failed", cache=False)
def alert(integration_tests: Outcome[int], channel: str = "file") -> str:
    """Tell someone the tests failed (here: write build/alert.txt)."""
    message = f"integration tests failed: {integration_tests.error}"
    (STATE / "alert.txt").write_text(message + "\n")
    return message


@task(deps=[integration_tests], when=lambda channel: channel != "none", cache=False)
def announce(integration_tests: int, channel: str = "file") -> str:
    """Say that the tests passed, unless CHANNEL is none (decided before anything runs)."""
    (STATE / "announce.txt").write_text("integration tests passed\n")
    return "announced"
