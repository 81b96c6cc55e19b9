"""What a run reports, from a made-up log history: token and sample counts, `summary.md`, `loss.png`
and `metrics.json` (`test_cli` checks them after a real run)."""

import json
import struct
from types import SimpleNamespace

import torch

from belle.tokenization import IGNORE_INDEX
from belle.train.report import ThroughputCallback, _rates, plot_loss, write_report, write_summary
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

