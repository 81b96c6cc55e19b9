"""`belle model tiny` through the CLI."""

import json


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


def test_model_tiny_rejects_inconsistent_shapes(belle_cli, tmp_path):
    result = belle_cli("models", "tiny", "--out", str(tmp_path / "t"), "--hidden-size", "30", "--heads", "4")
    assert result.returncode == 2 and "divisible" in result.stderr
    assert not (tmp_path / "t").exists()


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
