"""Every family of the architecture matrix through `belle export gguf`: llama.cpp computes what transformers does.

The proof per row of `belle.architectures.MATRIX_ROWS` (the SentencePiece-tokenizer LLaMA too): the
f32 file's logits equal transformers' float32 logits at every position of a 20-token prompt
(atol 2e-3) and 16 greedy tokens agree. Each file is exported once per session and loaded by
llama.cpp once, with the context `belle.llamacpp` makes (its f16 KV cache and llama.cpp's default
attention). Measured on the tiny models: at most 1.1e-3 for Gemma 2, 7e-4 or less for the others
(GPT-NeoX's exact GELU run as llama.cpp's tanh approximation included), 3e-5 for BLOOM; a wrong
tensor layout differs by about 0.1.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from belle.architectures import MATRIX_ROWS, gguf_refusal
from belle.cli import UsageError
from belle.export.arches import GGUF_ARCHES, _unfuse_qkv
from tests.export.test_export import hf_greedy, hf_logits, llama_greedy, llama_logits, load_hf, prompt_ids

ROWS = {row.id: row for row in MATRIX_ROWS}


def fields(path) -> dict:
    from gguf import GGUFReader

    return {key: field.contents() for key, field in GGUFReader(path).fields.items()}


def tensor_names(path) -> set[str]:
    from gguf import GGUFReader

    return {t.name for t in GGUFReader(path).tensors}


def test_every_family_of_the_matrix_exports():
    assert all(gguf_refusal(row.model_type) is None for row in MATRIX_ROWS)
    assert gguf_refusal("t5").endswith("gemma2, phi3, bloom, gpt_neox; not t5")


@pytest.mark.slow
@pytest.mark.parametrize("row_id", list(ROWS))
def test_f32_export_computes_what_transformers_computes(row_id, arch_model, exported, llama):
    from belle.modeling import load_tokenizer

    row = ROWS[row_id]
    model_dir = arch_model(row.model_type, tokenizer_kind=row.tokenizer_kind)
    report = exported(row.model_type, "f32", tokenizer_kind=row.tokenizer_kind)
    assert report.architecture == GGUF_ARCHES[row.model_type].name
    assert report.fallback_tensors == 0 and report.type == "f32"
    ids = prompt_ids(load_tokenizer(model_dir))
    hf = load_hf(model_dir)
    llm = llama(report.out)
    expected, got = hf_logits(hf, ids), llama_logits(llm, ids)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
    assert llama_greedy(llm, ids, 16) == hf_greedy(hf, ids, 16)


@pytest.mark.slow
def test_architecture_names_and_hyper_parameters(exported):
    assert exported("mistral", "f32").architecture == "llama"  # llama.cpp runs Mistral as LLaMA
    gemma = exported("gemma2", "f32").out
    assert "token_embd.weight" in tensor_names(gemma) and "output.weight" not in tensor_names(gemma)  # tied
    gemma_fields = fields(gemma)
    assert gemma_fields["gemma2.attn_logit_softcapping"] == pytest.approx(50.0)
    assert gemma_fields["gemma2.attention.sliding_window"] == 64

    bloom = exported("bloom", "f32").out
    bloom_fields = fields(bloom)
    assert not any(".rope." in key for key in bloom_fields)  # ALiBi: llama.cpp's bloom has no RoPE
    assert bloom_fields["bloom.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert bloom_fields["bloom.context_length"] == 2048
    assert bloom_fields["bloom.feed_forward_length"] == 4 * bloom_fields["bloom.embedding_length"]
    assert {"token_embd_norm.weight", "token_embd_norm.bias"} <= tensor_names(bloom)
    assert "output.weight" not in tensor_names(bloom)

    neox_fields = fields(exported("gpt_neox", "f32").out)
    assert neox_fields["gptneox.rope.dimension_count"] == 8  # a quarter of each 32-value head
    assert neox_fields["gptneox.use_parallel_residual"] is True


def test_the_output_matrix_is_the_tied_embeddings_only_where_llama_cpp_reuses_them():
    """Its name picks the matrix that q4_0 keeps at 8 bits: GPT-NeoX writes `output.weight` even when tied."""
    tied, untied = SimpleNamespace(tie_word_embeddings=True), SimpleNamespace(tie_word_embeddings=False)
    assert GGUF_ARCHES["gemma2"].output_name(tied) == "token_embd.weight"
    assert GGUF_ARCHES["gemma2"].output_name(untied) == "output.weight"
    assert GGUF_ARCHES["gpt_neox"].output_name(tied) == "output.weight"


def test_fused_qkv_rows_go_from_per_head_to_per_projection():
    heads, dim = 3, 2
    # row value: 100 * head + 10 * (0 q, 1 k, 2 v) + position in the head
    hf = np.array([100 * h + 10 * p + i for h in range(heads) for p in range(3) for i in range(dim)], dtype=np.float32)
    expected = [100 * h + 10 * p + i for p in range(3) for h in range(heads) for i in range(dim)]
    assert _unfuse_qkv(hf, heads).tolist() == expected
    matrix = np.repeat(hf[:, None], 4, axis=1)
    assert _unfuse_qkv(matrix, heads)[:, 0].tolist() == expected


@pytest.mark.slow  # imports transformers (seconds alone)
@pytest.mark.parametrize("model_type, setting, message", [
    ("gpt_neox", {"hidden_act": "relu"}, "GPT-NeoX with hidden_act 'relu' is not supported"),
    ("bloom", {"apply_residual_connection_post_layernorm": True},
     "BLOOM with apply_residual_connection_post_layernorm is not supported"),
    ("qwen2", {"use_sliding_window": True}, "Qwen2 with use_sliding_window is not supported"),
    ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "does not support rope_type 'dynamic'"),
])
def test_layouts_llama_cpp_cannot_run_are_refused_before_loading(model_type, setting, message, tmp_path):
    """A folder with config.json alone: the refusal comes from the config, before any weight or
    tokenizer is read."""
    from belle.export import export_gguf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, **setting}))
    with pytest.raises(UsageError, match=message):
        export_gguf(tmp_path, tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
