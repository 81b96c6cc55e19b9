"""The prompts file of `belle generate`: one prompt per record, each with an id.

A record is one of
- `{"text": str}`: BELLE's infer file (`inference.py --infer_file`): the user's instruction, rendered
  with the model's template as one user turn;
- `{"prompt": str}`: raw text given to the model as it is, with no template;
- any conversation format belle reads (`belle.conversation`: BELLE's `conversations`, `messages`,
  Alpaca with or without `output`, BELLE's multi-turn strings). A conversation ending in a user turn
  is answered as it stands; one ending in an assistant turn (a reference answer, an Alpaca `output`)
  is answered from the history before that turn.

`id` is optional: a record without one is named by its line number. Every problem is collected and
raised at once as a `DataError`, one `file:line: field: problem` line each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from belle.conversation import SPEAKER_ROLES, detect_format, record_to_messages
from belle.records import DataError, Rejection, bad_records, iter_json_records

_PLACEHOLDER = "(reply)"  # stands in for the reply a record asks for, so the readers see a whole exchange


@dataclass(frozen=True)
class PromptItem:
    """One prompt to answer.

    `kind` "chat": `messages` (user turn last) go through the template; "raw": `prompt` is the
    model's input as it is. `record` is the input line, which the output line repeats.
    """

    id: str
    line: int
    kind: Literal["chat", "raw"]
    record: dict[str, Any]
    messages: tuple[dict[str, str], ...] = ()
    prompt: str = ""


class _FieldError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


def read_prompts(path: Path, system: str = "") -> list[PromptItem]:
    """Every prompt of `path` (JSON lines or a JSON array), in file order; `system` is the system
    prompt of chat items that have none. Raises `DataError` listing every bad record (at most
    `belle.records.MAX_LISTED_ERRORS`, then a count) and for a file with no records."""
    items: list[PromptItem] = []
    errors: list[str] = []
    seen: dict[str, int] = {}  # id -> line it is on
    for line, record in iter_json_records(path):
        where = f"{path}:{line}"
        try:
            item = _item(line, record, system)
        except _FieldError as e:
            errors.append(f"{where}: {e.field}: {e.problem}")
            continue
        except Rejection as e:
            errors.append(e.at(where))
            continue
        if item.id in seen:
            errors.append(f"{where}: id: duplicate {item.id!r} (first on line {seen[item.id]}; "
                          "a record without an id is named by its line number)")
            continue
        seen[item.id] = line
        items.append(item)
    if errors:
        raise bad_records(errors, "prompt")
    if not items:
        raise DataError(f"{path}: no prompts")
    return items


def _item(line: int, record: Any, system: str) -> PromptItem:
    if isinstance(record, Rejection):
        raise record
    if not isinstance(record, dict):
        raise _FieldError("record", f"not a JSON object (got {type(record).__name__})")
    item_id = _id(record, line)
    if "prompt" in record:
        return PromptItem(item_id, line, "raw", record, prompt=_text(record, "prompt"))
    system_turn = [{"role": "system", "content": system}] if system else []
    try:
        kind = detect_format(record)
    except Rejection:
        keys = ", ".join(sorted(record)[:8]) or "none"
        raise _FieldError("record", f"no known format (keys: {keys}); give \"text\" (an instruction), \"prompt\" "
                                    "(raw text) or a conversation (\"messages\", \"conversations\", \"instruction\")") from None
    if kind == "text":
        return PromptItem(item_id, line, "chat", record, messages=tuple(system_turn + [{"role": "user", "content": _text(record, "text")}]))
    messages = _history(record, kind)
    if system and messages[0]["role"] != "system":
        messages = system_turn + messages
    return PromptItem(item_id, line, "chat", record, messages=tuple(messages))


def _id(record: dict[str, Any], line: int) -> str:
    value = record.get("id")
    if value is None:
        return str(line)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _FieldError("id", f"must be a string or an integer (got {type(value).__name__})")
    if not value.strip():
        raise _FieldError("id", "empty")
    return value


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise _FieldError(key, f"must be a string (got {type(value).__name__})")
    if not value.strip():
        raise _FieldError(key, "empty")
    return value


def _history(record: dict[str, Any], kind: str) -> list[dict[str, str]]:
    """The messages a conversation record asks a reply to: all of them when the last is a user
    turn, else all but the last assistant turn. The record is read by `belle.conversation`'s own
    parser, with a placeholder reply added where it has none so that its rules apply unchanged."""
    answered, added = dict(record), False
    if kind in ("alpaca", "multiturn") and not (isinstance(record.get("output"), str) and record["output"].strip()):
        answered["output"], added = _PLACEHOLDER, True
    elif kind == "belle" and isinstance(record.get("conversations"), list) and record["conversations"]:
        last = record["conversations"][-1]
        speaker = last.get("from") if isinstance(last, dict) else None
        if isinstance(speaker, str) and SPEAKER_ROLES.get(speaker.strip().lower()) in ("user", "system"):
            answered["conversations"], added = [*record["conversations"], {"from": "assistant", "value": _PLACEHOLDER}], True
    elif kind == "messages" and isinstance(record.get("messages"), list) and record["messages"]:
        last = record["messages"][-1]
        if isinstance(last, dict) and last.get("role") in ("user", "system"):
            answered["messages"], added = [*record["messages"], {"role": "assistant", "content": _PLACEHOLDER}], True
    messages = record_to_messages(answered, kind)  # raises Rejection: `reason: detail` naming the field
    if messages[-1]["role"] != "assistant" or (not added and len(messages) < 2):
        raise _FieldError(kind, "the conversation has no user turn to answer")
    return messages[:-1]
