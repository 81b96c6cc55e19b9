"""Conversations: the one record type every job passes around, and the parsers for every format.

A `Conversation` is an id plus messages `{"role": "system"|"user"|"assistant", "content": str}`.
`read_conversations` streams records from JSON-lines files, JSON arrays, folders of them, and
`datasets` datasets (read by `belle.records`), in these formats (detected per record unless forced):

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

import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal

from belle.records import DataError, Rejection, RejectReport, as_source_list, iter_source_records

Format = Literal["belle", "alpaca", "multiturn", "messages", "text"]
FORMATS: tuple[str, ...] = typing.get_args(Format)
Policy = Literal["skip", "strict"]
ROLES = ("system", "user", "assistant")

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


def record_to_messages(record: Any, format: Format | None = None, require_assistant: bool = True) -> list[dict[str, str]]:
    """Turn one raw record into validated messages, or raise `Rejection`; with
    `require_assistant=False` a conversation of user turns only (a prompt) is accepted too."""
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    format = format or detect_format(record)
    messages = _PARSERS[format](record)
    if format != "text":
        validate_messages(messages, require_assistant=require_assistant)
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
# Sources -> conversations


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
