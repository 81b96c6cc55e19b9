"""Fold a LoRA adapter into its base model: BELLE's `merge_llama_with_lora`, on peft."""

from __future__ import annotations

import json
from pathlib import Path

from belle.modeling import load_model, load_tokenizer, read_checkpoint_info, write_checkpoint_info


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
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    write_checkpoint_info(
        out,
        info.get("template", "model"),
        config=info.get("config"),
        merged_from={"base": str(base), "adapter": str(adapter), "lora_r": adapter_config.get("r")},
    )
    return out
