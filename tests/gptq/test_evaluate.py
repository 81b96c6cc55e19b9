"""`belle gptq eval`: the verb end to end (model folders, GPTQ folders and GGUF files side by side),
its output files and its usage errors (perplexity itself: tests/test_perplexity.py)."""

import json
import math
import re
import shutil

import pytest

from belle.cli import run_verbs
from belle.gptq.evaluate import _default_output, _output_files, eval_
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


@pytest.mark.slow
def test_eval_puts_gguf_exports_beside_their_folder(tiny_model_dir, tiny_gguf_f32, tiny_gguf_q4_0, tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text(tiny_heldout_text(), encoding="utf-8")
    out = tmp_path / "report"
    assert run_eval("--model", tiny_gguf_f32, tiny_gguf_q4_0, "--reference", tiny_model_dir, "--text", text,
                    "--max-chars", 1500, "--seqlen", 128, "--gen-tokens", 8, "--output", out) == 0
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    folder, f32, q4 = report["models"]
    assert [row["path"] for row in report["models"]] == [str(tiny_model_dir), str(tiny_gguf_f32), str(tiny_gguf_q4_0)]
    assert [row["role"] for row in report["models"]] == ["reference", "model", "model"]
    assert [row["weights"] for row in report["models"]] == ["float32", "gguf f32", "gguf q4_0"]
    assert [row["runtime"] for row in report["models"]] == ["transformers", "llama.cpp", "llama.cpp"]
    assert q4["quantization"] == {"method": "gguf", "type": "q4_0"} and f32["device"] == "cpu"
    assert (f32["weights_bytes"], q4["weights_bytes"]) == (tiny_gguf_f32.stat().st_size, tiny_gguf_q4_0.stat().st_size)
    assert q4["weights_bytes"] < f32["weights_bytes"] / 3
    # The GGUF files are scored on the tokens transformers' tokenizer gives, by llama.cpp in float32.
    assert all(row["same_tokens"] and row["tokens_scored"] == report["text"]["tokens"] - 1 for row in report["models"])
    assert f32["perplexity"] == pytest.approx(folder["perplexity"], rel=1e-3)
    assert math.isfinite(q4["perplexity"]) and q4["perplexity_change"] == pytest.approx(q4["perplexity"] - folder["perplexity"])
    for row in report["models"]:
        assert row["generated_tokens"] == 8 and row["prefill_s"] > 0 and row["tokens_per_s"] > 0
        assert row["peak_memory_mb"] >= row["load_peak_memory_mb"] > 0
    table = (out / "eval.md").read_text(encoding="utf-8")
    assert f"`{tiny_gguf_q4_0}`" in table and "gguf q4_0" in table and "cpu, llama.cpp" in table
    assert table in capsys.readouterr().out


def test_output_names_a_folder_or_the_report_files(tmp_path):
    assert _output_files(tmp_path / "runs") == (tmp_path / "runs" / "eval.json", tmp_path / "runs" / "eval.md")
    assert _output_files(tmp_path / "q4.md") == (tmp_path / "q4.json", tmp_path / "q4.md")
    model = tmp_path / "m-q4_0.gguf"
    model.write_bytes(b"GGUF")
    assert _output_files(_default_output(model)) == (tmp_path / "m-q4_0.eval.json", tmp_path / "m-q4_0.eval.md")
    assert _default_output(tmp_path) == tmp_path


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
    ("missing gguf", "--model .*nowhere.gguf: no such file"),
    ("not gguf", "--model .*fake.gguf: not a GGUF file \\(it does not start with the GGUF magic bytes\\)"),
    ("cut gguf", "--model .*cut.gguf: not a readable GGUF file"),
    ("other file", "--model .*text.txt: a file that is not GGUF; name a model folder or a GGUF file"),
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
        "missing gguf": {"--model": tmp_path / "nowhere.gguf"},
        "not gguf": {"--model": tmp_path / "fake.gguf"},
        "cut gguf": {"--model": tmp_path / "cut.gguf"},
        "other file": {"--model": text},
    }[case]
    (tmp_path / "fake.gguf").write_text("not a model", encoding="utf-8")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05")
    text.with_name("blank.txt").write_text(" \n\n ", encoding="utf-8")
    text.with_name("one.txt").write_text("a", encoding="utf-8")
    argv = [str(part) for flag, value in {**args, **extra}.items() for part in (flag, value)]
    assert run_eval(*argv, "--output", tmp_path / "out") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
