"""What the generating jobs share: a journal of finished work units, counts, and the end report.

Each job appends one line per finished unit (a request of self-instruct, a dialogue of `data chat`)
to `OUTPUT.progress.jsonl`, after that unit's records are in OUTPUT. A re-run reads both files and
goes on with the units not journaled yet.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belle.records import write_text_atomic


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress.jsonl")


@dataclass
class Progress:
    """Totals over this run and the runs it resumes.

    Journal entries look like `{"kept": [...ids], "discarded": {reason: n}, "prompt_tokens": n,
    "completion_tokens": n}`, or `{"failed": kind}` for a unit whose request failed for good.
    """

    kept: int = 0
    units: int = 0
    discarded: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def record(self, entry: dict[str, Any]) -> None:
        if entry.get("failed"):
            self.failed[entry["failed"]] += 1
            return
        self.units += 1
        self.discarded.update(entry.get("discarded", {}))
        self.prompt_tokens += entry.get("prompt_tokens", 0)
        self.completion_tokens += entry.get("completion_tokens", 0)

    def postfix(self) -> str:
        """The progress bar's tail: discarded counts by reason, and failures."""
        parts = [f"{reason} {n}" for reason, n in self.discarded.most_common()]
        if self.failed:
            parts.append(f"failed {sum(self.failed.values())}")
        return "discarded: " + (", ".join(parts) if parts else "none")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "units": self.units,
            "discarded": dict(self.discarded.most_common()),
            "failed": dict(self.failed.most_common()),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
        }

    def summary_lines(self, unit: str) -> list[str]:
        failed = sum(self.failed.values())
        return [
            f"- {unit} done: {self.units}; failed for good: {failed}"
            + "".join(f", {kind} {n}" for kind, n in self.failed.most_common()),
            f"- discarded: {sum(self.discarded.values())}"
            + "".join(f", {reason} {n}" for reason, n in self.discarded.most_common()),
            f"- tokens (all runs): {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion",
        ]


def write_report(output: Path, stats: dict[str, Any], summary_lines: list[str]) -> None:
    """Write OUTPUT.stats.json and OUTPUT.summary.md, and print the summary."""
    write_text_atomic(output.with_name(output.name + ".stats.json"), json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    summary = "\n".join(summary_lines) + "\n"
    write_text_atomic(output.with_name(output.name + ".summary.md"), summary)
    print(summary, end="")
