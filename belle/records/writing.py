"""Output files that are never left half-written, and the listing of rejected input records."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SHOWN_REJECTS = 20


@contextmanager
def atomic_output(path: Path, *, binary: bool = False) -> Iterator[Any]:
    """Write to `path` through a temporary file that replaces it only when writing succeeded; a
    text file (UTF-8) unless `binary`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            yield f
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """`path` holds `text` whole or is left as it was: a small state file (run.json, a marker)."""
    with atomic_output(path) as f:
        f.write(text)


def report_rejects(lines: list[str], output: Path) -> None:
    """Show the first rejected records on stderr and keep them all in `OUTPUT.rejected.txt`."""
    listing = output.with_name(output.name + ".rejected.txt")
    if not lines:
        listing.unlink(missing_ok=True)
        return
    for line in lines[:SHOWN_REJECTS]:
        print(f"rejected: {line}", file=sys.stderr)
    write_text_atomic(listing, "\n".join(lines) + "\n")
    more = f", {len(lines) - SHOWN_REJECTS} more" if len(lines) > SHOWN_REJECTS else ""
    print(f"all {len(lines)} rejected records{more}: {listing}", file=sys.stderr)
