"""Prompts for online RL (grpo, rloo): records -> `{"prompt": [messages], "reference": str, "class": str}`.

`prompt` is messages ending with a user turn (a system message may come first); `reference` is the
answer a rule reward checks against (the math final answer is taken from it) and `class` the judge
prompt's category, each "" when the record has none (Arrow needs the same columns in every row).

Accepted records:

| record | prompt | reference |
|---|---|---|
| `{"prompt": str or messages}` (or `question`, as BELLE's eval set) | it | `reference`, `answer`, `output` or `std_answer` |
| BELLE instruction `{"instruction", "input"?, "output"?}` (school_math_0.25M) | instruction + input | `output` (the worked answer) |
| BELLE's PPO prompts `{"text": "Human: \\n...\\n\\nAssistant: \\n"}` | its turns | the text's last answer, if any |
| any conversation belle reads (conversations, messages, ShareGPT, multi-turn strings) | up to and including the last user turn | the assistant reply after it, if any |

A conversation with no reply after its last user turn may carry the reference in the fields above.
"""

from __future__ import annotations

from typing import Any

from belle.conversation import Policy, detect_format, record_to_messages
from belle.records import RejectReport, Rejection
from belle.train.preference import Messages, present, prompt_messages, read_rows, template_messages

COLUMNS = ("prompt", "reference", "class")
PROMPT_KEYS = ("prompt", "question")
REFERENCE_KEYS = ("reference", "answer", "output", "std_answer")


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Rejection("missing field", f"{key!r} is not a string")
    return value


def _reference(record: dict[str, Any]) -> str:
    """The first reference field the record holds, as text; "" when it holds none."""
    key = next((k for k in REFERENCE_KEYS if present(record, k)), None)
    return "" if key is None else _text(record, key)


def _conversation(record: dict[str, Any]) -> Messages:
    """A conversation record as validated messages; the last assistant reply may be absent."""
    format = detect_format(record)
    if format == "text":
        text = record["text"]
        if isinstance(text, str) and text.strip().startswith("Human:"):
            return template_messages(text, "text")
        raise Rejection("unknown format", "'text' is plain text, not a prompt in BELLE's 'Human: \\n...\\n\\nAssistant: \\n' form")
    if format in ("alpaca", "multiturn") and not (isinstance(record.get("output"), str) and record["output"].strip()):
        if present(record, "output") and not isinstance(record["output"], str):
            raise Rejection("missing field", "'output' is not a string")
        return record_to_messages({**record, "output": "-"}, format)[:-1]
    return record_to_messages(record, format, require_assistant=False)


def prompt_row(record: Any) -> dict[str, Any]:
    """One record -> `{"prompt", "reference", "class"}`, or raise `Rejection`."""
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    record = {k: v for k, v in record.items() if v is not None}
    klass = _text(record, "class") if "class" in record else ""
    key = next((k for k in PROMPT_KEYS if k in record), None)
    if key is not None:
        try:
            prompt = prompt_messages(record[key])
        except Rejection as rejection:
            raise Rejection(rejection.reason, rejection.detail.replace("'prompt'", repr(key))) from None
        return {"prompt": prompt, "reference": _reference(record), "class": klass}
    messages = _conversation(record)
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise Rejection("no user turn")
    last = users[-1]
    reply = messages[last + 1 : last + 2]
    return {"prompt": messages[: last + 1], "reference": reply[0]["content"] if reply else _reference(record), "class": klass}


def load_prompts(sources: Any, policy: Policy = "skip") -> tuple[Any, RejectReport]:
    """Read every prompt record into a `datasets.Dataset` with columns prompt, reference, class;
    rejected records are counted with `file:line` (policy `skip`) or raise `DataError` (`strict`)."""
    return read_rows(sources, policy, lambda record: [prompt_row(record)], COLUMNS)
