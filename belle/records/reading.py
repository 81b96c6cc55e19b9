"""Reading JSON records with the line each starts on: JSON lines, JSON arrays and pretty-printed
objects one after another, streamed, with a malformed record rejected and reading going on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from belle.records.encoding import file_encoding
from belle.records.errors import DataError, Rejection

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in a parsed JSON value holds a lone surrogate (`"\\ud800"`): JSON
    joins escaped pairs into one character, so any surrogate left is alone, and no UTF-8 writer or
    tokenizer can encode it."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _checked(record: Any, text: str, start: int = 0, end: int | None = None) -> Any:
    """`record`, or a `Rejection` if its JSON text (`text[start:end]`) escapes a lone surrogate."""
    if _SURROGATE_ESCAPE.search(text, start, len(text) if end is None else end) and _has_lone_surrogate(record):
        return Rejection("invalid text", "lone surrogate")
    return record


def iter_json_records(path: Path, chunk_chars: int = 1 << 20, encoding: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield `(line, record)` from a JSON-lines file, a JSON array, or pretty-printed objects one
    after another (a file whose first line is a lone `{`), streaming each.

    The file is UTF-8 (a byte-order mark is allowed) or UTF-16 with a byte-order mark; `encoding`
    is `file_encoding(path)`, found here when not given, which raises `EncodingProblem` (a
    `DataError`) for anything else. A line that is not valid JSON yields `(line, Rejection)` and
    reading goes on; so does a malformed element of an array when the next element can be found
    for certain (see `_resync`); when it cannot, the whole file is a `DataError`. A record with a
    lone surrogate escape (`"\\ud800"`) yields an "invalid text" `Rejection`.
    """
    encoding = encoding or file_encoding(path)
    try:
        with open(path, encoding=encoding) as f:
            first = next(filter(None, (line.lstrip("\ufeff").strip() for line in f)), "")
            f.seek(0)
            if first.startswith("[") or first == "{":
                yield from _iter_json_values(f, chunk_chars, in_array=first.startswith("["), name=str(path))
                return
            for number, line in enumerate(f, start=1):
                line = line.strip().lstrip("\ufeff")
                if not line:
                    continue
                try:
                    yield number, _checked(json.loads(line), line)
                except json.JSONDecodeError as e:
                    yield number, Rejection("malformed JSON", e.msg)
    except UnicodeDecodeError as e:  # the file changed since `file_encoding` read it
        problem = f"not {encoding} text any more ({e.reason}); was it changed while being read?"
        raise DataError(f"{path}: {problem}") from None


_BLANK = re.compile("[ \t\r\n\ufeff]*")
_BLANK_OR_COMMA = re.compile("[ \t\r\n\ufeff,]*")


