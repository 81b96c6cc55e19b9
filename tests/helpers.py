"""Small helpers every test folder shares: JSON Lines files written and read back, a module run in a
fresh process, a free port, and a count of the text a reader took from a file.

Import them as `from tests.helpers import read_jsonl` (tests run with `--import-mode=importlib` from the
repository root, so `tests` is importable as a package; conftest modules are not meant to be imported).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable


def read_jsonl(path: Path) -> list[Any]:
    """Every line of `path` parsed as one JSON value; a blank or broken line fails the test."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    """One line per record: strings written as they are (to test broken lines), anything else dumped
    as JSON without ASCII escapes. Creates the parent folders; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return path


def write_lines(path: Path, *lines: Any) -> Path:
    """`write_jsonl(path, lines)` with the lines as arguments."""
    return write_jsonl(path, lines)


REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline and with UTF-8 output, plus `extra`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8", **extra}


def run_module(module: str, *args: Any, cwd: Path | None = None, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a fresh process (in the repository root unless `cwd`), with extra
    environment variables; returns the finished process, whatever its exit status."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=cli_env(**env), cwd=cwd or REPO, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CountedText:
    """A text file whose lines and reads add their length to `counter[0]`."""

    def __init__(self, f: Any, counter: list[int]):
        self._f, self._counter = f, counter

    def _count(self, text: str) -> str:
        self._counter[0] += len(text)
        return text

    def read(self, size: int = -1) -> str:
        return self._count(self._f.read(size))

    def readline(self, size: int = -1) -> str:
        return self._count(self._f.readline(size))

    def __iter__(self) -> "_CountedText":
        return self

    def __next__(self) -> str:
        return self._count(next(self._f))

    def __enter__(self) -> "_CountedText":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def count_text_read(monkeypatch: Any, path: Path) -> Callable[[], int]:
    """Patch `open` (builtin and `io.open`) for the rest of the test so that text read from `path`
    is counted; returns a function giving the characters handed to readers so far. Binary reads
    (an encoding check scanning the file) are not counted: this measures what was parsed."""
    real_open, target, counter = io.open, Path(path).resolve(), [0]

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if "b" not in mode and isinstance(file, (str, os.PathLike)) and Path(file).resolve() == target:
            return _CountedText(f, counter)
        return f

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return lambda: counter[0]


class FakeStream:
    """A generation stream of `text`, one character per delta, that records `cancel()`."""

    def __init__(self, text: str) -> None:
        self.deltas, self.cancelled = list(text), False

    def __iter__(self) -> Any:
        yield from self.deltas

    def cancel(self) -> None:
        self.cancelled = True
