"""The tiny model (`belle.models.tiny`): a normal Hugging Face folder, deterministic, with a tokenizer
that round-trips Chinese and English, keeps the template markers whole, and (sentencepiece) LLaMA's layout."""

import torch

from belle.modeling import load_model, read_checkpoint_info
from belle.models.tiny import build_tiny_model, tiny_corpus_documents, train_sentencepiece_tokenizer
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


def test_saved_chat_template_is_the_belle_template(tiny_model_dir, tokenizer):
    messages = [{"role": "user", "content": "你好"}]
    expected = render_text(get_template("belle"), messages, True, tokenizer.bos_token, tokenizer.eos_token)
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_tiny_model_is_deterministic_and_generates(tiny_model_dir, tmp_path, tokenizer):
    other = build_tiny_model(tmp_path / "again")
    a, b = load_model(tiny_model_dir, device="cpu"), load_model(other, device="cpu")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    out = a.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 5)


def test_sentencepiece_tokenizer_has_llamas_layout():
    """Ids 0-2 are `<unk>`, `<s>`, `</s>` (the only special tokens), 3-258 the byte pieces, as in
    LLaMA's vocabulary; BOS is added, and text outside the vocabulary is spelled in bytes."""
    tok = train_sentencepiece_tokenizer(tiny_corpus_documents()[:20], 600)
    assert [tok.id_to_token(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert tok.id_to_token(258) == "<0xFF>"
    assert [t.content for t in tok.get_added_tokens_decoder().values() if t.special] == ["<unk>", "<s>", "</s>"]
    encoding = tok.encode("hi 🦄")
    assert encoding.tokens[0] == "<s>" and encoding.tokens[-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x84>"]
    assert tok.decode(encoding.ids) == "hi 🦄"
