"""Conversations: the one record type every job passes around, and the readers for every format.

A `Conversation` is an id plus messages `{"role": "system"|"user"|"assistant", "content": str}`.
Readers stream records from JSON-lines files, JSON arrays, folders of them, and `datasets` datasets,
in these formats (detected per record unless forced):

| format      | record                                                                              |
|-------------|-------------------------------------------------------------------------------------|
| `belle`     | `{"id", "conversations": [{"from": "human"/"assistant"/"gpt"/..., "value"}]}`       |
| `alpaca`    | `{"instruction", "input", "output"}` (optional `system`, `history: [[user, assistant]]`) |
| `multiturn` | alpaca whose `instruction` is `Human:...\\nAssistant:...\\nHuman:...\\nAssistant:`    |
| `messages`  | `{"messages": [{"role", "content"}]}` (OpenAI / Hugging Face)                       |
| `text`      | `{"text"}`: pretraining text, read as one assistant message with no prompt          |

A record that cannot be used is a `Rejection` reported as `file:line: reason: detail`. The `skip`
policy counts and reports them; `strict` raises `DataError` at the first one.
"""

from __future__ import annotations

import codecs
import json
import re
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

Format = Literal["belle", "alpaca", "multiturn", "messages", "text"]
FORMATS: tuple[str, ...] = typing.get_args(Format)
Policy = Literal["skip", "strict"]
ROLES = ("system", "user", "assistant")
DATA_SUFFIXES = (".json", ".jsonl")

# `from` values seen in BELLE, ShareGPT and FastChat dumps, lower-cased.
SPEAKER_ROLES = {
    "human": "user", "user": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}

_MULTITURN_SPLIT = re.compile(r"(?:^|\n)(Human|Assistant):")


@dataclass
class Conversation:
    """One training or prompting example.

    `messages` holds dicts `{"role", "content"}`: an optional system message first, then user and
    assistant turns alternating, starting with a user turn.
    """

    id: str
    messages: list[dict[str, str]]


class DataError(ValueError):
    """A record that cannot be used; the message is `file:line: reason: detail`."""


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


# ---------------------------------------------------------------------------------------------
# One record -> messages


def detect_format(record: dict[str, Any]) -> Format:
    """The format of one record, from its keys."""
    record = {k: v for k, v in record.items() if v is not None}  # datasets fill absent columns with None
    if "conversations" in record:
        return "belle"
    if "messages" in record:
        return "messages"
    if "instruction" in record or "output" in record:
        instruction = record.get("instruction")
        if isinstance(instruction, str) and is_multiturn_string(instruction):
            return "multiturn"
        return "alpaca"
    if "text" in record:
        return "text"
    raise Rejection("unknown format", f"no known keys among {sorted(record)[:8]}")


def is_multiturn_string(instruction: str) -> bool:
    """True for BELLE's multi-turn history strings: `Human:...` first, a bare `Assistant:` last."""
    text = instruction.strip()
    return text.startswith("Human:") and text.endswith("Assistant:")


def record_to_messages(record: Any, format: Format | None = None) -> list[dict[str, str]]:
    """Turn one raw record into validated messages, or raise `Rejection`."""
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    format = format or detect_format(record)
    messages = _PARSERS[format](record)
    if format != "text":
        validate_messages(messages)
    return messages


