"""Servers for the chat tests: `python -m belle ARGS --port P` in a subprocess, as a user starts it.

`start_cli(...)` (also the fixture of that name) waits until the server answers, yields a `Server`
(its URL, process id and log) and stops it afterwards. Its output goes to a log that is shown if it fails to start, and attached to
the report of any test that fails while it runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import httpx
import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
LOG_TAIL = 4000
RUNNING: dict[str, Path] = {}


class Server(NamedTuple):
    url: str
    pid: int
    log: Path


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]


@contextlib.contextmanager
def start_cli(*args: str, ready: str = "/", env: dict[str, str] | None = None, timeout_s: float = 180) -> Iterator[Server]:
    """Run `python -m belle ARGS --port P` offline; once GET `ready` answers 200, yield its `Server`
    (url `http://127.0.0.1:P`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = f"belle {' '.join(args)} --port {port}"
    with tempfile.TemporaryDirectory(prefix="belle-server-") as folder:
        log = Path(folder) / "server.log"
        with log.open("w", encoding="utf-8") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "belle", *args, "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1",
                     "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
            )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"`{command}` exited with {process.returncode}:\n{_tail(log)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready, timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`{command}` did not answer in {timeout_s} s:\n{_tail(log)}")
                time.sleep(0.25)
            RUNNING[command] = log
            yield Server(url, process.pid, log)
        finally:
            RUNNING.pop(command, None)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session", name="start_cli")
def start_cli_fixture():
    """`with start_cli("serve", "--model", DIR, ready="/health") as server: ...`"""
    return start_cli


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the logs of the servers running when a test fails."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for command, log in RUNNING.items():
            if log.exists():
                report.sections.append((f"log of `{command}`", _tail(log)))
