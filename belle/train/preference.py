"""Preference pairs for DPO: `{"prompt", "chosen", "rejected"}` records -> TRL's conversational form.

The prompt may be a plain question, BELLE's template string (`Human: \\n...\\n\\nAssistant: \\n`,
several turns allowed), or a list of messages; `chosen` and `rejected` are answer strings (or one
assistant message). Every pair becomes `{"prompt": [messages], "chosen": [assistant message],
"rejected": [assistant message]}`, so TRL renders all three with the model's chat template, the
same one SFT trained with.
"""

from __future__ import annotations

from typing import Any, Iterator

from belle.conversation import Policy, is_multiturn_string, record_to_messages, validate_messages
from belle.records import DataError, Rejection, RejectReport, as_source_list, iter_source_records


def prompt_messages(prompt: Any) -> list[dict[str, str]]:
    """The prompt as messages ending with a user turn, or raise `Rejection`."""
    if isinstance(prompt, list):
        messages = record_to_messages({"messages": prompt}, "messages") if prompt else []
    elif isinstance(prompt, str) and is_multiturn_string(prompt):
        messages = record_to_messages({"instruction": prompt, "output": "-"}, "multiturn")[:-1]
    elif isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    else:
        raise Rejection("missing field", "'prompt' is not a non-empty string or list of messages")
    validate_messages(messages, require_assistant=False)
    if not messages or messages[-1]["role"] != "user":
        raise Rejection("roles out of order", "the prompt must end with a user turn")
    return messages


def _answer(record: dict[str, Any], key: str) -> list[dict[str, str]]:
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise Rejection("missing field", f"{key!r} is not a non-empty string")
    return [{"role": "assistant", "content": value}]


def preference_pair(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise Rejection("not an object", f"got {type(record).__name__}")
    if "prompt" not in record:
        raise Rejection("missing field", "'prompt'")
    return {"prompt": prompt_messages(record["prompt"]), "chosen": _answer(record, "chosen"), "rejected": _answer(record, "rejected")}


def _pair_rows(sources: list[Any], policy: Policy, report: RejectReport) -> Iterator[dict[str, Any]]:
    for source in sources:
        for location, _, record in iter_source_records(source):
            try:
                if isinstance(record, Rejection):
                    raise record
                yield preference_pair(record)
            except Rejection as rejection:
                line = report.add(location, rejection)
                if policy == "strict":
                    raise DataError(line) from None


def load_preference_pairs(sources: Any, policy: Policy = "skip") -> tuple[Any, RejectReport]:
    """Read every pair into a `datasets.Dataset`; rejected records are counted in the report."""
    from datasets import Dataset

    report = RejectReport()
    rows = list(_pair_rows(as_source_list(sources), policy, report))
    return Dataset.from_list(rows), report
