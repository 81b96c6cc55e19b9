"""What defines a run, kept in `run_fingerprint.json` in its output folder.

A run resumed with other data or other optimisation settings would continue the old scheduler and
optimizer state and overwrite the old model, so a later run into the same folder compares its
fingerprint with the stored one and is refused on any difference (unless `resume=force`). Settings
that only change what is logged, saved or evaluated, and where, are left out: changing them
continues the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from belle.records import write_text_atomic
from belle.train.config import RL_STAGES, TrainConfig

FILENAME = "run_fingerprint.json"

# training.* keys that change the optimisation; logging, saving, eval and reporting ones do not.
TRAINING_KEYS = (
    "epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
    "warmup_ratio", "weight_decay", "max_grad_norm", "optim", "precision", "seed", "deepspeed",
)
DATA_KEYS = ("format", "max_length", "pack", "overlong", "validation_split")
# reward.judge.* keys that change the rewards; where the judge is reached, and how (endpoint, key,
# concurrency, retries, cache), do not.
JUDGE_KEYS = ("model", "default_class")
MODEL_FILES = ("config.json", "*.safetensors", "tokenizer.json", "tokenizer_config.json")


def run_fingerprint(config: TrainConfig) -> dict[str, Any]:
    """The settings and input files that define `config`'s run, as flat `key: JSON value` pairs.

    Files are identified by resolved path, size in bytes and modification time in nanoseconds.
    """
    fingerprint: dict[str, Any] = {
        "stage": config.stage,
        "method": config.method,
        "model.path": _resolved(config.model.path),
        "model.template": config.model.template,
    }
    model = Path(config.model.path)
    for pattern in MODEL_FILES:
        for path in sorted(model.glob(pattern)) if model.is_dir() else ():
            fingerprint[f"model file {path.name}"] = _stamp(path)
    for key in ("train_files", "validation_files"):
        names = getattr(config.data, key)
        fingerprint[f"data.{key}"] = [_resolved(name) for name in names]
        for name in names:
            for path in _files(Path(name)):
                fingerprint[f"data file {_resolved(path)}"] = _stamp(path)
    fingerprint.update({f"data.{k}": getattr(config.data, k) for k in DATA_KEYS})
    fingerprint.update({f"training.{k}": getattr(config.training, k) for k in TRAINING_KEYS})
    if config.method != "full":
        fingerprint.update({f"lora.{k}": v for k, v in vars(config.lora).items()})
    if config.stage == "dpo":
        fingerprint.update({f"dpo.{k}": v for k, v in vars(config.dpo).items()})
    if config.stage in RL_STAGES:
        fingerprint.update({f"rl.{k}": v for k, v in vars(config.rl).items()})
        reward = config.reward
        fingerprint["reward.weights"] = reward.weights
        fingerprint["reward.model"] = _resolved(reward.model) if reward.model else None
        fingerprint.update({f"reward.{k}": getattr(reward, k) for k in ("format_pattern", "length_target")})
        if "judge" in reward.weights:
            fingerprint.update({f"reward.judge.{k}": getattr(reward.judge, k) for k in JUDGE_KEYS})
            fingerprint["reward.judge.prompts"] = _resolved(reward.judge.prompts) if reward.judge.prompts else None
    if config.stage == "kto":
        fingerprint.update({f"kto.{k}": v for k, v in vars(config.kto).items()})
    return json.loads(json.dumps(fingerprint))


def read_fingerprint(output_dir: str | Path) -> dict[str, Any] | None:
    """The fingerprint stored in `output_dir`, or None when there is none (a new folder, or a run
    by an older belle); an unreadable file counts as a fingerprint that matches nothing."""
    path = Path(output_dir) / FILENAME
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"run_fingerprint.json": f"unreadable ({e})"}
    return stored if isinstance(stored, dict) else {"run_fingerprint.json": "not a JSON object"}


def write_fingerprint(output_dir: str | Path, fingerprint: dict[str, Any]) -> None:
    write_text_atomic(Path(output_dir) / FILENAME, json.dumps(fingerprint, ensure_ascii=False, indent=1) + "\n")


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every key whose value differs, in the new fingerprint's order."""
    keys = list(new) + [k for k in old if k not in new]
    return [f"{k}: {_show(old, k)} -> {_show(new, k)}" for k in keys if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def check_fingerprint(config: TrainConfig) -> list[str]:
    """One problem when `config.output_dir` holds a run with another fingerprint, listing every
    difference; none under `resume=force`, in a folder without a fingerprint, or for the same run."""
    if config.resume == "force" or not config.output_dir:
        return []
    stored = read_fingerprint(config.output_dir)
    if stored is None:
        return []
    changed = differences(stored, run_fingerprint(config))
    if not changed:
        return []
    return [
        f"output_dir: {config.output_dir} holds a run with other data or settings, which this run would continue "
        f"and overwrite; choose another output_dir, or set resume=force to continue it with the new ones. "
        f"Differences ({len(changed)}):\n      " + "\n      ".join(changed)
    ]


_ABSENT = object()


def _show(fingerprint: dict[str, Any], key: str) -> str:
    return json.dumps(fingerprint[key], ensure_ascii=False) if key in fingerprint else "(none)"


def _resolved(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _files(path: Path) -> list[Path]:
    """A file itself, or every file below a folder (a saved dataset holds several), sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else []


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}"

