"""`--embedding-type` / `--output-type` (llama-quantize's `--token-embedding-type` and
`--output-tensor-type`): the types of `token_embd.weight` and `output.weight`, in direct-type and
K-quant exports, which flag wins with tied embeddings, and the values that are refused."""

import pytest

from belle.cli import UsageError
from belle.export.quantize import check_head_type, head_types
from tests.export.test_export_cli import error_line


@pytest.mark.parametrize("output_name, embedding, output, expected", [
    ("output.weight", "f16", "q8_0", {"token_embd.weight": "f16", "output.weight": "q8_0"}),
    ("output.weight", None, "q8_0", {"output.weight": "q8_0"}),
    ("output.weight", "bf16", None, {"token_embd.weight": "bf16"}),
    ("output.weight", None, None, {}),
    # tied: token_embd.weight is the output matrix; --embedding-type wins, else --output-type applies
    ("token_embd.weight", None, "q5_0", {"token_embd.weight": "q5_0"}),
    ("token_embd.weight", "f16", "q5_0", {"token_embd.weight": "f16"}),
])
def test_which_flag_names_which_matrix(output_name, embedding, output, expected):
    assert head_types(output_name, embedding, output) == expected


@pytest.mark.parametrize("value, type, message", [
    ("q6_k", "q4_0", "--output-type q6_k needs a K-quant --type .*with --type q4_0 choose from f32, .*q5_1$"),
    ("q4_k_m", "q4_k_m", "unknown --output-type 'q4_k_m'; choose from f32, .*q5_1, q2_k, q3_k, q4_k, q5_k, q6_k$"),
    ("fp16", "f16", "unknown --output-type 'fp16'; choose from f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1$"),
])
def test_refused_values(value, type, message):
    with pytest.raises(UsageError, match=message):
        check_head_type("--output-type", value, type)


@pytest.mark.parametrize("value, type", [("q6_k", "q4_k_m"), ("q8_0", "q4_k_m"), ("bf16", "q4_0"), ("q4_0", "f32")])
def test_accepted_values(value, type):
    check_head_type("--embedding-type", value, type)


@pytest.mark.parametrize("flag, value, type, message", [
    ("--embedding-type", "q6_k", "q4_0", "--embedding-type q6_k needs a K-quant --type"),
    ("--output-type", "q3_0", "q4_k_m", "unknown --output-type 'q3_0'"),
])
def test_cli_refuses_in_one_line(belle_main, tmp_path, flag, value, type, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    out = tmp_path / "m.gguf"
    line = error_line(belle_main("export", "gguf", "--model", folder, "--out", out, "--type", type, flag, value))
    assert message in line
    assert not out.exists()


def matrix_types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name.lower() for t in GGUFReader(path).tensors if len(t.shape) > 1}


@pytest.mark.slow
def test_direct_type_flags_on_a_float_model(arch_model, tmp_path, llama):
    from belle.export import export_gguf

    report = export_gguf(arch_model("llama"), tmp_path / "m.gguf", type="q4_0", embedding_type="f16",
                         output_type="q5_1")
    types = matrix_types(report.out)
    assert (types["token_embd.weight"], types["output.weight"]) == ("f16", "q5_1")
    assert types["blk.0.attn_q.weight"] == "q4_0"
    assert (report.embedding_type, report.output_type, report.gptq_kept, report.fallback_tensors) == \
        ("f16", "q5_1", (), 0)
    assert len(llama(report.out).prefill([1, 5, 9])) > 0


@pytest.mark.slow
def test_k_quant_flags_go_to_llama_cpp(arch_model, tmp_path):
    """Rows of 128 values: llama.cpp's q4_k_m falls back to q5_0/q8_0 for every matrix, and a K type
    chosen for the embeddings does not fit either: belle writes those in f16 and counts them."""
    from belle.export import export_gguf

    report = export_gguf(arch_model("llama"), tmp_path / "m.gguf", type="q4_k_m", output_type="q8_0",
                         embedding_type="q4_k")
    types = matrix_types(report.out)
    assert (types["token_embd.weight"], types["output.weight"]) == ("f16", "q8_0")
    assert (report.embedding_type, report.output_type) == ("f16", "q8_0")
    assert report.fallback_tensors == len(types) - 1  # all but output.weight, whose q8_0 was asked for
