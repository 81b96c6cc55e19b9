"""`belle train` stages pt (packed plain text) and dpo (preference pairs, LoRA and full)."""

import pytest

from tests.helpers import read_jsonl, write_jsonl
from tests.train.helpers import (
    SAMPLES,
    assert_same_losses,
    assert_same_weights,
    files_list,
    load_weights,
    losses_by_step,
    read_metrics,
)

pytestmark = pytest.mark.slow


def test_pt_packs_every_token_of_the_documents_into_full_rows(train, tokenizer, tmp_path):
    """Continued pretraining on plain text trains every token of every document (plus EOS), packed
    into rows of max_length that are more than 90% full, and logs a loss each step."""
    out = tmp_path / "run"
    train(out, "stage=pt", f"data.train_files={files_list(SAMPLES / 'pretrain.jsonl')}", "data.max_length=64",
          "training.max_steps=3", "training.batch_size=2")
    texts = [r["text"] for r in read_jsonl(SAMPLES / "pretrain.jsonl")]
    expected_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    data = read_metrics(out)["data"]
    assert data["trained_tokens"] == expected_tokens
    assert data["rows"] * 64 >= expected_tokens and data["packing_efficiency"] > 0.9, data
    assert sorted(losses_by_step(out)) == [1, 2, 3]


def assert_dpo_outputs(out, method, steps):
    """A DPO run logged TRL's reward metrics and a loss per step, and saved an adapter (lora) or a full
    model (full)."""
    metrics = read_metrics(out)
    assert any(key.startswith("rewards/") or "/rewards/" in key for e in metrics["log_history"] for key in e), metrics["log_history"]
    assert sorted(losses_by_step(out)) == list(range(1, steps + 1))
    assert metrics["train"]["train_loss"] > 0
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (out / weights).is_file() and (out / "belle.json").is_file()
    assert (out / "model.safetensors").exists() == (method == "full")


def test_dpo_with_lora_logs_reward_metrics_and_saves_the_trained_adapter(train, tmp_path):
    """DPO with LoRA (full DPO: the next test's runs) logs TRL's reward metrics and a loss per step,
    and saves the trained adapter."""
    out = tmp_path / "run"
    train(out, "stage=dpo", "method=lora", f"data.train_files={files_list(SAMPLES / 'dpo.jsonl')}",
          "training.max_steps=2", "training.batch_size=2", "training.learning_rate=1e-4")
    assert_dpo_outputs(out, "lora", steps=2)
    # The adapter saved at the top is the trained one (LoRA's B matrices start at zero).
    trained = load_weights(out / "adapter_model.safetensors")
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "lora_B" in name)


def test_dpo_prompt_already_in_belle_form_trains_like_the_plain_prompt(train, tmp_path):
    """A prompt written as `Human: \\n...\\n\\nAssistant: \\n` is read as that question, not wrapped a
    second time: training on it reads the same records and gives the same losses and weights as on
    the plain prompts. Full DPO logs TRL's reward metrics and saves a full model (no second run of
    its own: the plain run is one)."""
    records = read_jsonl(SAMPLES / "dpo.jsonl")
    belle_form = write_jsonl(tmp_path / "belle_form.jsonl", [{**r, "prompt": f"Human: \n{r['prompt']}\n\nAssistant: \n"} for r in records])
    settings = ("stage=dpo", "method=full", "training.max_steps=3", "training.batch_size=2", "training.learning_rate=1e-4")
    plain_out, belle_out = tmp_path / "plain", tmp_path / "belle"
    train(plain_out, *settings, f"data.train_files={files_list(SAMPLES / 'dpo.jsonl')}")
    train(belle_out, *settings, f"data.train_files={files_list(belle_form)}")
    assert_dpo_outputs(plain_out, "full", steps=3)
    assert read_metrics(belle_out)["data"] == read_metrics(plain_out)["data"]
    assert_same_losses(losses_by_step(plain_out), losses_by_step(belle_out), atol=1e-5)
    assert_same_weights(load_weights(plain_out / "model.safetensors"), load_weights(belle_out / "model.safetensors"), atol=1e-6)
