"""The tiny model, tokenizer loading (pad != EOS), checkpoint info, and model loading with LoRA."""

import json

import pytest
import torch

from belle.modeling import (
    load_model,
    load_tokenizer,
    read_checkpoint_info,
    resolve_dtype,
    resolve_template,
    write_checkpoint_info,
)
from belle.templates import get_template, render_text


def test_tiny_model_folder_is_a_normal_hf_folder(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "belle.json"} <= names
    assert not any(name.endswith(".bin") for name in names)
    assert read_checkpoint_info(tiny_model_dir)["template"] == "belle"


def test_tiny_tokenizer_round_trips_chinese_and_english(tokenizer):
    text = "今天天气很好，我们去公园散步吧。The quick brown fox: 1+1=2!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # the BPE learned merges for both languages


def test_tiny_tokenizer_keeps_template_markers_as_single_tokens(tokenizer):
    for marker in ("</s>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>"):
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1, marker


def test_pad_is_distinct_from_eos(tokenizer):
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_saved_chat_template_is_the_belle_template(tiny_model_dir, tokenizer):
    messages = [{"role": "user", "content": "你好"}]
    expected = render_text(get_template("belle"), messages, True, tokenizer.bos_token, tokenizer.eos_token)
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_tiny_model_is_deterministic_and_generates(tiny_model_dir, tmp_path, tokenizer):
    from belle.modeling import build_tiny_model

    other = build_tiny_model(tmp_path / "again")
    a, b = load_model(tiny_model_dir, device="cpu"), load_model(other, device="cpu")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    out = a.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 5)


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


def test_sentencepiece_tokenizer_has_llamas_layout():
    """Ids 0-2 are `<unk>`, `<s>`, `</s>` (the only special tokens), 3-258 the byte pieces, as in
    LLaMA's vocabulary; BOS is added, and text outside the vocabulary is spelled in bytes."""
    from belle.modeling import tiny_corpus_documents, train_sentencepiece_tokenizer

    tok = train_sentencepiece_tokenizer(tiny_corpus_documents()[:20], 600)
    assert [tok.id_to_token(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert tok.id_to_token(258) == "<0xFF>"
    assert [t.content for t in tok.get_added_tokens_decoder().values() if t.special] == ["<unk>", "<s>", "</s>"]
    encoding = tok.encode("hi 🦄")
    assert encoding.tokens[0] == "<s>" and encoding.tokens[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x84>"]
    assert tok.decode(encoding.ids) == "hi 🦄"