def _iter_json_values(
    f: Any, chunk_chars: int, in_array: bool, name: str, max_record_chars: int = 64 << 20
) -> Iterator[tuple[int, Any]]:
    """JSON values separated by whitespace or commas, inside one `[...]` when `in_array`."""
    decoder = json.JSONDecoder()
    # `line` is the line number at `buffer[counted]`; the buffer starts with the line end before
    # the file (so line 0), and is cut at a line end, so the blanks before `pos` are always in it
    buffer, pos, line, counted = "\n", 1, 0, 0
    last_good: int | None = None  # where the last value read started, until its indent is known
    element_indent: str | None = None  # the blanks before the last value read, if it started its line

    def note_indent() -> None:
        nonlocal last_good, element_indent
        if last_good is not None:
            element_indent, last_good = _indent_before(buffer, last_good), None

    def refill() -> bool:
        """Drop what was consumed, up to the line end before `pos`; read one more chunk; False at
        end of file."""
        nonlocal buffer, pos, line, counted
        more = f.read(chunk_chars)
        if not more:
            return False  # keep the buffer as it is, so offsets into it stay valid
        note_indent()
        keep = buffer.rfind("\n", max(0, pos - 4096), pos)
        keep = pos if keep < 0 else keep
        if counted < keep:
            line += buffer.count("\n", counted, keep)
            counted = keep
        buffer, pos, counted = buffer[keep:] + more, pos - keep, counted - keep
        return True

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += buffer.count("\n", counted, offset)
        counted = offset
        return line

    def skip_malformed(message: str, error_pos: int) -> Iterator[tuple[int, Rejection]]:
        """Reject the malformed value at `pos` and move `pos` to where reading goes on, or raise
        `DataError` when that cannot be told; the problem is at `error_pos`."""
        nonlocal pos
        where = line_at(pos)
        bad_line = where + buffer.count("\n", pos, error_pos)
        problem = message + (f" on line {bad_line}" if bad_line != where else "")
        note_indent()
        layout = element_indent if element_indent is not None else _indent_before(buffer, pos)
        while (resume := _resync(buffer, pos, in_array, layout, eof=False)) is _MORE:
            if len(buffer) - pos >= max_record_chars:
                resume = None
            elif not refill():
                resume = _resync(buffer, pos, in_array, layout, eof=True)
            else:
                continue
            break
        if resume is None:
            problem += "; cannot find where the next element starts, so this file is not read"
            raise DataError(Rejection("malformed JSON", problem).at(f"{name}:{where}"))
        yield where, Rejection("malformed JSON", f"{problem} (skipped to the next element)")
        pos = resume

    refill()
    pos = _skip(buffer, pos, _BLANK)
    while pos >= len(buffer) and refill():  # leading blank lines longer than a chunk
        pos = _skip(buffer, pos, _BLANK)
    pos += in_array  # past the '['
    while True:
        pos = _skip(buffer, pos, _BLANK_OR_COMMA)
        if pos >= len(buffer):
            if refill():
                continue
            if in_array:
                yield line_at(pos), Rejection("malformed JSON", "the array is not closed with ']'")
            return
        if in_array and buffer[pos] == "]":
            pos = _skip(buffer, pos + 1, _BLANK)
            while pos >= len(buffer) and refill():
                pos = _skip(buffer, pos, _BLANK)
            if pos < len(buffer):
                problem = "text after the array's closing ']', so this file is not read; is it two arrays, or a stray ']'?"
                raise DataError(Rejection("malformed JSON", problem).at(f"{name}:{line_at(pos)}"))
            return
        try:
            record, end = decoder.raw_decode(buffer, pos)
            after = _skip(buffer, end, _BLANK)
            # a number cut by the chunk's end ("3." of "3.14", "1e" of "1e5") goes on in the next chunk
            complete = after < len(buffer) and not (isinstance(record, (int, float)) and buffer[end] in ".eE")
            if complete and in_array and buffer[after] not in ",]":  # `"a" "b"` is not two elements
                raise json.JSONDecodeError("Expecting ',' delimiter", buffer, after)
        except json.JSONDecodeError as e:
            if _maybe_cut(buffer, e) and len(buffer) - pos < max_record_chars and refill():
                continue
            yield from skip_malformed(e.msg, e.pos)
            continue
        if not complete and refill():
            continue
        if not complete and in_array and isinstance(record, list):
            # the array is not closed: this list may be a stray '[' that took every element after it
            yield from skip_malformed("a list as the last value of an array that is not closed", pos)
            continue
        yield line_at(pos), _checked(record, buffer, pos, end)
        last_good, pos = pos, end


def _maybe_cut(text: str, error: json.JSONDecodeError) -> bool:
    """Whether a decoding error may only mean the value goes on past the end of `text`: the error
    is in its last few characters (a cut literal, number or escape), or a string is not closed
    (no line end follows, since a JSON string cannot hold one)."""
    return len(text) - error.pos <= 8 or error.msg.startswith("Unterminated string")


_MORE = object()  # `_resync` needs more text
_DECODER = json.JSONDecoder()
_OUTSIDE_STRING = re.compile(r'["{}\[\],\n]')
_INSIDE_STRING = re.compile(r'["\\\n]')
_ELEMENT_LINE = re.compile(r"\n([ \t]*)([{\[\]])")
_LINE_START = re.compile(r"([ \t]*)[{\[]")
_ELEMENT_START = re.compile(r"[,\[]\s*\{")


def _resync(text: str, start: int, in_array: bool, indent: str | None, eof: bool) -> Any:
    """Where reading goes on after the malformed value at `start`: the offset of the next value, of
    the array's closing `]`, or of the end of `text`; None when it cannot be told for certain;
    `_MORE` when `text` ends first and `eof` is False.

    Two ways, the first that is certain wins:
    1. In an array, the brackets and strings of the malformed element pair up, so the `,` after it
       is found; certain when what follows is a non-empty object (followed by `,` or `]`) or the
       `]`, possibly after more malformed elements that pair up the same way.
    2. The values start lines, after `indent` blanks (those of the last good value, else of the
       malformed one): the next line that starts with `{`, `[` or `]` after no more blanks, as in
       JSON written one element per line or by `json.dump(indent=...)`, where nested values are
       indented deeper.
    """
    if in_array:
        end = _after_elements(text, start, indent, eof)
        if end is not None:
            return end
    if indent is None:
        return None
    for match in _ELEMENT_LINE.finditer(text, start):
        spaces, opener = match.groups()
        if len(spaces) <= len(indent) and (in_array or opener != "]"):
            return match.start(2)
    return len(text) if eof else _MORE


