"""`belle export gguf` on the command line: user errors are one line and exit 2; a real export end to end."""

import json
import sys

import pytest


@pytest.fixture
def fake_model(tmp_path):
    """A folder that looks like a model of `model_type` (config.json only): enough for the checks
    that run before anything is loaded."""

    def make(model_type: str = "llama"):
        folder = tmp_path / f"{model_type}-model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        return folder

    return make


def error_line(result) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_unknown_type(belle_main, fake_model, tmp_path):
    line = error_line(belle_main("export", "gguf", "--model", fake_model(), "--out", tmp_path / "m.gguf",
                                 "--type", "q3_0"))
    assert "unknown --type 'q3_0'" in line and "q4_k_m" in line


def test_unsupported_architecture_names_it_and_the_supported_list(belle_main, fake_model, tmp_path):
    line = error_line(belle_main("export", "gguf", "--model", fake_model("t5"), "--out", tmp_path / "m.gguf"))
    assert line.endswith("GGUF export supports llama, mistral, qwen2, qwen3, gemma2, phi3, bloom, gpt_neox; not t5")
    assert not (tmp_path / "m.gguf").exists()


def test_missing_model_folder(belle_main, tmp_path):
    line = error_line(belle_main("export", "gguf", "--model", tmp_path / "nothing", "--out", tmp_path / "m.gguf"))
    assert f"{tmp_path / 'nothing'}: no such model folder" in line


def test_existing_out_is_kept_without_overwrite(belle_main, fake_model, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_text("mine")
    line = error_line(belle_main("export", "gguf", "--model", fake_model(), "--out", out))
    assert f"{out}: already exists; pass --overwrite" in line
    assert out.read_text() == "mine"


@pytest.mark.parametrize(("package", "type", "needs"), [("gguf", "f16", "gguf package"),
                                                        ("llama_cpp", "q4_k_m", "llama-cpp-python")])
def test_missing_package(belle_main, fake_model, tmp_path, monkeypatch, package, type, needs):
    monkeypatch.setitem(sys.modules, package, None)  # `import PACKAGE` raises ImportError
    line = error_line(belle_main("export", "gguf", "--model", fake_model(), "--out", tmp_path / "m.gguf",
                                 "--type", type))
    assert needs in line and "pip install 'belle[gguf]'" in line


@pytest.mark.slow  # imports transformers (seconds alone)
def test_a_quantized_folder_is_refused_before_loading(belle_main, tmp_path):
    folder = tmp_path / "gptq"
    folder.mkdir()
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    (folder / "config.json").write_text(json.dumps(config))
    line = error_line(belle_main("export", "gguf", "--model", folder, "--out", tmp_path / "m.gguf", "--type", "q5_0"))
    assert f"{folder}: GPTQ 4-bit group size 128" in line and "would re-round" in line and "float model" in line


def test_a_failing_llama_cpp_quantizer_is_one_line(tmp_path):
    from belle.cli import UsageError
    from belle.export.quantize import llama_quantize

    source = tmp_path / "broken.gguf"
    source.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(UsageError, match=f"could not make q4_k_m from {source}"):
        llama_quantize(source, tmp_path / "out.gguf", "q4_k_m")


@pytest.mark.slow
def test_export_end_to_end(belle_cli, belle_main, tiny_model_dir, tmp_path):
    out = tmp_path / "tiny.gguf"
    mine = tmp_path / "tiny.gguf.tmp"  # a user's file with the name a temporary file could have had
    mine.write_text("mine")
    result = belle_cli("export", "gguf", "--model", tiny_model_dir, "--out", out, "--type", "q8_0")
    assert result.returncode == 0, result.stderr
    assert f"Wrote {out} (q8_0, llama)" in result.stdout
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "tiny.gguf.tmp"]  # no temporary file left
    assert mine.read_text() == "mine"
    again = belle_main("export", "gguf", "--model", tiny_model_dir, "--out", out, "--type", "f16", "--overwrite")
    assert again.returncode == 0, again.stderr
    from gguf import GGUFReader

    assert GGUFReader(out).fields["general.file_type"].contents() == 1
