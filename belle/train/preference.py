"""Preference data for dpo, rm and kto -> TRL's conversational form.

Pairs (`load_preference_pairs`), in either of two shapes:

- explicit prompt: `{"prompt", "chosen", "rejected"}`. The prompt is a plain question, BELLE's template
  string (`Human: \\n...\\n\\nAssistant: \\n`, several turns allowed) or a list of messages; `chosen`
  and `rejected` are answer strings (or one assistant message).
- implicit prompt, BELLE's RM format: `{"chosen", "rejected"}` only, each a whole conversation, either
  BELLE's templated text `Human: \\n...\\n\\nAssistant: \\n...` or a list of messages ending with the
  answer. Everything before the last answer must be the same in both; it becomes the prompt.

Every pair becomes `{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant
message]}`, so TRL renders all three with the model's chat template, the same one SFT trained with.

Unpaired examples (`load_kto_examples`): `{"prompt", "completion", "label": true|false}` records, and
any pair above as two examples, `(chosen, true)` and `(rejected, false)`; rows are `{"prompt":
[messages], "completion": [assistant message], "label": bool}`.

Every reader returns `(datasets.Dataset, RejectReport)`; a record that cannot be used is counted with
its `file:line` and reason (policy `skip`) or stops the read with `DataError` (policy `strict`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from belle.conversation import Policy, is_multiturn_string, record_to_messages, validate_messages
from belle.records import DataError, Rejection, RejectReport, as_source_list, iter_source_records

Messages = list[dict[str, str]]

_ASSISTANT_MARK = re.compile(r"(?:^|\n)Assistant:")
_TEMPLATE_FORM = "BELLE's 'Human: \\n...\\n\\nAssistant: \\n...' form"


def template_messages(text: str, key: str) -> Messages:
    """BELLE's templated text (`Human: \\n...\\n\\nAssistant: \\n...`, several turns allowed) as
    validated messages. The text may end with an answer (the messages end with it) or with a bare
    `Assistant:` or a user turn (the messages end with the user turn); raise `Rejection` otherwise."""
    stripped = text.strip()
    if not stripped.startswith("Human:"):
        raise Rejection("missing field", f"{key!r} is not in {_TEMPLATE_FORM}")
    marks = list(_ASSISTANT_MARK.finditer(stripped))
    if marks and not is_multiturn_string(stripped):
        head, answer = stripped[: marks[-1].end()], stripped[marks[-1].end():].strip()
    else:
        head, answer = (stripped if marks else stripped + "\nAssistant:"), ""
    messages = record_to_messages({"instruction": head, "output": answer or "-"}, "multiturn")
    return messages if answer else messages[:-1]


def prompt_messages(prompt: Any) -> Messages:
    """The prompt as messages ending with a user turn, or raise `Rejection`."""
    if isinstance(prompt, list):
        messages = record_to_messages({"messages": prompt}, "messages", require_assistant=False) if prompt else []
    elif isinstance(prompt, str) and is_multiturn_string(prompt):
        messages = template_messages(prompt, "prompt")
    elif isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    else:
        raise Rejection("missing field", "'prompt' is not a non-empty string or list of messages")
    validate_messages(messages, require_assistant=False)
    if not messages or messages[-1]["role"] != "user":
        raise Rejection("roles out of order", "the prompt must end with a user turn")
    return messages


def present(record: dict[str, Any], key: str) -> bool:
    """Whether `record` holds `key` with a value (`datasets` fill absent columns with None)."""
    return record.get(key) is not None


def _answer(record: dict[str, Any], key: str) -> Messages:
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise Rejection("missing field", f"{key!r} is not a non-empty string")
    return [{"role": "assistant", "content": value}]


def _whole_conversation(record: dict[str, Any], key: str) -> Messages:
    """`record[key]` as a whole conversation ending with the answer: BELLE's templated text or a list
    of messages."""
    value = record.get(key)
    if isinstance(value, str) and value.strip().startswith("Human:"):
        messages = template_messages(value, key)
    elif isinstance(value, list) and value:
        messages = record_to_messages({"messages": value}, "messages")
    elif isinstance(value, str) and value.strip():
        raise Rejection("missing field", f"'prompt' (without one, {key!r} must be a whole conversation in {_TEMPLATE_FORM})")
    else:
        raise Rejection("missing field", f"{key!r} is not a non-empty string or list of messages")
    if messages[-1]["role"] != "assistant":
        raise Rejection("roles out of order", f"{key!r} must end with the assistant's answer")
    return messages


def preference_pair(record: Any) -> dict[str, Any]:
    """One pair record (explicit or implicit prompt) -> `{"prompt", "chosen", "rejected"}` messages,
    or raise `Rejection`."""
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    if present(record, "prompt"):
        return {"prompt": prompt_messages(record["prompt"]), "chosen": _answer(record, "chosen"), "rejected": _answer(record, "rejected")}
    chosen, rejected = _whole_conversation(record, "chosen"), _whole_conversation(record, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise Rejection("prompt mismatch", "chosen and rejected differ before the last answer")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def kto_examples(record: Any) -> list[dict[str, Any]]:
    """One record -> unpaired examples `{"prompt", "completion", "label"}`: a `{"prompt", "completion",
    "label"}` record is one, a preference pair two; or raise `Rejection`."""
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    if present(record, "completion") or present(record, "label"):
        label = record.get("label")
        if not isinstance(label, bool):
            raise Rejection("missing field", f"'label' is not true or false (got {label!r:.40})")
        if not present(record, "prompt"):
            raise Rejection("missing field", "'prompt'")
        return [{"prompt": prompt_messages(record["prompt"]), "completion": _answer(record, "completion"), "label": label}]
    pair = preference_pair(record)
    return [
        {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
        {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False},
    ]


@dataclass
class ReadReport(RejectReport):
    """A `RejectReport` that also counts every record read, kept or rejected (a kto pair is one
    record and two rows)."""

    records: int = 0


def read_rows(
    sources: Any,
    policy: Policy,
    convert: Callable[[Any], list[dict[str, Any]]],
    columns: tuple[str, ...],
) -> tuple[Any, ReadReport]:
    """Every record of `sources` through `convert` (one record -> rows, or `Rejection`) into a
    `datasets.Dataset` with `columns`; rejected records are counted in the report, or raise
    `DataError` at the first one with policy `strict`."""
    from datasets import Dataset

    report = ReadReport()
    rows = list(_rows(as_source_list(sources), policy, report, convert))
    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({name: [] for name in columns})
    return dataset, report


def _rows(sources: list[Any], policy: Policy, report: ReadReport, convert: Callable[[Any], list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for source in sources:
        for location, _, record in iter_source_records(source):
            report.records += 1
            try:
                if isinstance(record, Rejection):
                    raise record
                yield from convert(record)
            except Rejection as rejection:
                line = report.add(location, rejection)
                if policy == "strict":
                    raise DataError(line) from None


def load_preference_pairs(sources: Any, policy: Policy = "skip") -> tuple[Any, ReadReport]:
    """Read every pair into a `datasets.Dataset` with columns prompt, chosen, rejected."""
    return read_rows(sources, policy, lambda record: [preference_pair(record)], ("prompt", "chosen", "rejected"))


def load_kto_examples(sources: Any, policy: Policy = "skip") -> tuple[Any, ReadReport]:
    """Read unpaired examples (and pairs, split in two) into a `datasets.Dataset` with columns prompt,
    completion, label."""
    return read_rows(sources, policy, kto_examples, ("prompt", "completion", "label"))
