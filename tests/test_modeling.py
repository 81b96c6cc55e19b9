"""Tokenizer loading (pad != EOS), checkpoint info, templates, dtypes, and model loading with LoRA."""

import json

import pytest
import torch

from belle.modeling import (
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_template,
    write_checkpoint_info,
)


def test_pad_is_distinct_from_eos(tokenizer):
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_pad_equal_to_eos_is_replaced(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    fixed = load_tokenizer(tmp_path)
    assert fixed.pad_token == "<unk>" and fixed.pad_token_id != fixed.eos_token_id


def test_missing_pad_without_unk_adds_one_and_the_model_grows(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    config["unk_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_model(folder, device="cpu", tokenizer=tokenizer)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)


def test_lora_adapter_loads_on_its_base_and_alone(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu")
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = lora(ids).logits
        with_base = load_model(tiny_model_dir, device="cpu", adapter=tmp_path / "adapter")(ids).logits
        alone = load_model(tmp_path / "adapter", device="cpu")(ids).logits
        plain = load_model(tiny_model_dir, device="cpu")(ids).logits
    torch.testing.assert_close(with_base, expected)
    torch.testing.assert_close(alone, expected)
    assert not torch.allclose(plain, expected)


def test_template_resolution_order(tiny_model_dir, tmp_path, tokenizer):
    assert resolve_template(tiny_model_dir, tokenizer).name == "belle"
    assert resolve_template(tiny_model_dir, tokenizer, "chatml").name == "chatml"
    write_checkpoint_info(tmp_path, "qwen")
    assert resolve_template(tmp_path, tokenizer).name == "qwen"
    assert resolve_template(tmp_path / "missing", tokenizer).name == "model"
    no_template = type("Tok", (), {"chat_template": None})()
    with pytest.raises(ValueError, match="name a template"):
        resolve_template(tmp_path / "missing", no_template)


def test_dtype_resolution():
    assert resolve_dtype("auto") == (torch.float32 if not torch.cuda.is_available() else resolve_dtype("auto"))
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")
