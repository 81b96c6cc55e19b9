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
