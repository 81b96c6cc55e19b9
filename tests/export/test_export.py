"""`belle.export.export_gguf`: metadata, tensor types, quantized files and LoRA adapters, on the tiny LLaMA
(every architecture: test_arches.py). Prompts are given as the tiny tokenizer's ids, so these tests
do not rest on llama.cpp's own tokenization of the text.
"""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def prompt_ids(tokenizer, n: int = 20) -> list[int]:
    """The first `n` ids of a mixed Chinese and English text, in the tiny tokenizer's own ids."""
    text = "用一句话介绍北京。Beijing is the capital of China, 它有三千多年的历史 and many museums."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    assert len(ids) == n
    return ids


def llama_logits(context, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (`context`: the `llama` fixture's): (len(ids), vocab) float32."""
    return np.stack([logits for _, logits in context.fresh(ids, lambda index: True)])


def llama_greedy(context, ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens after `ids`, decoded one at a time by llama.cpp (no stop at EOS)."""
    logits = context.prefill(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = context.step(out[-1])
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """`n` greedy tokens after `ids` from transformers (no stop at EOS)."""
    out = []
    for _ in range(n):
        out.append(int(np.argmax(hf_logits(model, ids + out)[-1])))
    return out


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()


def reader(path):
    from gguf import GGUFReader

    return GGUFReader(path)


def field(read, key):
    return read.fields[key].contents()


def test_metadata_and_tensor_types(exported, tiny_model_dir, tiny_engine):
    from gguf import GGMLQuantizationType as T

    expected_types = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}
    eos = sorted(tiny_engine.eos_token_ids)  # what the transformers engine stops on
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    for type, qtype in expected_types.items():
        report = exported("llama", type)
        read = reader(report.out)
        assert report.file_bytes == report.out.stat().st_size
        assert field(read, "general.architecture") == "llama"
        assert field(read, "general.name") == tiny_model_dir.name
        assert field(read, "general.file_type") == {"f16": 1, "q8_0": 7, "q4_0": 2}[type]
        assert field(read, "belle.template") == "belle"
        assert field(read, "belle.eos_token_ids") == eos
        assert json.loads(field(read, "belle.generation_config")) == generation
        for tensor in read.tensors:
            if len(tensor.shape) == 1:
                assert tensor.tensor_type == T.F32, tensor.name
            elif type == "q4_0" and tensor.name == "output.weight":  # kept at 8 bits, as llama-quantize keeps it wider
                assert tensor.tensor_type == T.Q8_0
            else:
                assert tensor.tensor_type == qtype, tensor.name


@pytest.mark.parametrize("type", ["q8_0", "q4_0"])
def test_quantized_files_decode_near_f32(type, exported, tokenizer, llama):
    ids = prompt_ids(tokenizer)
    reference = llama_logits(llama(exported("llama", "f32").out), ids)
    llm = llama(exported("llama", type).out)
    got = llama_logits(llm, ids)
    error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
    assert error < {"q8_0": 0.03, "q4_0": 0.3}[type]  # about 0.015 and 0.17; an unrelated model is about 1.4
    assert len(llama_greedy(llm, ids, 4)) == 4


def test_k_quant_goes_through_llama_cpp(exported, arch_model, llama):
    """Rows of 256 values, so llama.cpp's K-quant super-blocks fit every matrix."""
    from gguf import GGMLQuantizationType as T

    from belle.modeling import load_tokenizer

    sizes = {"hidden_size": 256, "intermediate_size": 512}
    report = exported("llama", "q4_k_m", **sizes)
    read = reader(report.out)
    assert report.fallback_tensors == 0
    assert field(read, "general.file_type") == 15  # MOSTLY_Q4_K_M
    assert field(read, "belle.template") == "belle"
    matrices = {t.name: t.tensor_type for t in read.tensors if len(t.shape) > 1}
    assert set(matrices.values()) <= {T.Q4_K, T.Q5_K, T.Q6_K} and T.Q4_K in set(matrices.values())
    assert all(t.tensor_type == T.F32 for t in read.tensors if len(t.shape) == 1)
    ids = prompt_ids(load_tokenizer(arch_model("llama", **sizes)))
    llm = llama(report.out)
    assert np.isfinite(llama_logits(llm, ids)).all()
    assert len(llama_greedy(llm, ids, 4)) == 4


def test_lora_adapter_is_merged(tiny_model_dir, tmp_path, tokenizer, llama):
    from peft import LoraConfig, get_peft_model

    from belle.export import export_gguf
    from belle.modeling import write_checkpoint_info

    config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"], init_lora_weights=False)
    lora = get_peft_model(load_hf(tiny_model_dir), config).eval()
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    write_checkpoint_info(adapter, "belle")
    report = export_gguf(adapter, tmp_path / "merged.gguf", type="f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged.gguf"]  # no temporary file left

    ids = prompt_ids(tokenizer)
    expected = hf_logits(lora, ids)  # base plus adapter, unmerged
    with lora.disable_adapter():
        assert not np.allclose(expected, hf_logits(lora, ids), atol=1e-3)
    np.testing.assert_allclose(llama_logits(llama(report.out), ids), expected, atol=2e-3, rtol=0)  # as in test_arches.py
    assert field(reader(report.out), "general.name") == "adapter"
