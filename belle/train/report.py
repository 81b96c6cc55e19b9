"""What a run tells its user: throughput while it trains, then `metrics.json`, `loss.png`, `summary.md`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from belle.tokenization import IGNORE_INDEX
from belle.train.lora import describe


@dataclass
class ThroughputCallback(TrainerCallback):
    """Adds `trained_tokens_per_second` and `samples_per_second` (all ranks together) to every
    training log line, and totals for the whole session to `totals` at the end.

    The counts come from a forward pre-hook on the model, so they are exactly the batches trained
    on, whatever the data loader prefetches. A packed row counts one sample per sample it holds
    (its `position_ids` restart at 0 on a token that is not padding).
    """

    pad_token_id: int
    totals: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0
    samples: int = 0
    _hook: Any = None
    _last: tuple[float, int, int] = (0.0, 0, 0)
    _start: tuple[float, int, int] = (0.0, 0, 0)

    def _count(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training or kwargs.get("labels") is None:
            return
        labels, input_ids, positions = kwargs["labels"], kwargs["input_ids"], kwargs.get("position_ids")
        self.trained_tokens += int((labels != IGNORE_INDEX).sum())
        if positions is not None:
            self.samples += int(((positions == 0) & (input_ids != self.pad_token_id)).sum())
        else:
            self.samples += int((labels != IGNORE_INDEX).any(dim=-1).sum())

    def _now(self) -> tuple[float, int, int]:
        import torch
        import torch.distributed as dist

        counts = torch.tensor([self.trained_tokens, self.samples], dtype=torch.int64)
        if dist.is_available() and dist.is_initialized():
            device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
            counts = counts.to(device)
            dist.all_reduce(counts)
        tokens, samples = counts.tolist()
        return time.perf_counter(), tokens, samples

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._start = self._last = self._now()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        now = self._now()
        rates = _rates(self._last, now)
        self._last = now
        logs.update(rates)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(rates)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._hook.remove()
        end = self._now()
        self.totals = {"trained_tokens": end[1] - self._start[1], "samples": end[2] - self._start[2], **_rates(self._start, end)}


def _rates(start: tuple[float, int, int], end: tuple[float, int, int]) -> dict[str, float]:
    seconds = max(end[0] - start[0], 1e-9)
    return {
        "trained_tokens_per_second": round((end[1] - start[1]) / seconds, 2),
        "samples_per_second": round((end[2] - start[2]) / seconds, 3),
    }


def plot_loss(log_history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (and eval loss, when there is one) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per trained token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(path: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A short human-readable account of the run: what was trained, on what, and how it went."""
    train, evals, data = metrics["train"], metrics.get("eval") or {}, metrics.get("data") or {}
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    lines = [
        f"# {config['stage']} / {config['method']}: {config['model']['path']}",
        "",
        f"- output: `{config['output_dir']}`",
        f"- data: {', '.join(config['data']['train_files'])}",
    ]
    if "samples" in data:
        lines.append(f"- samples: {data['samples']} ({data.get('trained_tokens', 0)} trained tokens)"
                     + (f", packed into {data['rows']} rows at {data['packing_efficiency']:.1%} efficiency" if data.get("rows") else ""))
        lines += [f"- note: {note}" for note in data.get("notes") or []]
    if "pairs" in data:
        lines.append(f"- preference pairs: {data['pairs']}")
    if metrics.get("lora"):
        lines.append(f"- {describe(metrics['lora'])}")
    lines += [
        f"- steps: {metrics['global_step']}, epochs: {train.get('epoch', 0):.2f}",
        f"- train loss: first logged {losses[0]:.4f}, last logged {losses[-1]:.4f}, mean {train.get('train_loss', float('nan')):.4f}"
        if losses else "- train loss: none logged",
    ]
    if "eval_loss" in evals:
        lines.append(f"- eval loss: {evals['eval_loss']:.4f}")
    if "trained_tokens_per_second" in train:
        lines.append(f"- throughput: {train['trained_tokens_per_second']:,.0f} trained tokens/s, {train['samples_per_second']:,.2f} samples/s")
    lines.append(f"- runtime: {train.get('train_runtime', 0):.1f} s")
    lines += ["", "![loss](loss.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_report(output_dir: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """`metrics.json`, `loss.png` and `summary.md` in `output_dir`."""
    (output_dir / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    plot_loss(metrics["log_history"], output_dir / "loss.png", f"{config['stage']} / {config['method']}")
    write_summary(output_dir / "summary.md", config, metrics)
