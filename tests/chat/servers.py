"""Start a `python -m belle ...` server in a subprocess on a free port and wait until it answers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import httpx

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_cli(*args: str, health: str = "/", env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Run `python -m belle ARGS --port P`; yield `http://127.0.0.1:P` once `health` answers 200.

    The server's output goes to a log file that is shown if it fails to start.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="belle-server-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "belle", *args, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8", **(env or {})},
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`belle {' '.join(args)}` exited with {process.returncode}:\n{open(log.name).read()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"`belle {' '.join(args)}` did not answer in {timeout_s} s:\n{open(log.name).read()[-4000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        os.unlink(log.name)
