"""Whether samples packed into one row stay apart on a model: known per family, else probed.

A packed row restarts `position_ids` at every sample and runs without a KV cache; transformers then
derives the block-diagonal attention mask from the positions, so packed logits equal per-sample
logits. That is a property of the architecture, not a given (ALiBi ignores `position_ids`):
`belle.architectures.FAMILIES` records it for the families belle is tested on, a test proves every
entry, and a model type not listed there is probed on the loaded model before it trains.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from belle.architectures import FAMILIES
from belle.cli import UsageError
from belle.modeling import ModelFolderError, model_type
from belle.tokenization import collate, pack_columns
from belle.train.config import TrainConfig

logger = logging.getLogger(__name__)

PROBE_LENGTHS = (24, 8)
"""Token counts of the two random samples the run-time probe packs into one row."""
PROBE_TOLERANCE = {"float32": 1e-4, "float16": 3e-3, "bfloat16": 1e-2}
"""Largest packed-vs-alone logit difference, relative to the largest logit, still counted as equal.
Exact families stay below 4e-3 in bf16 on tiny random models; BLOOM's cross-sample attention gives 2e-2."""


def pack_refusal(model_dir: str | Path) -> str | None:
    """'<Family> (model_type <t>) cannot pack samples: <why>' for a model whose family cannot keep
    packed samples apart; None for every other model (and a folder without config.json)."""
    kind = model_type(model_dir)
    family = FAMILIES.get(kind)
    if family is None or family.pack_refusal is None:
        return None
    return f"{family.name} (model_type {kind}) cannot pack samples: {family.pack_refusal}"


def _uses_zero3(config: TrainConfig) -> bool:
    """Whether the run's DeepSpeed config partitions the weights at load (ZeRO stage 3)."""
    try:
        ds = json.loads(Path(config.training.deepspeed or "").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no DeepSpeed, or a file `check_deepspeed` reports
    zero = ds.get("zero_optimization") if isinstance(ds, dict) else None
    return isinstance(zero, dict) and zero.get("stage") == 3


def _unverifiable(config: TrainConfig) -> str | None:
    """Why packing cannot be checked before training: a model type outside the matrix under ZeRO-3."""
    kind = model_type(config.model.path)
    if FAMILIES.get(kind) is not None or not _uses_zero3(config):
        return None
    return _zero3_sentence(kind)


def _zero3_sentence(kind: str | None) -> str:
    return (f"model_type {kind} is not in belle's architecture matrix, and DeepSpeed ZeRO-3 partitions its weights "
            f"at load, so belle cannot check that samples packed into one row stay apart")


def packing_problems(config: TrainConfig) -> list[str]:
    """Preflight: `data.pack=true` on a model that cannot pack, or whose packing cannot be checked
    (stage pt then trains unpacked, see `pt_unpacked_notice`); a config.json that is not JSON."""
    if config.stage not in ("sft", "pt") or not (config.data.pack or config.stage == "pt"):
        return []
    try:
        why = pack_refusal(config.model.path) or _unverifiable(config)
    except ModelFolderError as e:
        return [f"model.path: {e}"]
    return [str(_refusal(config, None, why))] if config.stage == "sft" and why else []


def pt_unpacked_notice(config: TrainConfig) -> str | None:
    """The notice for stage pt on a model that cannot pack (or cannot be checked): its chunks then
    train unpacked, one per padded row; None when pt packs as usual."""
    if config.stage != "pt":
        return None
    why = pack_refusal(config.model.path) or _unverifiable(config)
    return f"stage pt: {why}; each chunk trains in its own padded row instead" if why else None


def packed_logit_gap(model: Any, samples: list[list[int]], max_length: int, pad_to_multiple_of: int | None = None) -> tuple[float, float]:
    """(largest |packed - alone| logit, largest |alone| logit) over every token of `samples`.

    The samples go through the Trainer's path: best-fit rows (`pack_columns`), `collate` (which
    pads and sets `use_cache=False`), one forward in eval mode without gradients; each sample alone
    is one unpadded forward without cache. Padding positions are not compared.
    """
    import torch

    ids = [str(i) for i in range(len(samples))]
    packed_rows = pack_columns({"id": ids, "input_ids": samples, "labels": samples}, max_length)
    rows = [{"input_ids": i, "labels": i, "position_ids": p} for i, p in zip(packed_rows["input_ids"], packed_rows["position_ids"])]
    pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else 0
    batch = collate(rows, pad_token_id=pad, pad_to_multiple_of=pad_to_multiple_of)
    batch.pop("labels")
    device = model.get_input_embeddings().weight.device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    gap = scale = 0.0
    try:
        with torch.no_grad():
            packed = model(**batch).logits.float()  # (rows, padded length, vocab)
            for r, row_ids in enumerate(packed_rows["ids"]):
                start = 0
                for i in row_ids:
                    sample = samples[int(i)]
                    alone = model(input_ids=torch.tensor([sample], device=device), use_cache=False).logits[0].float()
                    gap = max(gap, (packed[r, start : start + len(sample)] - alone).abs().max().item())
                    scale = max(scale, alone.abs().max().item())
                    start += len(sample)
    finally:
        model.train(was_training)
    return gap, scale


def check_packing(model: Any, config: TrainConfig) -> None:
    """Before training a model type outside the matrix on packed rows, prove on the loaded model
    that two random samples packed into one row give the logits each gives alone; `UsageError` if not."""
    import torch

    packs = (config.stage == "sft" and config.data.pack) or (config.stage == "pt" and pt_unpacked_notice(config) is None)
    kind = model_type(config.model.path)
    if not packs or FAMILIES.get(kind) is not None:
        return
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # ZeRO-3 set up outside training.deepspeed: the weights are partitioned
        raise _refusal(config, kind, _zero3_sentence(kind))
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    samples = [torch.randint(vocab, (n,), generator=generator).tolist() for n in PROBE_LENGTHS]
    gap, scale = packed_logit_gap(model, samples, sum(PROBE_LENGTHS))
    dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    relative = gap / max(scale, 1e-6)
    if relative <= PROBE_TOLERANCE.get(dtype, max(PROBE_TOLERANCE.values())):
        logger.info("packing checked on model_type %s: packed logits equal per-sample ones (relative gap %.1e, %s)",
                    kind, relative, dtype)
        return
    raise _refusal(config, kind, f"model_type {kind} (not in belle's architecture matrix) lets samples packed into one "
                                 f"row attend to each other: packed logits differ from per-sample ones by "
                                 f"{relative:.1e} of the largest logit ({dtype})")


def _refusal(config: TrainConfig, kind: str | None, what: str) -> UsageError:
    """The error that stops a packed run: `what` went wrong, and what the user can do instead."""
    if config.stage == "sft":
        return UsageError(f"data.pack: {what}; set data.pack=false to train each sample in its own padded row")
    return UsageError(f"stage pt: {what}, and pt packs its chunks; add {kind} to belle.architectures.FAMILIES with "
                      f"a pack_refusal so that its chunks train unpacked, one per padded row")
