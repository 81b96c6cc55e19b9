"""The belle_zh_mc dataset, read from questions.jsonl beside this file (lm-eval resolves
`!function data.load` next to the YAML, so the task works from any working directory, offline)."""

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).with_name("questions.jsonl")


def load(**_: Any) -> Any:
    """DatasetDict with splits "dev" (few-shot examples) and "test"; rows have question, A-D and answer (a letter).
    lm-eval passes the task's metadata as keyword arguments; they do not apply."""
    from datasets import Dataset, DatasetDict

    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    splits = {name: [{k: v for k, v in row.items() if k != "split"} for row in rows if row["split"] == name]
              for name in ("dev", "test")}
    return DatasetDict({name: Dataset.from_list(split) for name, split in splits.items()})
