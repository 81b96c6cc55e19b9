"""What a run reports, from a made-up log history: token and sample counts, `summary.md`, `loss.png`
and `metrics.json` (`test_cli` checks them after a real run)."""

import json
import struct
from types import SimpleNamespace

import torch

from belle.tokenization import IGNORE_INDEX
from belle.train.report import ThroughputCallback, _rates, plot_loss, reward_sources, stage_lines, write_report, write_summary
from tests.train.helpers import PNG_SIGNATURE

CONFIG = {"stage": "sft", "method": "lora", "output_dir": "runs/tiny", "model": {"path": "models/tiny"},
          "data": {"train_files": ["a.jsonl", "b.jsonl"]}}
HISTORY = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.2}, {"step": 3, "loss": 1.75}]
LORA = {"r": 8, "target_modules": ["q_proj", "v_proj"], "adapted_modules": 4, "modules_to_save": [],
        "trainable_parameters": 4096, "total_parameters": 1_000_000}


def metrics(**changes):
    return {"global_step": 3, "log_history": HISTORY, "lora": LORA, "eval": {"eval_loss": 2.2},
            "data": {"samples": 10, "trained_tokens": 480, "rows": 4, "packing_efficiency": 0.9375, "notes": ["2 records dropped"]},
            "train": {"epoch": 1.5, "train_loss": 2.0833, "train_runtime": 12.34, "trained_tokens_per_second": 1234.4,
                      "samples_per_second": 2.5},
            **changes}


def png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", data[16:24])


def test_the_summary_says_what_was_trained_on_what_and_how_it_went(tmp_path):
    write_summary(tmp_path / "summary.md", CONFIG, metrics())
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == "\n".join([
        "# sft / lora: models/tiny",
        "",
        "- output: `runs/tiny`",
        "- data: a.jsonl, b.jsonl",
        "- samples: 10 (480 trained tokens), packed into 4 rows at 93.8% efficiency",
        "- note: 2 records dropped",
        "- LoRA: r 8 on q_proj, v_proj (4 layers): 4,096 trainable parameters (0.41% of 1.00M)",
        "- steps: 3, epochs: 1.50",
        "- train loss: first logged 2.5000, last logged 1.7500, mean 2.0833",
        "- eval loss: 2.2000",
        "- throughput: 1,234 trained tokens/s, 2.50 samples/s",
        "- runtime: 12.3 s",
        "",
        "![loss](loss.png)",
        "",
    ])


def test_a_summary_without_losses_evaluation_or_lora_says_so(tmp_path):
    path = tmp_path / "summary.md"
    write_summary(path, {**CONFIG, "stage": "dpo", "method": "full"},
                  metrics(log_history=[], lora=None, eval=None, data={"pairs": 6}, train={}))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# dpo / full: models/tiny"
    assert "- preference pairs: 6" in lines and "- train loss: none logged" in lines
    assert "- steps: 3, epochs: 0.00" in lines and "- runtime: 0.0 s" in lines
    assert not [line for line in lines if line.startswith(("- samples", "- LoRA", "- eval loss", "- throughput"))]


def test_unpacked_samples_give_no_packing_figure(tmp_path):
    path = tmp_path / "summary.md"
    write_summary(path, CONFIG, metrics(data={"samples": 3}))
    assert "- samples: 3 (0 trained tokens)\n" in path.read_text(encoding="utf-8")


def test_the_loss_plot_is_a_png_of_the_set_size(tmp_path):
    plot_loss(HISTORY, tmp_path / "loss.png", "sft / lora")
    assert png_size(tmp_path / "loss.png") == (840, 480)


def test_the_report_writes_three_files_with_readable_chinese(tmp_path):
    m = metrics(data={"samples": 1, "notes": ["跳过 1 条"]})
    write_report(tmp_path, CONFIG, m)
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    assert "跳过 1 条" in text and json.loads(text) == m
    assert png_size(tmp_path / "loss.png") == (840, 480)
    assert "- note: 跳过 1 条" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_rates_are_per_second_and_never_divide_by_zero():
    assert _rates((10.0, 100, 4), (12.0, 1100, 7)) == {"trained_tokens_per_second": 500.0, "samples_per_second": 1.5}
    assert _rates((1.0, 0, 0), (1.0, 0, 0)) == {"trained_tokens_per_second": 0.0, "samples_per_second": 0.0}


class Model(torch.nn.Module):
    def forward(self, input_ids, labels=None, position_ids=None):
        return input_ids


X = IGNORE_INDEX
PAD = 0


def test_throughput_counts_exactly_the_trained_tokens_and_samples(monkeypatch):
    """Two padded rows (5 trained tokens, 2 samples), then one packed row holding 2 samples (3 trained
    tokens); an eval-mode forward and one without labels count nothing."""
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr("belle.train.report.time.perf_counter", lambda: next(clock))
    callback, model = ThroughputCallback(pad_token_id=PAD), Model()
    state = SimpleNamespace(global_step=1, log_history=[{"step": 1, "loss": 2.0}])
    callback.on_train_begin(None, state, None, model=model)

    model(input_ids=torch.tensor([[5, 6, 7], [8, 9, PAD]]), labels=torch.tensor([[X, 6, 7], [X, 9, 10]]))
    model(input_ids=torch.tensor([[5, 6, 7, 8, 9, PAD]]), labels=torch.tensor([[X, 6, X, 8, 9, X]]),
          position_ids=torch.tensor([[0, 1, 0, 1, 2, 0]]))
    model(input_ids=torch.tensor([[5, 6]]))
    model.eval()
    model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[5, 6]]))
    assert (callback.trained_tokens, callback.samples) == (7, 4)

    logs = {"loss": 2.0}
    callback.on_log(None, state, None, logs=logs)
    expected = {"trained_tokens_per_second": 3.5, "samples_per_second": 2.0}
    assert logs == {"loss": 2.0, **expected} and state.log_history[-1] == {"step": 1, "loss": 2.0, **expected}
    callback.on_log(None, state, None, logs={"eval_loss": 1.0})  # not a training line: the clock is not read

    callback.on_train_end(None, state, None)
    assert callback.totals == {"trained_tokens": 7, "samples": 4, "trained_tokens_per_second": 1.75, "samples_per_second": 1.0}
    model.train()
    model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[5, 6]]))
    assert callback.trained_tokens == 7, "the hook outlived the run"



# ---- rm, grpo/rloo and kto: TRL 1.16's log keys ---------------------------------------------------

RM_HISTORY = [
    {"step": 1, "loss": 0.69, "accuracy": 0.5, "margin": 0.01, "mean_reward": 0.0},
    {"step": 2, "eval_loss": 0.66, "eval_accuracy": 0.55, "eval_margin": 0.05},
    {"step": 4, "loss": 0.2, "accuracy": 1.0, "margin": 2.0, "mean_reward": 0.3},
    {"step": 4, "eval_loss": 0.1, "eval_accuracy": 0.95, "eval_margin": 2.5},
]
GRPO_HISTORY = [
    {"step": 1, "loss": 0.01, "reward": 0.25, "reward_std": 0.4, "rewards/math_answer/mean": 0.125, "rewards/math_answer/std": 0.3,
     "rewards/eos/mean": 0.5, "rewards/eos/std": 0.5, "kl": 0.0, "completions/mean_length": 40.0,
     "completions/clipped_ratio": 0.5, "judge/failed": 2.0},
    {"step": 2, "loss": 0.02, "reward": 0.5, "reward_std": 0.3, "rewards/math_answer/mean": 0.25, "rewards/math_answer/std": 0.4,
     "rewards/eos/mean": 1.0, "rewards/eos/std": 0.0, "kl": 0.003, "completions/mean_length": 20.0,
     "completions/clipped_ratio": 0.25, "judge/failed": 0.0},
    {"step": 2, "eval_loss": 0.0, "eval_reward": 0.6},
]
KTO_HISTORY = [
    {"step": 1, "loss": 0.5, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2, "kl": 0.0},
    {"step": 2, "loss": 0.4, "rewards/chosen": 0.3, "rewards/rejected": -0.5, "rewards/margins": 0.8, "kl": 0.05},
]


def stage_summary(tmp_path, stage, history, **changes):
    path = tmp_path / "summary.md"
    write_summary(path, {**CONFIG, "stage": stage, "method": "full"},
                  metrics(log_history=history, lora=None, train={"epoch": 1.0, "train_runtime": 3.0}, **changes))
    return path.read_text(encoding="utf-8").splitlines()


def test_an_rm_summary_gives_the_pairwise_accuracy_and_margin_on_the_eval_split(tmp_path):
    lines = stage_summary(tmp_path, "rm", RM_HISTORY, eval={"eval_loss": 0.1, "eval_accuracy": 0.95, "eval_margin": 2.5},
                          data={"pairs": 40})
    at = lines.index("- eval loss: 0.1000")
    assert lines[at + 1:at + 4] == [
        "- eval pairwise accuracy (chosen scored above rejected): 0.950 (first eval 0.550)",
        "- eval mean margin (score of chosen - score of rejected): 2.5000",
        "- train pairwise accuracy: first logged 0.500, last logged 1.000",
    ]
    assert "- preference pairs: 40" in lines


def test_a_grpo_summary_gives_rewards_per_source_kl_length_and_judge_failures(tmp_path):
    lines = stage_summary(tmp_path, "grpo", GRPO_HISTORY, eval=None, data={"prompts": 16})
    at = lines.index("- train loss: first logged 0.0100, last logged 0.0200, mean nan")
    assert lines[at + 1:at + 8] == [
        "- reward (weighted sum per completion): first logged 0.2500, last logged 0.5000",
        "- reward math_answer: first logged 0.1250, last logged 0.2500",
        "- reward eos: first logged 0.5000, last logged 1.0000",
        "- KL to the reference (per token): last logged 0.0030",
        "- completion length: mean 30.0 tokens, last logged 20.0",
        "- completions cut at rl.max_new_tokens: last logged 25.0%",
        "- judge failures: 1.00 per generation batch on average, in 1 of 2 logged steps",
    ]
    assert "- prompts: 16" in lines
    rloo = stage_summary(tmp_path, "rloo", GRPO_HISTORY, eval=None, data={"prompts": 16})
    assert rloo[1:] == lines[1:] and rloo[0].startswith("# rloo / full")


def test_an_rl_summary_leaves_out_what_was_not_logged(tmp_path):
    """No KL (rl.beta=0 loads no reference), no judge: those lines are absent, not zero."""
    history = [{k: v for k, v in h.items() if k not in ("kl", "judge/failed", "completions/clipped_ratio")} for h in GRPO_HISTORY]
    lines = stage_summary(tmp_path, "grpo", history, eval=None, data={})
    assert not [line for line in lines if line.startswith(("- KL", "- judge", "- completions cut"))]
    assert stage_summary(tmp_path, "grpo", [], eval=None, data={})[-4:-3] == ["- reward: none logged"]


def test_a_kto_summary_gives_the_rewards_margin_and_kl(tmp_path):
    lines = stage_summary(tmp_path, "kto", KTO_HISTORY, eval={"eval_loss": 0.45, "eval_rewards/margins": 0.7},
                          data={"examples": 12, "desirable": 6, "undesirable": 6})
    assert "- examples: 12 (6 desirable, 6 undesirable)" in lines
    at = lines.index("- eval loss: 0.4500")
    assert lines[at + 1:at + 6] == [
        "- reward of desirable answers: first logged 0.1000, last logged 0.3000",
        "- reward of undesirable answers: first logged -0.1000, last logged -0.5000",
        "- reward margin: first logged 0.2000, last logged 0.8000",
        "- eval reward margin: 0.7000",
        "- KL estimate (the reference point): first logged 0.0000, last logged 0.0500",
    ]


def test_sft_and_dpo_summaries_get_no_stage_lines():
    assert stage_lines("sft", GRPO_HISTORY, {"eval_accuracy": 1.0}) == []
    assert stage_lines("dpo", RM_HISTORY, {"eval_accuracy": 1.0}) == []


def test_reward_sources_are_the_logged_per_source_means_in_order():
    assert reward_sources(GRPO_HISTORY) == ["math_answer", "eos"]
    assert reward_sources(KTO_HISTORY) == []  # KTO's rewards/chosen is not a source


def plotted(monkeypatch):
    """The axes plot_loss draws: per panel, its y label and its legend's labels."""
    import matplotlib.figure

    seen = []
    savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            legend = ax.get_legend()
            seen.append((ax.get_xlabel(), ax.get_ylabel(), [t.get_text() for t in legend.get_texts()] if legend else []))
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return seen


def test_an_rl_loss_plot_gains_a_reward_panel_with_each_source(tmp_path, monkeypatch):
    seen = plotted(monkeypatch)
    plot_loss(GRPO_HISTORY, tmp_path / "loss.png", "grpo / full", "grpo")
    assert png_size(tmp_path / "loss.png") == (840, 840)
    assert seen == [
        ("optimizer step", "policy loss (per token)", ["train loss", "eval loss"]),
        ("optimizer step", "mean reward per completion",
         ["reward (weighted sum)", "±1 std across completions", "math_answer", "eos", "eval reward"]),
    ]


def test_a_loss_plot_without_rewards_has_one_panel_labelled_for_its_stage(tmp_path, monkeypatch):
    seen = plotted(monkeypatch)
    plot_loss(RM_HISTORY, tmp_path / "loss.png", "rm / full", "rm")
    assert png_size(tmp_path / "loss.png") == (840, 480)
    assert seen == [("optimizer step", "pairwise loss (nats per pair)", ["train loss", "eval loss"])]
