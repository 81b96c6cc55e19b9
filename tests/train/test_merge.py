"""LoRA training saves an adapter; `belle train merge` folds it into a full model with the same outputs."""

import json

import pytest
import torch

from tests.train.helpers import SAMPLES, files_list, read_metrics
from tests.train.test_generation_config import assert_ends_like_the_template


@pytest.mark.slow
def test_lora_run_saves_an_adapter_that_merge_folds_into_the_base(train, belle_cli, tiny_model_dir, tokenizer, tmp_path):
    """method=lora writes adapter files (rank 8) and no full weights; the merged folder is a complete
    model (weights, tokenizer, belle.json) whose logits equal base + adapter, and differ from the base.
    Trained with the chatml template, both folders hold a generation config that ends replies at its
    turn end (test_generation_config.py)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lora"
    train(out, "method=lora", "lora.r=8", f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}",
          "model.template=chatml", "training.max_steps=6", "training.batch_size=2", "training.learning_rate=5e-3")
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert json.loads((out / "belle.json").read_text())["template"] == "chatml"
    assert_ends_like_the_template(out, tokenizer)
    assert read_metrics(out)["train"]["train_loss"] > 0

    merged_dir = tmp_path / "merged"
    result = belle_cli("train", "merge", "--base", str(tiny_model_dir), "--adapter", str(out), "--out", str(merged_dir))
    assert result.returncode == 0, result.stderr
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "config.json").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    assert json.loads((merged_dir / "belle.json").read_text())["template"] == "chatml"
    assert_ends_like_the_template(merged_dir, tokenizer)
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert len(merged_tokenizer) == len(AutoTokenizer.from_pretrained(tiny_model_dir))

    ids = merged_tokenizer("Human: \n为什么天空是蓝色的？\n\nAssistant: \n因为大气散射阳光中的蓝光。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), str(out)).eval()
        expected = adapted(input_ids=ids).logits
        with adapted.disable_adapter():
            base = adapted(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-3, "the adapter barely changes the logits, so the comparison proves nothing"
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)


def test_merge_names_a_missing_adapter_folder(belle_main, tiny_model_dir, tmp_path):
    """Merging from a folder that does not exist is a usage error naming it, and writes nothing."""
    missing = tmp_path / "no-adapter"
    result = belle_main("train", "merge", "--base", str(tiny_model_dir), "--adapter", str(missing), "--out", str(tmp_path / "merged"))
    assert result.returncode == 2 and "error:" in result.stderr and str(missing) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "merged").exists()
