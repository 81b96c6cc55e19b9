"""LoRA targets fit the model: `all-linear` resolves to each family's linear layers (LM head left
out), names that match nothing are refused before the model loads, and a run records what it adapted
and how many parameters train."""

import json
import re

import pytest

from belle import cli
from belle.architectures import FAMILIES, TinySizes, tiny_config
from belle.train.config import LoraConfig
from belle.train.lora import block_linear_names, is_linear, meta_model, resolve_targets
from tests.train.helpers import REPO, SAMPLES, files_list, read_metrics, train_overrides

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEOX = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
EXPECTED = {**{t: LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2")},
            "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], "bloom": NEOX, "gpt_neox": NEOX}
DATA = f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}"


def config_only(folder, model_type):
    """A model folder holding only a tiny config.json: enough for preflight, a crash for any load."""
    tiny_config(model_type, TinySizes(vocab_size=512), bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(folder)
    return folder


def adapter_parameters(model, targets, r):
    """r x (in + out) summed over the linear layers `targets` match: what LoRA adds."""
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if is_linear(m) and any(name == t or name.endswith("." + t) for t in targets))


def test_the_default_is_all_linear_and_gives_belles_llama_projections_in_order(tmp_path):
    model = meta_model(config_only(tmp_path, "llama"))
    assert LoraConfig().target_modules == ["all-linear"]
    assert resolve_targets(LoraConfig().target_modules, model) == LLAMA
    assert resolve_targets(["all-linear", "lm_head", "q_proj"], model) == [*LLAMA, "lm_head"]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_all_linear_resolves_to_each_familys_block_layers_without_the_lm_head(tmp_path, model_type):
    names = block_linear_names(meta_model(config_only(tmp_path, model_type)))
    assert sorted(names) == sorted(EXPECTED[model_type]) and len(names) == len(set(names))


def test_the_readme_figures_for_llama_7b_follow_from_its_shapes(tmp_path):
    """LLaMA-7B's shapes (meta device, no weights): r 16 on all-linear and r 8 on q, v give the
    figures train/README.md quotes for comparison with BELLE's LoRA report."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(tmp_path)
    model = meta_model(tmp_path)
    readme = (REPO / "train" / "README.md").read_text(encoding="utf-8")
    for targets, r, expected in ((["all-linear"], 16, 39_976_960), (["q_proj", "v_proj"], 8, 4_194_304)):
        assert adapter_parameters(model, resolve_targets(targets, model), r) == expected
        assert f"{expected:,}" in readme


@pytest.mark.parametrize("model_type, targets, patterns", [
    # Phi-3 fuses q, k, v: LLaMA's names used to adapt only o_proj and down_proj, silently.
    ("phi3", LLAMA, [r"q_proj matches no module", r"k_proj matches no module", r"qkv_proj, gate_up_proj"]),
    ("bloom", ["q_proj", "v_proj"], [r"q_proj matches no module; v_proj matches no module", r"BLOOM's blocks",
                                     r"query_key_value, dense, dense_h_to_4h, dense_4h_to_h", r"\[all-linear\]"]),
    ("llama", ["embed_tokens", "q_proj"], [r"embed_tokens is an Embedding, not a linear layer", r"lora\.modules_to_save"]),
])
def test_targets_that_match_no_linear_layer_exit_2_before_the_model_loads(tmp_path, capsys, model_type, targets, patterns):
    """One sentence naming the bad names and the model's linear layers; the folder has no weights, so
    exit 2 proves the check ran before loading."""
    model = config_only(tmp_path / "model", model_type)
    overrides = train_overrides(model, tmp_path / "run", DATA, "method=lora", f"lora.target_modules=[{','.join(targets)}]")
    assert cli.main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(re.findall(r"lora\.target_modules:", err)) == 1, err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch, stage, data", [("bloom", "sft", "belle_conversations.jsonl"), ("phi3", "dpo", "dpo.jsonl")])
def test_a_lora_run_adapts_every_block_layer_and_records_the_trainable_count(tmp_path, arch, stage, data):
    """2 steps of `belle train method=lora` on a tiny model with the default targets: the adapter
    covers the family's layers, metrics.json and summary.md give the count, which is r x (in + out)
    over the adapted layers (for DPO, not counting the frozen `ref` copy TRL adds)."""
    from transformers import AutoModelForCausalLM

    from belle.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "model", arch=arch)
    out = tmp_path / "run"
    overrides = train_overrides(model_dir, out, f"data.train_files={files_list(SAMPLES / data)}", f"stage={stage}",
                                "method=lora", "lora.r=4", "training.max_steps=2", "data.max_length=128")
    assert cli.main(["train", *overrides]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert sorted(adapter["target_modules"]) == sorted(EXPECTED[arch])

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = adapter_parameters(base, EXPECTED[arch], 4)
    lora = read_metrics(out)["lora"]
    assert sorted(lora["target_modules"]) == sorted(EXPECTED[arch])
    assert lora["adapted_modules"] == len(EXPECTED[arch]) * base.config.num_hidden_layers
    assert lora["trainable_parameters"] == expected
    assert lora["total_parameters"] == base.num_parameters() + expected
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert f"- LoRA: r 4 on {', '.join(lora['target_modules'])} ({lora['adapted_modules']} layers): {expected:,} trainable parameters (" in summary
