"""JSON-lines outputs that survive kill -9: every record is appended and flushed on its own line.

A process killed while writing leaves at most one torn last line. `resume_records` cuts that line
off (its record was not finished, so the job redoes it) and returns everything before it; any
other broken line is an error naming the file and line, since it means the file is not ours.
"""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path
from typing import Any, TextIO

from belle.records.errors import DataError, not_utf8

logger = logging.getLogger(__name__)


def resume_records(path: Path) -> list[dict[str, Any]]:
    """The records of an earlier, possibly killed, run of a job writing `path`; [] if none.
    A torn last line is cut off the file."""
    if not path.exists():
        return []
    return [record for _, record in numbered_records(path, cut_torn=True)]


def numbered_records(path: Path, *, cut_torn: bool) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every complete line of `path`, blank lines skipped.

    A torn last line (no newline after it) is left out; with `cut_torn` it is also cut off the
    file (the job that owns it is resuming), else the file is left alone (a reader, while a writer
    may still be appending). A UTF-8 byte-order mark is skipped. Any other bad line is a
    `DataError` naming `file:line` (and the byte offset of a byte that is not UTF-8).
    """
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    tail = data[len(complete):]
    if tail.strip() and _is_whole_record(tail):
        # a file written by hand without a final newline: its last line is a record, not torn
        if cut_torn:
            with open(path, "ab") as f:
                f.write(b"\n")
        complete = data + b"\n"
    elif tail:
        if not tail.lstrip(codecs.BOM_UTF8 + b" \t\r").startswith(b"{"):
            line = complete.count(b"\n") + 1
            raise DataError(f"{path}:{line}: not a JSON object; is this an output of this job?")
        if cut_torn:
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        else:
            logger.warning("%s: skipping a torn last line (a writer killed mid-line, or still writing)", path)
    start = len(codecs.BOM_UTF8) if complete.startswith(codecs.BOM_UTF8) else 0
    try:
        text = complete[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        number = complete.count(b"\n", 0, offset) + 1
        raise DataError(not_utf8(complete[offset], offset).at(f"{path}:{number}")) from None
    records = []
    # split at "\n" only: json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 unescaped, and
    # str.splitlines() would cut a record there
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: malformed JSON: {e.msg}; is this an output of this job?") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: not a JSON object; is this an output of this job?")
        records.append((number, record))
    return records


def _is_whole_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8-sig")), dict)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False


def open_append(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8")


def append(f: TextIO, record: dict[str, Any]) -> None:
    """Write one record as one line and flush it, so a kill loses nothing written before."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
