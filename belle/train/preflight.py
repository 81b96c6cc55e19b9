"""Checks that need the file system or the hardware, run before any model or data is loaded.

Each returns one sentence per problem; `check_run` collects them all so a user fixes everything in
one go instead of meeting the problems one model load at a time.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from belle.train.checkpoints import MARKER, checkpoint_step, complete_checkpoints, foreign_checkpoints
from belle.train.config import RESUME_MODES, RL_STAGES, TrainConfig
from belle.train.distributed import world_size
from belle.train.fingerprint import check_fingerprint
from belle.train.lora import check_targets
from belle.train.packing import packing_problems


def resolve_precision(precision: str) -> str:
    """`auto` is bf16 on a GPU that supports it, fp16 on other GPUs, and fp32 on CPU."""
    import torch

    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def check_run(config: TrainConfig) -> list[str]:
    import torch

    has_gpu = torch.cuda.is_available()
    problems = _check_paths(config) + packing_problems(config)
    if config.model.attn_implementation == "flash_attention_2":
        if not has_gpu:
            problems.append("model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa on CPU")
        elif importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation: flash_attention_2 needs the flash-attn package; use sdpa or install it")
    if config.method == "qlora":
        if not has_gpu:
            problems.append("method: qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; use method=lora on CPU")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append("method: qlora needs bitsandbytes: pip install 'belle[qlora]'")
    if config.training.precision in ("fp16", "bf16") and not has_gpu:
        problems.append(f"training.precision: {config.training.precision} needs a GPU; use auto or fp32 on CPU")
    if config.training.deepspeed:
        problems += check_deepspeed(Path(config.training.deepspeed), config, resolve_precision(config.training.precision))
    problems += check_targets(config)
    if config.stage in RL_STAGES:
        from belle.train.rewards import reward_problems

        problems += reward_problems(config.reward) + batch_problems(config)
    return problems


def batch_problems(config: TrainConfig) -> list[str]:
    """grpo and rloo: the completions of one optimizer step (batch_size x gradient_accumulation_steps x
    processes) must hold whole groups of rl.num_generations completions. With the `judge` source, so
    must each process's share (batch_size x gradient_accumulation_steps): a failed judgment gets the
    mean of its group's other scores, which the process only has when the whole group is its own."""
    t, n = config.training, config.rl.num_generations
    processes = world_size()
    per_process = t.batch_size * t.gradient_accumulation_steps
    completions = per_process * processes
    if completions % n:
        return [
            f"training.batch_size: stage {config.stage} counts the batch in completions: batch_size {t.batch_size} x "
            f"gradient_accumulation_steps {t.gradient_accumulation_steps} x {processes} process(es) = {completions} per step, "
            f"which must be a multiple of rl.num_generations ({n}) to hold whole groups of a prompt's completions "
            f"(e.g. training.batch_size={n})"
        ]
    if "judge" in config.reward.weights and per_process % n:
        return [
            f"training.batch_size: with the judge reward source each process must hold whole groups of a prompt's "
            f"completions (a failed judgment gets its group's mean score), but batch_size {t.batch_size} x "
            f"gradient_accumulation_steps {t.gradient_accumulation_steps} = {per_process} per process is not a multiple "
            f"of rl.num_generations ({n}); set training.batch_size to a multiple of {n // math.gcd(t.gradient_accumulation_steps, n)}, "
            f"or lower rl.num_generations"
        ]
    return []


def _check_paths(config: TrainConfig) -> list[str]:
    problems = []
    model = Path(config.model.path)
    if not (model / "config.json").is_file():
        what = "does not exist" if not model.exists() else "has no config.json"
        problems.append(f"model.path: {model} {what}; give a Hugging Face model folder")
    for key in ("train_files", "validation_files"):
        for name in getattr(config.data, key):
            if not Path(name).exists():
                problems.append(f"data.{key}: {name} does not exist")
    if config.resume not in RESUME_MODES:
        if not Path(config.resume).is_dir():
            problems.append(f"resume: {config.resume} is not a checkpoint folder; use {', '.join(RESUME_MODES)} or a checkpoint-N folder")
        elif not (Path(config.resume) / MARKER).is_file():
            problems.append(f"resume: {config.resume} is not a complete belle checkpoint (it has no {MARKER} marker)")
    problems += _check_overwrite(config)
    problems += _check_foreign(config)
    problems += check_fingerprint(config)
    return problems


