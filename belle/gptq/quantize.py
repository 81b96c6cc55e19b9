"""`belle gptq quantize`: GPTQ or round-to-nearest (RTN) weight quantization through GPTQModel.

Both methods write the same standard GPTQ checkpoint: int32-packed `qweight`/`qzeros`, `scales` and
`g_idx` per quantized Linear in safetensors, `quantize_config.json`, and `quantization_config` in
config.json, which transformers (with optimum and gptqmodel installed), vLLM and GPTQModel load
unchanged. GPTQ rounds one weight column at a time and spreads each rounding error over the
columns not yet rounded, weighted by the inverse Hessian of the layer's calibration inputs; RTN
rounds every weight to its nearest grid point and needs no data (GPTQModel's weight-only RTN,
exported in the GPTQ format). The folder also gets the tokenizer with its chat_template, a
`belle.json` recording the template and the quantization, and `quantize.json` (settings, seconds,
weight sizes).

Only the Linear layers inside the decoder blocks are quantized; embeddings, norms and the LM head
stay in 16 bits (`--dtype`), as in the GPTQ paper and BELLE's released GPTQ models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from belle.architectures import family_of
from belle.cli import UsageError
from belle.gptq.calibration import calibration_samples, is_text_file
from belle.modeling import (TOKENIZER_FILES, ModelFolderError, check_model_path, model_type, read_checkpoint_info,
                            resolve_template, weights_bytes, write_checkpoint_info)
from belle.records import read_json_object, write_text_atomic
from belle.templates import Template, to_jinja

logger = logging.getLogger(__name__)

BITS = (2, 3, 4, 8)
KERNEL_GROUP_SIZES = (16, 32, 64, 128, 256, 512, 1024)
CPU_INT4_GROUP_SIZES = (32, 64, 128, 256)
QUANTIZE_JSON = "quantize.json"
GENERATION_CONFIG = "generation_config.json"
Method = Literal["gptq", "rtn"]
# Model types quantized without GPTQModel's disk offload: GPTQModel 7.6 names GPT-NeoX's LM head
# `embed_out` (transformers 5: `lm_head`), so with offload the head is never written back and saving fails.
IN_MEMORY = frozenset({"gpt_neox"})
QuantDtype = Literal["auto", "float16", "bfloat16", "float32"]


def quantize(
    *,
    model: Path,
    out: Path,
    bits: int = 4,
    group_size: int = 128,
    desc_act: bool = False,
    sym: bool = True,
    method: Method = "gptq",
    calibration: list[str] | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    batch_size: int = 1,
    damp_percent: float = 0.05,
    dtype: QuantDtype = "auto",
    device: str | None = None,
    template: str | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> int:
    """Quantize a model's decoder Linear layers to 2, 3, 4 or 8 bits with GPTQ (or RTN) and save a GPTQ checkpoint.

    Args:
        model: model folder (config.json, safetensors, tokenizer; belle.json names its template).
        out: new folder for the quantized model (must not exist or be empty).
        bits: bits per weight: 2, 3, 4 or 8.
        group_size: weights sharing one scale and zero point along a row; -1: one per row. Must divide
            the input width of every quantized layer.
        desc_act: quantize columns in order of decreasing activation (better accuracy at 2-3 bits,
            slower kernels); gptq only.
        sym: symmetric grid (zero point fixed at the middle); --no-sym: asymmetric.
        method: gptq (error-compensating, needs --calibration) or rtn (round to nearest, no data).
        calibration: conversation files (.json/.jsonl, rendered with the model's template) or plain
            .txt files; required for gptq.
        nsamples: calibration windows (the GPTQ paper: 128).
        seqlen: tokens per calibration window (the GPTQ paper: 2048).
        batch_size: calibration windows per forward pass.
        damp_percent: Hessian damping, as a fraction of its mean diagonal (GPTQModel's default 0.05).
        dtype: type of the unquantized weights (embeddings, norms, LM head) and of the computation;
            auto: the model's own 16-bit type, bfloat16 for a float32 model.
        device: where to quantize: cuda, cuda:N or cpu; default: a GPU if present.
        template: the template the model is prompted with: renders conversation calibration files,
            and goes into belle.json and the tokenizer's chat_template; default: the model's belle.json,
            else its tokenizer's chat_template.
        seed: which calibration windows are drawn.
        trust_remote_code: allow the model folder's own Python code.
    """
    model, out = Path(model).resolve(), Path(out).resolve()
    paths = [Path(p).resolve() for p in calibration or []] if method == "gptq" else []
    if calibration and method == "rtn":
        logger.warning("--method rtn uses no calibration data; ignoring --calibration")
    problems = check_arguments(
        model=model, out=out, bits=bits, group_size=group_size, desc_act=desc_act, method=method,
        calibration=paths, nsamples=nsamples, seqlen=seqlen, batch_size=batch_size, damp_percent=damp_percent,
    )
    if problems:
        raise UsageError("\n  ".join(["cannot quantize:", *problems]))
    started = time.perf_counter()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    chat_template = _template(model, tokenizer, template, needed=any(not is_text_file(p) for p in paths))
    samples = None
    if method == "gptq":
        _check_seqlen(model, seqlen, trust_remote_code)
        samples = calibration_samples(paths, tokenizer, chat_template, nsamples=nsamples, seqlen=seqlen, seed=seed)

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(12, ((os.cpu_count() or 1) + 1) // 2))))
    with tempfile.TemporaryDirectory(prefix="belle-gptq-") as work, contextlib.chdir(work):
        tick = time.perf_counter()
        qmodel = _load(model, bits, group_size, desc_act, sym, method, damp_percent, dtype, device,
                       trust_remote_code, work)
        seconds = {"load": time.perf_counter() - tick}
        layers = quantizable_layers(qmodel)
        problems = check_layers(layers, group_size, model)
        if problems:
            raise UsageError("\n  ".join(["cannot quantize:", *problems]))
        if bits == 4 and not all(_group(width, group_size) in CPU_INT4_GROUP_SIZES for width in layers.values()):
            logger.warning("GPTQModel's CPU kernel for 4 bits takes groups of 32 to 256 weights only: on the CPU"
                           " this checkpoint runs on transformers' slower torch kernel (belle picks it)")
        logger.info("quantizing %d Linear layers of %s to %d bits (%s, group size %d)",
                    len(layers), model, bits, method, group_size)
        tick = time.perf_counter()
        qmodel.quantize(samples, batch_size=batch_size)
        seconds["quantize"] = time.perf_counter() - tick
        tick = time.perf_counter()
        qmodel.save(str(out))
        seconds["save"] = time.perf_counter() - tick

    quantization = {
        "method": method, "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
        "source": str(model), "calibration": [str(p) for p in paths],
    }
    _complete_folder(out, model, tokenizer, chat_template, template is not None, quantization)
    seconds["total"] = time.perf_counter() - started
    summary = {
        "model": str(model),
        "out": str(out),
        **{k: v for k, v in quantization.items() if k != "source"},
        "nsamples": nsamples if method == "gptq" else 0,
        "seqlen": seqlen if method == "gptq" else 0,
        "batch_size": batch_size,
        "damp_percent": damp_percent if method == "gptq" else None,
        "seed": seed,
        "dtype": str(getattr(qmodel.model.config, "dtype", dtype)).removeprefix("torch."),
        "device": _device_name(getattr(qmodel.quantize_config, "device", None)) or device,
        "template": chat_template.name if chat_template else None,
        "quantized_layers": len(layers),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        **_sizes(model, out),
        "gptqmodel_version": _gptqmodel_version(),
    }
    write_text_atomic(out / QUANTIZE_JSON, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    print(
        f"{method} {bits}-bit, group size {group_size}: {len(layers)} layers in {seconds['quantize']:.1f} s"
        f" ({seconds['total']:.1f} s in all); weights {_mb(summary['source_weight_bytes'])} ->"
        f" {_mb(summary['output_weight_bytes'])} ({summary['size_ratio']}x); wrote {out}"
    )
    return 0


def _template(model: Path, tokenizer: Any, name: str | None, needed: bool) -> Template | None:
    """The template the model is prompted with (see `resolve_template`), or None if it has none
    and none is `needed` (no conversation files to render)."""
    try:
        return resolve_template(model, tokenizer, name)
    except ValueError as e:
        if needed or name:
            raise UsageError(str(e)) from None
        return None


def _check_seqlen(model: Path, seqlen: int, trust_remote_code: bool) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions and seqlen > max_positions:
        raise UsageError(f"--seqlen {seqlen} is longer than {model}'s max_position_embeddings {max_positions}")


def _complete_folder(
    out: Path, model: Path, tokenizer: Any, chat_template: Template | None, named: bool, quantization: dict[str, Any]
) -> None:
    """Give GPTQModel's checkpoint the source's tokenizer (with the chat_template of the template
    it was calibrated with, when one was `named` or the tokenizer has none), its generation config,
    and a belle.json: the source's, plus the template and the quantization."""
    if chat_template is not None and chat_template.name != "model" and (named or not tokenizer.chat_template):
        tokenizer.chat_template = to_jinja(chat_template)
    tokenizer.save_pretrained(str(out))
    if (model / GENERATION_CONFIG).is_file():  # GPTQModel rewrites it (do_sample: true); keep the model's own
        shutil.copyfile(model / GENERATION_CONFIG, out / GENERATION_CONFIG)
    info = {k: v for k, v in read_checkpoint_info(model).items() if k not in ("belle_version", "template")}
    write_checkpoint_info(out, chat_template.name if chat_template else None, **info, quantization=quantization)


def _sizes(model: Path, out: Path) -> dict[str, Any]:
    source, output = weights_bytes(model), weights_bytes(out)
    return {"source_weight_bytes": source, "output_weight_bytes": output,
            "size_ratio": round(output / source, 4) if source else None}


def check_arguments(
    *,
    model: Path,
    out: Path,
    bits: int,
    group_size: int,
    desc_act: bool,
    method: str,
    calibration: list[Path],
    nsamples: int,
    seqlen: int,
    batch_size: int,
    damp_percent: float,
) -> list[str]:
    """Every problem with the arguments, each a sentence saying how to fix it (empty if none)."""
    problems = []
    if not (model / "config.json").is_file():
        problems.append(f"--model {model}: not a model folder (no config.json)")
    else:
        try:
            config = read_json_object(model / "config.json", ModelFolderError)
            check_model_path(model, TOKENIZER_FILES, "tokenizer")
            family = family_of(config)
            if family is not None and family.gptq_refusal:
                problems.append(f"--model {model}: belle cannot GPTQ-quantize {family.name} models:"
                                f" {family.gptq_refusal}")
        except ModelFolderError as e:
            problems.append(f"--model {e}")
    if out == model:
        problems.append("--out must be a new folder, not the model folder")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        problems.append(f"--out {out}: exists and is not an empty folder; pick a new one or remove it")
    if bits not in BITS:
        problems.append(f"--bits {bits}: choose one of {', '.join(map(str, BITS))}")
    if group_size != -1 and group_size <= 0:
        problems.append(f"--group-size {group_size}: use -1 (one group per row) or a positive divisor"
                        " of the layer widths")
    if method == "gptq":
        if not calibration:
            problems.append("--method gptq needs --calibration: conversation files or .txt files (or use --method rtn)")
        if nsamples < 1:
            problems.append(f"--nsamples {nsamples}: must be at least 1")
        if seqlen < 16:
            problems.append(f"--seqlen {seqlen}: must be at least 16 tokens")
        if not 0 < damp_percent < 1:
            problems.append(f"--damp-percent {damp_percent}: must be between 0 and 1")
    elif desc_act:
        problems.append("--desc-act orders columns by calibration activations; --method rtn has none")
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: must be at least 1")
    return problems


def quantizable_layers(qmodel: Any) -> dict[str, int]:
    """`{name: in_features}` of the Linear layers GPTQModel will quantize, in model order.

    They are the Linear modules inside the decoder blocks (the model definition's layers node)
    whose names the definition lists; their input width is what a group must divide.
    """
    import torch

    suffixes = {name for block in qmodel.simple_layer_modules(qmodel.model.config, qmodel.quantize_config)
                for name in block}
    layers: dict[str, int] = {}
    for node in qmodel.extract_layers_node():
        try:
            blocks = qmodel.model.get_submodule(node)
        except AttributeError:
            continue
        for name, module in blocks.named_modules():
            if isinstance(module, torch.nn.Linear) and name.split(".", 1)[-1] in suffixes:
                layers[f"{node}.{name}"] = module.in_features
    return layers


def check_layers(layers: dict[str, int], group_size: int, model: Path) -> list[str]:
    """Problems with the layers to quantize: none at all, or widths the group size does not divide."""
    if not layers:
        return [f"{model}: no quantizable layers (GPTQ quantizes the Linear layers inside the decoder blocks,"
                " and this model has none)"]
    if group_size == -1:
        return []
    bad = {name: width for name, width in layers.items() if width % group_size}
    if not bad:
        return []
    width = math.gcd(*layers.values())
    fits = [str(g) for g in KERNEL_GROUP_SIZES if width % g == 0] + ["-1"]
    named = ", ".join(f"{name} ({w})" for name, w in list(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return [f"--group-size {group_size} does not divide the input width of {len(bad)} layers: {named}{more};"
            f" choose one of {', '.join(fits)}"]


def _group(width: int, group_size: int) -> int:
    return width if group_size == -1 else group_size


def _load(
    model: Path, bits: int, group_size: int, desc_act: bool, sym: bool, method: str, damp_percent: float,
    dtype: str, device: str | None, trust_remote_code: bool, work: str,
) -> Any:
    """GPTQModel's quantization wrapper around the model, on `device`."""
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import RTNConfig

    offload = ({"offload_to_disk": False} if model_type(model) in IN_MEMORY
               else {"offload_to_disk_path": str(Path(work) / "offload")})
    common = {"bits": bits, "group_size": group_size, "sym": sym, **offload}
    if method == "rtn":
        config = RTNConfig(**common)
    else:
        # GPTQModel's group-aware reordering (its default) needs groups; without them, plain GPTQ
        config = QuantizeConfig(**common, desc_act=desc_act, damp_percent=damp_percent,
                                act_group_aware=not desc_act and group_size != -1)
    kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    return GPTQModel.load(str(model), config, device=device, trust_remote_code=trust_remote_code, **kwargs)


def _device_name(device: Any) -> str | None:
    """`cpu`, `cuda:0`, ... from GPTQModel's DEVICE enum or a torch.device."""
    return None if device is None else str(getattr(device, "value", device))


def _gptqmodel_version() -> str:
    from importlib.metadata import version

    return version("gptqmodel")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
