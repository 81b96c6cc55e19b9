"""Which layers get LoRA adapters, checked before the model loads, and what the adapters cost.

`lora.target_modules` names layers as peft matches them: a name adapts every module whose dotted
name is that name or ends with `.` + that name (`q_proj` adapts `model.layers.N.self_attn.q_proj` in
every block). `all-linear` stands for every linear layer of the blocks, the LM head (the output
embedding) excluded: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj on LLaMA;
query_key_value, dense, dense_h_to_4h, dense_4h_to_h on BLOOM. belle resolves it into those names
itself, so the adapter's `adapter_config.json` and the run's summary list them.

A LoRA adapter on a linear layer of `in` x `out` features adds r x (in + out) parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from belle.train.config import TrainConfig

ALL_LINEAR = "all-linear"


def meta_model(path: str | Path, trust_remote_code: bool = False) -> Any:
    """The model of `path`'s config.json with every tensor on the `meta` device: its module tree
    and shapes, without reading or allocating any weight (well under a second for a 7B model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def is_linear(module: Any) -> bool:
    """`nn.Linear` (bitsandbytes' 4- and 8-bit layers subclass it) or transformers' `Conv1D` (GPT-2)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def block_linear_names(model: Any) -> list[str]:
    """The last name part of every linear layer except the output embedding, in model order without
    repeats: what `all-linear` adapts."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: list[str] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if module is not output and is_linear(module) and leaf not in names:
            names.append(leaf)
    return names


def resolve_targets(requested: list[str], model: Any) -> list[str]:
    """`requested` with `all-linear` replaced by `block_linear_names(model)`, without repeats."""
    names: list[str] = []
    for name in requested:
        for resolved in block_linear_names(model) if name == ALL_LINEAR else [name]:
            if resolved not in names:
                names.append(resolved)
    return names


def target_problems(requested: list[str], model: Any, model_name: str = "this model") -> list[str]:
    """One sentence when a requested name matches no module of `model`, or matches one that is not
    a linear layer; naming the model's linear layers so the user can pick."""
    modules = list(model.named_modules())
    faults = []
    for target in requested:
        if target == ALL_LINEAR:
            continue
        matched = [module for name, module in modules if name == target or name.endswith("." + target)]
        if not matched:
            faults.append(f"{target} matches no module")
            continue
        kinds = sorted({type(m).__name__ for m in matched if not is_linear(m)})
        if kinds:
            advice = " (to train it in full, list it in lora.modules_to_save)" if "Embedding" in " ".join(kinds) else ""
            faults.append(f"{target} is {' and '.join(_a(k) for k in kinds)}, not a linear layer{advice}")
    if not faults:
        return []
    return [
        f"lora.target_modules: {'; '.join(faults)}; the linear layers of {model_name}'s blocks are "
        f"{', '.join(block_linear_names(model))} ([{ALL_LINEAR}] adapts them all)"
    ]


def check_targets(config: TrainConfig) -> list[str]:
    """`target_problems` for a lora or qlora run, judged on `meta_model` before any weight loads."""
    if config.method == "full" or not (Path(config.model.path) / "config.json").is_file():
        return []
    try:
        model = meta_model(config.model.path, config.model.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"model.path: {config.model.path}: transformers cannot build a model from its config.json, "
                f"so lora.target_modules cannot be checked ({e})"]
    from belle.architectures import family_of

    family = family_of(model.config)
    return target_problems(config.lora.target_modules, model, family.name if family else model.config.model_type)


def adapter_report(model: Any, adapter: str = "default") -> dict[str, Any]:
    """What the LoRA `adapter` of a peft `PeftModel` covers and costs.

    `trainable_parameters` and `total_parameters` are peft's own counts (trainable ones include
    `modules_to_save`; the total includes this adapter; ZeRO-3 partitioned and 4-bit weights are
    counted at their full size), less the frozen copies of other adapters (TRL's DPO adds a `ref` one).
    """
    adapted = model.base_model.targeted_module_names
    trainable, total = model.get_nb_trainable_parameters()
    others = tuple(f".{name}." for name in model.peft_config if name != adapter)
    total -= sum(_numel(p) for name, p in model.named_parameters() if others and any(o in name for o in others))
    peft_config = model.peft_config[adapter]
    return {
        "r": peft_config.r,
        "target_modules": list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in adapted)),
        "adapted_modules": len(adapted),
        "modules_to_save": sorted(peft_config.modules_to_save or []),
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


def describe(report: dict[str, Any]) -> str:
    """`LoRA: r 16 on q_proj, ... (224 layers): 39,976,960 trainable parameters (0.59% of 6.78B)`."""
    trained_in_full = f", {', '.join(report['modules_to_save'])} trained in full" if report.get("modules_to_save") else ""
    share = report["trainable_parameters"] / max(report["total_parameters"], 1)
    return (
        f"LoRA: r {report['r']} on {', '.join(report['target_modules'])} ({report['adapted_modules']} layers{trained_in_full}): "
        f"{report['trainable_parameters']:,} trainable parameters ({share:.2%} of {_short(report['total_parameters'])})"
    )


def _numel(parameter: Any) -> int:
    """Elements of a parameter, also when ZeRO-3 holds only its partition."""
    return parameter.ds_numel if parameter.numel() == 0 and hasattr(parameter, "ds_numel") else parameter.numel()


def _short(count: int) -> str:
    """6778392576 -> 6.78B, 1300000 -> 1.30M."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "AEIOU" else f"a {noun}"
