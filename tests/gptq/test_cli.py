"""`belle gptq` as a user runs it: quantize, evaluate beside the reference, and use the quantized
folder where models are loaded (here `belle eval generate`)."""

import json

import pytest

from belle.models.tiny import tiny_heldout_text


@pytest.mark.slow
def test_quantize_eval_and_use_through_the_cli(belle_cli, trained_tiny_dir, tmp_path):
    out = tmp_path / "rtn4"
    quantized = belle_cli("gptq", "quantize", "--model", str(trained_tiny_dir), "--out", str(out), "--method", "rtn",
                          "--bits", "4", "--group-size", "128", "--device", "cpu")
    assert quantized.returncode == 0, quantized.stderr
    assert json.loads((out / "quantize.json").read_text())["bits"] == 4

    text = tmp_path / "heldout.txt"
    text.write_text(tiny_heldout_text(), encoding="utf-8")
    evaluated = belle_cli("gptq", "eval", "--model", str(out), "--reference", str(trained_tiny_dir), "--text", str(text),
                          "--seqlen", "128", "--gen-tokens", "8", "--output", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [row["perplexity"] > 1 for row in report["models"]] == [True, True]
    assert "perplexity" in (tmp_path / "eval" / "eval.md").read_text()

    answers = tmp_path / "answers.jsonl"
    generated = belle_cli("eval", "generate", "--model", str(out), "--output", str(answers), "--limit", "3",
                          "--max-new-tokens", "4", "--device", "cpu")
    assert generated.returncode == 0, generated.stderr
    assert len(answers.read_text(encoding="utf-8").splitlines()) == 3

    bad = belle_cli("gptq", "quantize", "--model", str(trained_tiny_dir), "--out", str(tmp_path / "bad"), "--bits", "5",
                    "--method", "rtn")
    assert bad.returncode == 2 and "--bits 5: choose one of 2, 3, 4, 8" in bad.stderr


def test_a_family_gptqmodel_cannot_quantize_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    """Phi-3's checkpoint from GPTQModel would not load in transformers: exit 2 with the reason, and
    the model (a Phi-3 config.json and unreadable weights here) is never loaded."""
    import shutil

    from belle.architectures import FAMILIES
    from belle.cli import main

    model = tmp_path / "phi3"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": "phi3"}), encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["gptq", "quantize", "--model", str(model), "--out", str(tmp_path / "q"), "--method", "rtn"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"belle cannot GPTQ-quantize Phi-3 models: {FAMILIES['phi3'].gptq_refusal}" in err
    assert not (tmp_path / "q").exists()
