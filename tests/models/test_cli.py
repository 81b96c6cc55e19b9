"""`belle model tiny` through the CLI."""

import json

import pytest


@pytest.mark.slow
def test_model_tiny_builds_a_loadable_folder(belle_cli, tmp_path):
    out = tmp_path / "tiny"
    result = belle_cli("model", "tiny", "--out", str(out), "--hidden-size", "64", "--intermediate-size", "128", "--template", "chatml")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert json.loads((out / "belle.json").read_text())["template"] == "chatml"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(tokenizer)


def test_model_tiny_rejects_inconsistent_shapes(belle_main, tmp_path):
    result = belle_main("models", "tiny", "--out", str(tmp_path / "t"), "--hidden-size", "30", "--heads", "4")
    assert result.returncode == 2 and "divisible" in result.stderr
    assert not (tmp_path / "t").exists()


def test_model_tiny_builds_other_families_and_a_sentencepiece_tokenizer(tmp_path, capsys):
    """`--arch bloom` writes a BLOOM (ALiBi, fused query_key_value, tied embeddings); `--tokenizer
    sentencepiece` a LLaMA-shaped tokenizer: `▁` word prefixes, byte fallback, BOS added, no pad."""
    from transformers import AutoConfig, AutoTokenizer

    from belle.cli import main

    assert main(["model", "tiny", "--out", str(tmp_path / "bloom"), "--arch", "bloom"]) == 0
    assert "tiny BLOOM model written" in capsys.readouterr().out
    config = AutoConfig.from_pretrained(tmp_path / "bloom")
    assert config.model_type == "bloom" and config.tie_word_embeddings

    assert main(["model", "tiny", "--out", str(tmp_path / "spm"), "--tokenizer", "sentencepiece"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "spm")
    ids = tokenizer("你好 🙂").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.pad_token is None
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[1].startswith("▁") and "<0xF0>" in pieces and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "你好 🙂"


def test_model_tiny_names_the_families_it_builds(tmp_path, capsys):
    from belle.cli import main

    assert main(["model", "tiny", "--out", str(tmp_path / "t"), "--arch", "gpt2"]) == 2
    assert "--arch gpt2: not one of llama, mistral, qwen2, qwen3, gemma2, phi3, bloom, gpt_neox" in capsys.readouterr().err
    assert main(["model", "tiny", "--out", str(tmp_path / "t"), "--tokenizer", "wordpiece"]) == 2
    assert "--tokenizer wordpiece: not one of bpe, sentencepiece" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_models_decrypt_restores_a_release_through_the_cli(belle_cli, tmp_path):
    """A release smaller than one 10 MiB block: the key file simply repeats over each file."""
    import hashlib
    import os

    key = os.urandom(1000)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "consolidated.00.pth").write_bytes(key)
    (tmp_path / "enc").mkdir()
    plain = {"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": os.urandom(5000)}
    for name, data in plain.items():
        digest = hashlib.sha256(data).digest()
        stream = (key * (len(data) // len(key) + 1))[: len(data)]
        (tmp_path / "enc" / f"{name}.{digest.hex()}.enc").write_bytes(digest + bytes(a ^ b for a, b in zip(data, stream)))
    result = belle_cli("models", "decrypt", str(tmp_path / "enc"), str(tmp_path / "llama"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == plain

    (tmp_path / "llama" / "consolidated.00.pth").write_bytes(os.urandom(1000))
    wrong = belle_cli("models", "decrypt", str(tmp_path / "enc"), str(tmp_path / "llama"), str(tmp_path / "out2"))
    assert wrong.returncode == 2 and "sha256" in wrong.stderr