def validate_messages(messages: list[dict[str, str]], require_assistant: bool = True) -> None:
    """Raise `Rejection` unless the messages are an optional system message then alternating
    user/assistant turns starting with the user, every content a non-empty string."""
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise Rejection("unknown role", f"message {i}: {role!r}")
        if not isinstance(content, str):
            raise Rejection("missing field", f"message {i}: content is not a string")
        if not content.strip():
            raise Rejection("empty content", f"message {i} ({role})")
        if role == "system" and i != 0:
            raise Rejection("roles out of order", f"message {i}: a system message must come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if turns != expected[: len(turns)]:
        raise Rejection("roles out of order", "turns must alternate user, assistant, ... starting with user")
    if require_assistant and "assistant" not in turns:
        raise Rejection("no assistant turn")


def _field(record: dict[str, Any], key: str, optional: bool = False) -> Any:
    if key not in record or record[key] is None:
        if optional:
            return None
        raise Rejection("missing field", repr(key))
    return record[key]


def _string(record: dict[str, Any], key: str, optional: bool = False) -> str:
    value = _field(record, key, optional)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejection("missing field", f"{key!r} is not a string")
    return value


def _parse_belle(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = _field(record, "conversations")
    if not isinstance(turns, list):
        raise Rejection("missing field", "'conversations' is not a list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Rejection("missing field", f"conversations[{i}] is not an object")
        speaker = _string(turn, "from")
        role = SPEAKER_ROLES.get(speaker.strip().lower())
        if role is None:
            raise Rejection("unknown role", f"conversations[{i}].from = {speaker!r}")
        messages.append({"role": role, "content": _string(turn, "value")})
    return messages


def _parse_alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    instruction, extra = _string(record, "instruction"), _string(record, "input", optional=True)
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages = []
    system = _string(record, "system", optional=True)
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, pair in enumerate(_field(record, "history", optional=True) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise Rejection("missing field", f"history[{i}] is not a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": _string(record, "output")}]
    return messages


def _parse_multiturn(record: dict[str, Any]) -> list[dict[str, str]]:
    history = _string(record, "instruction").strip()
    parts = _MULTITURN_SPLIT.split(history)
    if parts[0].strip():
        raise Rejection("missing field", "multi-turn instruction must start with 'Human:'")
    messages = [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]
    if not messages or messages[-1]["role"] != "assistant" or messages[-1]["content"]:
        raise Rejection("missing field", "multi-turn instruction must end with a bare 'Assistant:'")
    messages[-1]["content"] = _string(record, "output")
    return messages


def _parse_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    messages = _field(record, "messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Rejection("missing field", "'messages' is not a list of objects")
    return [{"role": m.get("role"), "content": m.get("content")} for m in messages]


def _parse_text(record: dict[str, Any]) -> list[dict[str, str]]:
    text = _string(record, "text")
    if not text.strip():
        raise Rejection("empty content", "'text'")
    return [{"role": "assistant", "content": text}]


_PARSERS: dict[str, Callable[[dict[str, Any]], list[dict[str, str]]]] = {
    "belle": _parse_belle,
    "alpaca": _parse_alpaca,
    "multiturn": _parse_multiturn,
    "messages": _parse_messages,
    "text": _parse_text,
}


# ---------------------------------------------------------------------------------------------
# Files -> records


def list_data_files(source: str | Path) -> list[Path]:
    """`source` itself if it is a file, else every .json/.jsonl file below it (suffix in any letter
    case: `.JSONL` and `.Json` are read too), sorted."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no .json or .jsonl files in this folder")
        return files
    raise DataError(f"{path}: no such file or folder")


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


def is_saved_dataset(source: Any) -> bool:
    """True for a folder written by `datasets.Dataset.save_to_disk`."""
    return isinstance(source, (str, Path)) and (Path(source) / "dataset_info.json").is_file()


def iter_source_records(source: Any) -> Iterator[tuple[str, str, Any]]:
    """Yield `(location, default_id, record)` from a path (file, folder or saved dataset) or a
    `datasets` dataset.

    `location` is `file:line` (or `name:row`); `default_id` is used when a record has no `id`. A
    file named itself that is not UTF-8 (or UTF-16 with a byte-order mark) raises
    `EncodingProblem`; such a file inside a folder is one `Rejection` with the file as location,
    so it is skipped and counted like a bad record (and stops a strict run).
    """
    if is_saved_dataset(source):
        from datasets import load_from_disk

        source = load_from_disk(str(source))
    if isinstance(source, (str, Path)):
        in_folder = Path(source).is_dir()
        for path in list_data_files(source):
            try:
                encoding = file_encoding(path)
            except EncodingProblem as e:
                if not in_folder:
                    raise
                yield str(path), path.stem, e.rejection
                continue
            for line, record in iter_json_records(path, encoding=encoding):
                yield f"{path}:{line}", f"{path.stem}-{line}", record
        return
    name = getattr(getattr(source, "info", None), "dataset_name", None) or "dataset"
    for row, record in enumerate(source, start=1):
        yield f"{name}:{row}", f"{name}-{row}", record


def as_source_list(sources: Any) -> list[Any]:
    """One source (a path or a dataset) or several, as a list."""
    return [sources] if isinstance(sources, (str, Path)) or hasattr(sources, "features") else list(sources)


def iter_parsed(sources: Any, format: Format | None = None) -> Iterator[tuple[str, Conversation | Rejection]]:
    """Yield `(location, Conversation or Rejection)` for every record of every source, in order."""
    if format is not None and format not in _PARSERS:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    for source in as_source_list(sources):
        for location, default_id, record in iter_source_records(source):
            try:
                if isinstance(record, Rejection):
                    raise record
                messages = record_to_messages(record, format)
            except Rejection as rejection:
                yield location, rejection
                continue
            record_id = record.get("id")
            yield location, Conversation(id=default_id if record_id in (None, "") else str(record_id), messages=messages)


def read_conversations(
    sources: Any | Iterable[Any],
    format: Format | None = None,
    policy: Policy = "skip",
    report: RejectReport | None = None,
    on_reject: Callable[[str], None] | None = None,
) -> Iterator[Conversation]:
    """Stream `Conversation`s from paths (files or folders) and/or `datasets` datasets.

    Args:
        sources: one source or a list of them.
        format: force one format instead of detecting it per record.
        policy: `skip` counts each rejected record in `report` and calls `on_reject(line)`;
            `strict` raises `DataError("file:line: reason: detail")` at the first one.
    """
    report = report if report is not None else RejectReport(keep_lines=False)
    for location, item in iter_parsed(sources, format):
        if isinstance(item, Conversation):
            yield item
            continue
        line = report.add(location, item)
        if policy == "strict":
            raise DataError(line)
        if on_reject:
            on_reject(line)


# ---------------------------------------------------------------------------------------------
# Writers


def to_belle(conversation: Conversation) -> dict[str, Any]:
    """BELLE's on-disk form; a system message is kept as `{"from": "system"}`."""
    names = {"user": "human", "assistant": "assistant", "system": "system"}
    return {
        "id": conversation.id,
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conversation.messages],
    }


def to_messages(conversation: Conversation) -> dict[str, Any]:
    return {"id": conversation.id, "messages": [dict(m) for m in conversation.messages]}


WRITERS: dict[str, Callable[[Conversation], dict[str, Any]]] = {"belle": to_belle, "messages": to_messages}
