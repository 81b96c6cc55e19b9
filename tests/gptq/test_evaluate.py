"""`belle gptq eval`: the verb end to end, its output files and its usage errors (perplexity itself:
tests/test_perplexity.py)."""

import json
import re
import shutil

import pytest

from belle.cli import run_verbs
from belle.gptq.evaluate import _output_files, eval_
from belle.modeling import weights_bytes
from belle.models.tiny import tiny_heldout_text


def run_eval(*args) -> int:
    return run_verbs([eval_], ["eval", *map(str, args)], "belle gptq")


@pytest.mark.slow
def test_eval_compares_the_gptq_model_with_its_reference(tiny_model_dir, tiny_gptq_dir, tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text(tiny_heldout_text(), encoding="utf-8")
    out = tmp_path / "report"
    assert run_eval("--model", tiny_gptq_dir, "--reference", tiny_model_dir, "--text", text, "--max-chars", 2000,
                    "--seqlen", 256, "--gen-tokens", 16, "--device", "cpu", "--output", out) == 0
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    reference, quantized = report["models"]
    assert (reference["role"], reference["path"]) == ("reference", str(tiny_model_dir))
    assert (quantized["role"], quantized["path"]) == ("model", str(tiny_gptq_dir))
    assert report["text"]["chars"] == 2000 and report["settings"]["seqlen"] == 256
    assert quantized["quantization"]["bits"] == 4 and quantized["weights"] == "4-bit g128 gptq"
    assert reference["quantization"] is None and reference["weights"] == "float32"
    assert quantized["weights_bytes"] == weights_bytes(tiny_gptq_dir) < reference["weights_bytes"] / 2
    assert quantized["size_ratio"] == pytest.approx(quantized["weights_bytes"] / reference["weights_bytes"])
    for row in report["models"]:
        assert row["tokens_scored"] == report["text"]["tokens"] - 1
        assert row["generated_tokens"] == 16 and row["tokens_per_s"] > 0 and row["prefill_s"] > 0
        assert row["memory"] == "cpu peak RSS"
        assert row["peak_memory_mb"] >= row["load_peak_memory_mb"] > row["baseline_memory_mb"] > 0
    # The random tiny model is near uniform, so 4-bit weights barely move its perplexity.
    assert quantized["perplexity"] == pytest.approx(reference["perplexity"], rel=0.05)
    assert quantized["perplexity_change"] == pytest.approx(quantized["perplexity"] - reference["perplexity"])
    table = (out / "eval.md").read_text(encoding="utf-8")
    assert f"`{tiny_model_dir}`" in table and f"`{tiny_gptq_dir}`" in table and "4-bit g128 gptq" in table
    assert table in capsys.readouterr().out


def test_output_names_a_folder_or_the_report_files(tmp_path):
    assert _output_files(tmp_path / "runs") == (tmp_path / "runs" / "eval.json", tmp_path / "runs" / "eval.md")
    assert _output_files(tmp_path / "q4.md") == (tmp_path / "q4.json", tmp_path / "q4.md")


def test_weights_bytes_counts_weight_files_only(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_args.bin").write_bytes(b"x" * 100)
    (folder / "extra.bin").write_bytes(b"x" * 10)
    assert weights_bytes(folder) == (tiny_model_dir / "model.safetensors").stat().st_size + 10


@pytest.fixture(scope="module")
def no_weights_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_weights") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("missing model", "--model .*: no such folder"),
    ("missing reference", "--reference .*: no such folder"),
    ("not a model", "not a model folder \\(no config.json\\)"),
    ("no weights", "no weight files"),
    ("missing text", "--text .*: no such file"),
    ("blank text", "--text .*: no text"),
    ("one token", "1 token\\(s\\) long; perplexity needs at least 2"),
    ("max chars", "--max-chars must be at least 1"),
    ("stride", "--stride must be between 1 and --seqlen"),
    ("gen tokens", "--gen-tokens 2048 leaves no room"),
])
def test_bad_inputs_are_clear_errors(case, message, tiny_model_dir, no_weights_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("你好，世界。Hello, world.", encoding="utf-8")
    args = {"--model": tiny_model_dir, "--text": text}
    extra = {
        "missing model": {"--model": tmp_path / "nowhere"},
        "missing reference": {"--reference": tmp_path / "nowhere"},
        "not a model": {"--model": tmp_path},
        "no weights": {"--model": no_weights_dir},
        "missing text": {"--text": tmp_path / "none.txt"},
        "blank text": {"--text": text.with_name("blank.txt")},
        "one token": {"--text": text.with_name("one.txt")},
        "max chars": {"--max-chars": 0},
        "stride": {"--seqlen": 16, "--stride": 17},
        "gen tokens": {"--gen-tokens": 2048},
    }[case]
    text.with_name("blank.txt").write_text(" \n\n ", encoding="utf-8")
    text.with_name("one.txt").write_text("a", encoding="utf-8")
    argv = [str(part) for flag, value in {**args, **extra}.items() for part in (flag, value)]
    assert run_eval(*argv, "--output", tmp_path / "out") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