def _resumed_step(config: TrainConfig) -> int:
    """The step this run starts from: that of the checkpoint it resumes, else 0."""
    if config.resume == "never":
        return 0
    if config.resume in RESUME_MODES:
        complete = complete_checkpoints(config.output_dir)
        return complete[-1][0] if complete else 0
    return checkpoint_step(Path(config.resume)) or 0


def _check_foreign(config: TrainConfig) -> list[str]:
    """A `checkpoint-N` folder belle did not write is left alone, unless this run would save into it
    (N is past the start and a multiple of save_steps, or max_steps): the Trainer would write over it."""
    t = config.training
    start = _resumed_step(config)
    at_risk = [path.name for step, path in foreign_checkpoints(config.output_dir)
               if step > start and (step % t.save_steps == 0 or step == t.max_steps)]
    if not at_risk:
        return []
    return [
        f"output_dir: {config.output_dir} holds {', '.join(at_risk)}, not written by belle train (no {MARKER} marker), "
        f"and this run would save over it; move it away or choose another output_dir"
    ]


def _check_overwrite(config: TrainConfig) -> list[str]:
    """A run writes checkpoint-N folders; an earlier run's complete ones with the same names would be
    overwritten file by file and keep their COMPLETE marker while half-written."""
    if config.resume in ("auto", "force"):
        return []
    resumed_at = -1 if config.resume == "never" else checkpoint_step(Path(config.resume))
    if resumed_at is None:
        return []
    later = [path for step, path in complete_checkpoints(config.output_dir) if step > resumed_at]
    if not later:
        return []
    return [
        f"resume: {config.output_dir} holds checkpoints this run would overwrite ({', '.join(p.name for p in later)}); "
        f"resume=auto continues from the newest, or choose another output_dir"
    ]


def check_deepspeed(path: Path, config: TrainConfig, precision: str) -> list[str]:
    """Values fixed in the DeepSpeed JSON must agree with ours; "auto" values are filled from ours."""
    where = f"training.deepspeed: {path}"
    if not path.is_file():
        return [f"{where} does not exist; see train/configs/ds_zero*.json"]
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return [f"{where} is not valid JSON ({e})"]
    if not isinstance(ds, dict):
        return [f"{where} must hold a JSON object"]
    t = config.training
    problems = []
    for keys, ours, name in (
        (("train_micro_batch_size_per_gpu",), t.batch_size, "training.batch_size"),
        (("gradient_accumulation_steps",), t.gradient_accumulation_steps, "training.gradient_accumulation_steps"),
        (("gradient_clipping",), t.max_grad_norm, "training.max_grad_norm"),
        (("optimizer", "params", "lr"), t.learning_rate, "training.learning_rate"),
        (("optimizer", "params", "weight_decay"), t.weight_decay, "training.weight_decay"),
    ):
        theirs = _get(ds, *keys)
        if theirs not in (None, "auto") and theirs != ours:
            key = ".".join(keys)
            problems.append(f"{where} sets {key} to {theirs} but {name} is {ours}; set it to \"auto\" or make them agree")
    for section in ("bf16", "fp16"):
        enabled = _get(ds, section, "enabled")
        if enabled not in (None, "auto") and bool(enabled) != (precision == section):
            problems.append(
                f"{where} sets {section}.enabled to {str(enabled).lower()} but the run's precision is {precision}; "
                f"set it to \"auto\" or set training.precision"
            )
    stage = _get(ds, "zero_optimization", "stage")
    if config.method == "qlora" and stage == 3:
        problems.append(f"{where} uses ZeRO-3, which cannot shard a 4-bit bitsandbytes model; use ZeRO-2 with method=qlora")
    if config.stage == "rm" and config.method == "lora" and stage == 3:
        problems.append(f"{where} uses ZeRO-3, but stage rm merges its LoRA adapter into the base at the end, which needs "
                        "whole weights; use ZeRO-2 (train/configs/ds_zero2.json) or method=full")
    if _get(ds, "zero_optimization", "offload_param", "device") not in (None, "none") and stage != 3:
        problems.append(f"{where} offloads parameters, which only ZeRO-3 does; set zero_optimization.stage to 3")
    return problems


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree
