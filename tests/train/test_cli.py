"""`belle train`: stage sft end to end (the model learns, and every file a run promises is written), and
the command line users bring from other trainers (positional config, `--key value`, aliases)."""

import dataclasses
import json
import logging
import math

import pytest
import yaml

from belle.config import config_keys
from belle.train.aliases import ALIASES
from belle.train.cli import load_train_config, main, parse_args
from belle.train.config import DpoConfig, TrainConfig
from tests.helpers import write_jsonl
from tests.train.helpers import (
    PNG_SIGNATURE,
    SAMPLES,
    conversation,
    files_list,
    losses_by_step,
    numbers_in,
    read_metrics,
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# The command line users bring from other trainers, in process; each run stops at the config.

def test_a_first_positional_yaml_is_the_config(tmp_path, capsys):
    """`belle train cfg.yaml` reads the file: the run stops at the config's own problem, not at an
    override that is not of the form key=value."""
    config = write_yaml(tmp_path / "run.yaml", {"output_dir": str(tmp_path / "run")})
    assert main([str(config), "lora.r=8", "method=lora"], prog="belle train") == 2
    err = capsys.readouterr().err
    assert f"belle train: error: {config}: 2 problem(s):" in err and "model.path: name the model folder" in err
    assert parse_args([str(config)]).config == parse_args(["--config", str(config)]).config == config


def test_a_config_given_twice_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["a.yaml", "--config", "b.yaml"], prog="belle train") == 2
    assert capsys.readouterr().err == "belle train: error: two configs: a.yaml and --config b.yaml; give one\n"


def test_local_rank_from_a_launcher_is_still_taken():
    assert parse_args(["--local_rank=3", "c.yaml", "seed=1"]).local_rank == 3
    assert parse_args(["--local-rank", "2", "--config", "c.yaml"]).local_rank == 2


def resolved(*argv: str, yaml_text: dict | None = None, tmp_path=None):
    """The training config `belle train ARGV` would run, from a valid base plus ARGV (and a YAML file)."""
    path = write_yaml(tmp_path / "cfg.yaml", yaml_text) if yaml_text is not None else None
    args = parse_args([*([str(path)] if path else []), "model.path=m", "output_dir=o", "data.train_files=[a.jsonl]", *argv])
    return load_train_config(args.config, args.overrides)


def test_dash_dash_keys_and_bare_flags(tmp_path):
    config = resolved("--lora.r", "8", "--lora.alpha=4", "--method", "lora", "--data.pack", "--data.strict", "false",
                      "--training.gradient-accumulation-steps", "2", tmp_path=tmp_path)
    assert (config.lora.r, config.lora.alpha, config.method) == (8, 4, "lora")
    assert config.data.pack is True and config.data.strict is False
    assert config.training.gradient_accumulation_steps == 2


def test_hugging_face_trainer_flags(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="belle.config"):
        config = resolved("--model_name_or_path", "base", "--learning_rate", "1e-4", "--num_train_epochs", "3",
                          "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "8",
                          "--warmup_ratio", "0.03", "--lr_scheduler_type", "linear", "--bf16", "--fp16", "false",
                          "--gradient_checkpointing", "--max_seq_length", "2048", "--train_file", "b.jsonl",
                          "--output_dir=runs/hf", tmp_path=tmp_path)
    assert config.model.path == "base" and config.output_dir == "runs/hf" and config.data.train_files == ["b.jsonl"]
    t = config.training
    assert (t.learning_rate, t.epochs, t.batch_size, t.gradient_accumulation_steps) == (1e-4, 3, 4, 8)
    assert (t.warmup_ratio, t.lr_scheduler, t.precision, t.gradient_checkpointing) == (0.03, "linear", "bf16", True)
    assert config.data.max_length == 2048
    notes = [r.getMessage() for r in caplog.records]
    assert "learning_rate is belle's training.learning_rate; using it" in notes
    assert "bf16=true is belle's training.precision=bf16; using it" in notes
    assert "fp16=false leaves belle's training.precision as it is; ignoring it" in notes


def test_a_llama_factory_yaml(tmp_path):
    config = resolved(tmp_path=tmp_path, yaml_text={
        "model_name_or_path": "base", "stage": "sft", "finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16,
        "lora_dropout": 0.1, "lora_target": "q_proj,v_proj", "additional_target": "embed_tokens,lm_head",
        "cutoff_len": 1024, "val_size": 0.1, "preprocessing_num_workers": 4, "bf16": True})
    assert config.method == "lora" and (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 16, 0.1)
    assert config.lora.target_modules == ["q_proj", "v_proj"] and config.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert (config.data.max_length, config.data.validation_split, config.data.num_proc) == (1024, 0.1, 4)
    assert config.training.precision == "bf16"
    assert resolved("method=lora", "lora_target=all", tmp_path=tmp_path).lora.target_modules == ["all-linear"]


def test_an_axolotl_yaml(tmp_path):
    config = resolved(tmp_path=tmp_path, yaml_text={
        "base_model": "base", "adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True,
        "sequence_len": 4096, "sample_packing": True, "micro_batch_size": 2, "num_epochs": 4,
        "optimizer": "adamw_torch", "lr_scheduler": "linear", "learning_rate": 0.0002, "val_set_size": 0.05})
    assert config.method == "lora" and (config.lora.r, config.lora.alpha) == (16, 32)
    assert config.lora.target_modules == ["all-linear"]
    assert (config.data.max_length, config.data.pack, config.data.validation_split) == (4096, True, 0.05)
    t = config.training
    assert (t.batch_size, t.epochs, t.optim, t.lr_scheduler, t.learning_rate) == (2, 4, "adamw_torch", "linear", 2e-4)


def test_dpo_names_of_llama_factory_and_trl(tmp_path):
    config = resolved("stage=dpo", "--pref_beta", "0.2", "--pref_loss", "ipo", tmp_path=tmp_path)
    assert (config.dpo.beta, config.dpo.loss_type) == (0.2, "ipo")
    trl = resolved("stage=dpo", "beta=0.3", "loss_type=hinge", tmp_path=tmp_path)
    assert trl.dpo == DpoConfig(beta=0.3, loss_type="hinge")


def test_an_alias_and_its_belle_key_in_one_file_is_refused(tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yaml", {"learning_rate": 1e-4, "training": {"learning_rate": 2e-5}})
    assert main([str(config)], prog="belle train") == 2
    assert "learning_rate and training.learning_rate both set training.learning_rate; keep one" in capsys.readouterr().err


def test_unknown_keys_name_the_nearest_key_one_line_each(tmp_path, capsys):
    argv = ["--lora_rnk", "8", "num_train_epoch=2", "training.learning_rat=1e-4", "optim.lr=1e-4", "--qqqqqqqq", "1"]
    status = main(argv, prog="belle train")
    err = capsys.readouterr().err
    assert status == 2 and err.count("error:") == 1 and "Traceback" not in err
    lines = err.splitlines()
    for line in ("  - unknown key 'lora_rnk'; did you mean 'lora.r'?",
                 "  - unknown key 'num_train_epoch'; did you mean 'training.epochs'?",
                 "  - unknown key 'training.learning_rat'; did you mean 'training.learning_rate'?",
                 "  - unknown key 'optim.lr'; did you mean 'training.learning_rate'?",  # torchtune's name
                 "  - unknown key 'qqqqqqqq'; no valid key is close to it (--help lists them)"):
        assert line in lines, err
    assert "lora.modules_to_save" not in err  # no list of every key: that is --help's


def test_every_alias_names_a_real_key_and_shadows_none():
    keys = config_keys(TrainConfig)
    assert all(alias.key in keys for alias in ALIASES.values()), [n for n, a in ALIASES.items() if a.key not in keys]
    top_level = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not top_level & ALIASES.keys()
