"""What goes wrong with input records: the error that stops a job, and the counted rejection of one record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


MAX_LISTED_ERRORS = 20


class DataError(ValueError):
    """A record that cannot be used; the message is `file:line: reason: detail`."""


def bad_records(errors: list[str], what: str) -> DataError:
    """One error for every bad record of a file: "N bad WHAT record(s):", then the first
    MAX_LISTED_ERRORS lines (`file:line: field: why`) and a count of the rest."""
    listed = errors[:MAX_LISTED_ERRORS]
    if len(errors) > len(listed):
        listed.append(f"... and {len(errors) - len(listed)} more")
    return DataError(f"{len(errors)} bad {what} record(s):\n" + "\n".join(listed))


class Rejection(Exception):
    """Why one record was rejected: `reason` is a short category used for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def at(self, location: str) -> str:
        """The report line: `file:line: reason: detail`."""
        return f"{location}: {self.reason}" + (f": {self.detail}" if self.detail else "")


@dataclass
class RejectReport:
    """Counts of rejected records per reason, with every `file:line: reason` line kept in order.

    `lines` grows with the number of rejections, not of records; pass `keep_lines=False` to keep
    only the counts.
    """

    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)
    keep_lines: bool = True

    def add(self, location: str, rejection: Rejection) -> str:
        line = rejection.at(location)
        self.counts[rejection.reason] += 1
        if self.keep_lines:
            self.lines.append(line)
        return line

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "rejected 0 records"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        return f"rejected {self.total} records ({parts})"


class EncodingProblem(DataError):
    """A file that is not text belle can read; `rejection` is the same problem as a counted reject."""

    def __init__(self, location: str, rejection: Rejection):
        super().__init__(rejection.at(location))
        self.rejection = rejection


def not_utf8(byte: int, offset: int) -> Rejection:
    """The problem of a file whose byte `offset` (from 0) holds `byte`, which is not UTF-8 text, with
    the command that converts the file: a NUL byte is what UTF-16 without a byte-order mark (or a
    binary file) shows first, any other byte most likely GBK."""
    source = "UTF-16LE" if byte == 0 else "GBK"
    hint = "if it is UTF-16 text without a byte-order mark, " if byte == 0 else ""
    detail = f"byte 0x{byte:02x} at offset {offset}; {hint}convert it with iconv -f {source} -t UTF-8"
    return Rejection("not UTF-8", detail)