def _after_elements(text: str, start: int, indent: str | None, eof: bool) -> Any:
    """Way 1 of `_resync`: the offset after the `,` that ends the malformed element at `start`, or
    of the `]` that ends the array; None or `_MORE` as there."""
    first_end, pos = None, start
    while True:
        end = _element_end(text, pos, indent)
        if end is None or end is _MORE:
            return None if eof else end
        if text[end] == "]":
            return first_end if first_end is not None else end
        first_end = first_end if first_end is not None else end + 1
        pos = _skip(text, end + 1, _BLANK_OR_COMMA)
        if pos >= len(text):
            return None if eof else _MORE
        if text[pos] == "]":
            return first_end
        verdict = _is_record_element(text, pos, eof)
        if verdict is True:
            return first_end
        if verdict is _MORE:
            return verdict


def _element_end(text: str, start: int, indent: str | None) -> Any:
    """The offset of the `,` or `]` that ends the array element at `start`: the first outside the
    strings and brackets the element opens. None when that cannot be told: a bracket closed by the
    other kind, a string still open at a line end (JSON strings cannot hold one), or a line that
    starts like an element (`{` or `[` after at most `indent` blanks) while a bracket is open, or a
    "string" holding what reads as the start of a good element (`, {"id": 1},`): a quote in the
    malformed element was unpaired, and the scan took the text between strings for strings.
    `_MORE` when `text` ends first."""
    closers: list[str] = []
    pos = start
    while True:
        match = _OUTSIDE_STRING.search(text, pos)
        if match is None:
            return _MORE
        char, pos = match.group(), match.end()
        if char == '"':
            while True:
                inside = _INSIDE_STRING.search(text, pos)
                if inside is None or inside.group() == "\\" and inside.end() >= len(text):
                    return _MORE
                if inside.group() == "\n":
                    return None
                pos = inside.end() + (inside.group() == "\\")
                if inside.group() == '"':
                    break
            for candidate in _ELEMENT_START.finditer(text, match.start(), pos):
                # a real string cannot hold `, {"...` unescaped: this one is the gap between strings
                verdict = _is_record_element(text, candidate.end() - 1, eof=False)
                if verdict is not False:
                    return None if verdict is True else verdict
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char == "\n":
            opener = _LINE_START.match(text, pos)
            if closers and indent is not None and opener and len(opener.group(1)) <= len(indent):
                return None
        elif closers:
            if char == ",":
                continue
            if closers.pop() != char:
                return None
        elif char in ",]":
            return match.start()
        else:
            return None


def _is_record_element(text: str, start: int, eof: bool) -> Any:
    """Whether a non-empty JSON object starts at `start`, followed by `,` or `]` (or the end of the
    file); `_MORE` when `text` ends before that is known."""
    if text[start] != "{":
        return False
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        return _MORE if not eof and _maybe_cut(text, e) else False
    after = _skip(text, end, _BLANK)
    if after >= len(text):
        return bool(value) if eof else _MORE
    return bool(value) and text[after] in ",]"


def _indent_before(text: str, pos: int) -> str | None:
    """The blanks before `pos` on its line, or None if something else precedes it there."""
    start = text.rfind("\n", 0, pos) + 1
    blanks = text[start:pos]
    return blanks if start > 0 and not blanks.strip(" \t") else None


def _skip(text: str, pos: int, chars: re.Pattern[str]) -> int:
    """The offset of the first character at or after `pos` that `chars` (`_BLANK`,
    `_BLANK_OR_COMMA`) does not match."""
    return chars.match(text, pos).end()


def read_json_object(path: Path, error: type[DataError] = DataError) -> dict[str, Any]:
    """A small JSON file (config.json, belle.json, ...) as a dict; `error` naming the file when it is
    not UTF-8 JSON holding an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not a JSON file ({e})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
