"""Which codec reads a data file: UTF-8 (with or without a byte-order mark) or UTF-16 with one."""

from __future__ import annotations

import codecs
from pathlib import Path

from belle.records.errors import EncodingProblem, Rejection, not_utf8

_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def file_encoding(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The codec that reads `path`: "utf-8-sig" (UTF-8, with or without a byte-order mark) or
    "utf-16" (with a byte-order mark, little or big endian); else raise `EncodingProblem` naming
    the first bad byte and its offset.

    The whole file is decoded once, in C at hundreds of MB/s, before any record is read: a few
    percent of the time JSON parsing takes, and it makes a file either read whole or not at all,
    never cut where a stray byte happens to sit. A NUL byte counts as bad in UTF-8: JSON text never
    holds one, and UTF-16 without a byte-order mark is full of them.
    """
    with open(path, "rb") as f:
        head = f.read(len(codecs.BOM_UTF8))
        encoding = next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8-sig")
        f.seek(0)
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = 0
        while True:
            chunk = f.read(chunk_bytes)
            bad = chunk.find(b"\0") if encoding == "utf-8-sig" else -1
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                start = offset + len(chunk) - len(e.object) + e.start
                if bad < 0 or offset + bad > start:
                    raise _encoding_problem(path, encoding, e.object[e.start], start) from None
            if bad >= 0:
                raise _encoding_problem(path, encoding, 0, offset + bad)
            if not chunk:
                return encoding
            offset += len(chunk)


def _encoding_problem(path: Path, encoding: str, byte: int, offset: int) -> EncodingProblem:
    if encoding == "utf-16":
        detail = f"byte 0x{byte:02x} at offset {offset} does not decode"
        return EncodingProblem(str(path), Rejection("not UTF-16", detail))
    return EncodingProblem(str(path), not_utf8(byte, offset))
