"""Fold a LoRA adapter into its base model: BELLE's `merge_llama_with_lora`, on peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from belle.modeling import load_model, load_tokenizer, read_checkpoint_info, reply_end_ids, resolve_template, write_checkpoint_info
from belle.templates import Template


def merge_adapter(base: Path, adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """Write `base` + `adapter` as one full model folder, with the adapter run's tokenizer and
    `belle.json` (or the base's when the adapter folder has none). Returns `out`."""
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    model = load_model(base, dtype=dtype, device="cpu", adapter=adapter, tokenizer=tokenizer)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = read_checkpoint_info(adapter) or read_checkpoint_info(base)
    try:
        template = resolve_template(base, tokenizer, info.get("template"))
    except ValueError:  # no template known: the base's generation config stays as saved
        template = None
    if template is not None:
        write_generation_config(out, merged, tokenizer, template)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    write_checkpoint_info(
        out,
        info.get("template", "model"),
        config=info.get("config"),
        merged_from={"base": str(base), "adapter": str(adapter), "lora_r": adapter_config.get("r")},
    )
    return out


def write_generation_config(folder: Path, model: Any, tokenizer: Any, template: Template) -> None:
    """Write `folder/generation_config.json` for a model trained with `template`: `eos_token_id` lists
    every id that ends a reply (the ids the engine stops at: the tokenizer's EOS, the model's
    configured ones, and the template's turn end when it is one token), with `bos_token_id` and
    `pad_token_id`. Sampling is left to the user: no do_sample, temperature or top_p, so
    `model.generate()`, vLLM and `belle serve` decode greedily unless asked otherwise."""
    from transformers import GenerationConfig

    bos = model.generation_config.bos_token_id
    config = GenerationConfig(
        bos_token_id=bos if bos is not None else tokenizer.bos_token_id,
        eos_token_id=sorted(reply_end_ids(tokenizer, template, model.generation_config.eos_token_id)),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(folder)
