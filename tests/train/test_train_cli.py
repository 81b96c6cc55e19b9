"""`belle train` stage sft end to end: the model learns, and every file a run promises is written."""

import json
import math

import pytest
import yaml

from tests.train.helpers import (
    PNG_SIGNATURE,
    SAMPLES,
    conversation,
    files_list,
    losses_by_step,
    numbers_in,
    read_metrics,
    write_jsonl,
    write_yaml,
)

FACTS = [
    ("今天天气怎么样？", "今天天气晴朗，适合出门散步。"),
    ("推荐一本书。", "可以读《平凡的世界》，讲的是普通人的奋斗。"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("一加一等于几？", "一加一等于二。"),
]


def answer_loss(model, tokenizer, pairs):
    """Mean loss of `model` on the answers of (question, answer) pairs, encoded as training encodes them."""
    import torch

    from belle.templates import get_template
    from belle.tokenization import encode_batch

    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    total = 0.0
    with torch.no_grad():
        for sample in encode_batch(messages, tokenizer, get_template("belle")):
            total += model(input_ids=torch.tensor([sample.input_ids]), labels=torch.tensor([sample.labels])).loss.item()
    return total / len(pairs)


def mentions(text, value):
    """Whether `text` holds a decimal number that is `value` rounded to that number's precision."""
    return any(abs(float(n) - value) <= 0.5 * 10 ** -len(n.split(".")[1]) + 1e-9 for n in numbers_in(text))


def test_sft_full_learns_a_small_dataset_and_writes_every_output(train, tiny_model_dir, tmp_path):
    """A YAML config plus overrides trains 40 steps over four conversations: the loss falls by more
    than half; the output folder holds the resolved config, a loadable model whose loss on the data
    on the answers is far below the base model's, belle.json, checkpoints with COMPLETE markers, metrics, the loss
    plot, the summary and TensorBoard events with a loss curve."""
    data = write_jsonl(tmp_path / "facts.jsonl", [conversation(q, a, id=f"fact-{i}") for i, (q, a) in enumerate(FACTS)])
    config = write_yaml(tmp_path / "run.yaml", {
        "stage": "sft",
        "method": "full",
        "data": {"train_files": [str(data)]},
        "training": {"max_steps": 40, "batch_size": 2, "learning_rate": 1e-3, "save_steps": 20, "lr_scheduler": "cosine"},
    })
    out = tmp_path / "run"
    train(out, "training.report_to=[tensorboard]", config=config)

    losses = losses_by_step(out)
    assert sorted(losses) == list(range(1, 41))
    first, last = [losses[s] for s in range(1, 6)], [losses[s] for s in range(36, 41)]
    assert sum(last) / 5 < 0.5 * sum(first) / 5, f"loss did not fall by half: first {first}, last {last}"

    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "belle.json", "metrics.json", "loss.png", "summary.md"):
        assert (out / name).is_file(), f"{name} is missing from the output folder"
    assert not (out / "adapter_config.json").exists()
    assert (out / "checkpoint-20" / "COMPLETE").is_file()

    resolved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["training"]["max_steps"] == 40 and resolved["training"]["lr_scheduler"] == "constant"
    assert resolved["model"]["path"] == str(tiny_model_dir) and resolved["output_dir"] == str(out)
    info = json.loads((out / "belle.json").read_text(encoding="utf-8"))
    assert info["template"] == "belle" and info["config"] == resolved

    metrics = read_metrics(out)
    for key in ("train_loss", "train_runtime", "trained_tokens_per_second", "train_samples_per_second"):
        assert metrics["train"][key] > 0, key
    assert metrics["eval"] is None
    assert metrics["data"]["samples"] == 4 and metrics["data"]["trained_tokens"] > 0
    assert (out / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert mentions(summary, metrics["train"]["train_loss"]) or mentions(summary, losses[40]), summary

    events = sorted((out / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under runs/"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = [tag for e in events for tag in EventAccumulator(str(e)).Reload().Tags()["scalars"]]
    assert any("loss" in tag for tag in tags), tags

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = answer_loss(AutoModelForCausalLM.from_pretrained(out), tokenizer, FACTS)
    base = answer_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, FACTS)
    assert math.isfinite(trained) and trained < 0.5 * base, (trained, base)


@pytest.mark.parametrize("held_out", ["validation_split", "validation_files"])
def test_eval_loss_is_logged_and_reported(train, tmp_path, held_out):
    """Held-out data, split off or from its own file, is evaluated every eval_steps: log_history has
    eval_loss at steps 2 and 4, and metrics.json's eval is the final one."""
    setting = "data.validation_split=0.25" if held_out == "validation_split" else f"data.validation_files={files_list(SAMPLES / 'multiturn_chat.jsonl')}"
    out = tmp_path / "run"
    train(out, f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}", setting,
          "training.max_steps=4", "training.eval_steps=2", "training.batch_size=2")
    metrics = read_metrics(out)
    evals = {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e}
    assert {2, 4} <= evals.keys(), metrics["log_history"]
    assert math.isfinite(metrics["eval"]["eval_loss"])
    assert metrics["eval"]["eval_loss"] == pytest.approx(evals[4], rel=1e-5)
