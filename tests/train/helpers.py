"""Inputs for `belle train` runs and readers for what a run writes, shared by the train tests
(JSON Lines files, processes and free ports: `tests.helpers`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Settings that keep a run on the tiny model to seconds and its losses comparable step by step.
QUICK = (
    "training.report_to=[]",
    "training.logging_steps=1",
    "training.lr_scheduler=constant",
    "training.seed=0",
    "data.max_length=256",
)


def train_overrides(model_dir: Path, out: Path, *overrides: str) -> list[str]:
    """`key=value` arguments for a quick run of `model_dir` into `out`; later overrides win."""
    return [f"model.path={model_dir}", f"output_dir={out}", *QUICK, *overrides]


def files_list(*paths: Path) -> str:
    """A list value for an override: `[a.jsonl,b.jsonl]`."""
    return "[" + ",".join(str(p) for p in paths) + "]"


def tail(result: subprocess.CompletedProcess, chars: int = 4000) -> str:
    """The end of a finished process's output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-chars:]}\n--- stderr ---\n{result.stderr[-chars:]}"


def conversation(question: str, answer: str, id: str | None = None) -> dict[str, Any]:
    """One record in BELLE's `conversations` format."""
    record: dict[str, Any] = {"conversations": [{"from": "human", "value": question}, {"from": "assistant", "value": answer}]}
    return {"id": id, **record} if id else record


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def read_metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def losses_by_step(out: Path) -> dict[int, float]:
    """Training loss per optimizer step, from `metrics.json`'s log_history."""
    return {e["step"]: e["loss"] for e in read_metrics(out)["log_history"] if "loss" in e}


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: dict[str, Any], b: dict[str, Any], atol: float) -> None:
    """Same tensor names and shapes, and every value within `atol`; names the worst tensor otherwise."""
    assert a.keys() == b.keys(), f"tensor names differ: {sorted(a.keys() ^ b.keys())[:5]}"
    worst = max(((a[k].float() - b[k].float()).abs().max().item(), k) for k in a)
    assert worst[0] <= atol, f"{worst[1]} differs by {worst[0]:.3g} (> {atol})"


def assert_same_losses(a: dict[int, float], b: dict[int, float], atol: float = 0.0, rtol: float = 0.0) -> None:
    """Both runs logged a loss at the same steps, each pair within `atol + rtol * |a|`."""
    assert a and a.keys() == b.keys(), f"logged steps differ: {sorted(a)} vs {sorted(b)}"
    bad = {s: (a[s], b[s]) for s in a if abs(a[s] - b[s]) > atol + rtol * abs(a[s])}
    assert not bad, f"losses differ at {len(bad)} step(s), (step: (first, second)): {dict(sorted(bad.items())[:5])}"


def numbers_in(text: str) -> list[str]:
    return re.findall(r"\d+\.\d+", text)
