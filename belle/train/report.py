"""What a run tells its user: throughput while it trains, then `metrics.json`, `loss.png`, `summary.md`."""

from __future__ import annotations

import json
import re
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


LOSS_LABELS = {
    "sft": "loss (nats per trained token)",
    "pt": "loss (nats per trained token)",
    "dpo": "DPO loss (nats per pair)",
    "rm": "pairwise loss (nats per pair)",
    "grpo": "policy loss (per token)",
    "rloo": "policy loss (per token)",
    "kto": "KTO loss (per example)",
}
SOURCE_MEAN = re.compile(r"^rewards/([^/]+)/mean$")


def reward_sources(log_history: list[dict[str, Any]]) -> list[str]:
    """Reward sources with a logged `rewards/<name>/mean` (grpo and rloo), in first-logged order."""
    names: dict[str, None] = {}
    for entry in log_history:
        for key in entry:
            if match := SOURCE_MEAN.match(key):
                names[match[1]] = None
    return list(names)


def _series(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in log_history if h.get(key) is not None and "step" in h]


def plot_loss(log_history: list[dict[str, Any]], path: Path, title: str, stage: str = "sft") -> None:
    """Training loss (and eval loss, when there is one) against the optimizer step. A history with
    rewards (grpo, rloo) gets a second panel below: the mean reward per completion (the weighted sum
    of the sources, with a band of one standard deviation across completions), the mean of each
    source (`rewards/<name>/mean`, unweighted) and the eval reward when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = _series(log_history, "reward")
    fig, axes = plt.subplots(2 if rewards else 1, 1, figsize=(7, 7 if rewards else 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    train, evals = _series(log_history, "loss"), _series(log_history, "eval_loss")
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(LOSS_LABELS.get(stage, "loss"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if rewards:
        _plot_rewards(axes[1][0], log_history, rewards)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_rewards(ax: Any, log_history: list[dict[str, Any]], rewards: list[tuple[int, float]]) -> None:
    steps, means = zip(*rewards)
    ax.plot(steps, means, color="black", linewidth=1.6, label="reward (weighted sum)")
    spread = dict(_series(log_history, "reward_std"))
    if len(spread) == len(rewards):
        stds = [spread[s] for s in steps]
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color="black", alpha=0.12, linewidth=0, label="±1 std across completions")
    for name in reward_sources(log_history):
        ax.plot(*zip(*_series(log_history, f"rewards/{name}/mean")), linewidth=1.0, label=name)
    evals = _series(log_history, "eval_reward")
    if evals:
        ax.plot(*zip(*evals), "o--", color="black", linewidth=1.0, label="eval reward")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward per completion")
    ax.set_title("rewards (sources unweighted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _first_last(values: list[float], digits: int = 4) -> str:
    if not values:
        return "none logged"
    return f"first logged {values[0]:.{digits}f}, last logged {values[-1]:.{digits}f}"


def _logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    return [h[key] for h in log_history if h.get(key) is not None]


def stage_lines(stage: str, log_history: list[dict[str, Any]], evals: dict[str, Any]) -> list[str]:
    """What the stage's own metrics say: rm's pairwise accuracy and margin, grpo/rloo's rewards, KL,
    completion length and judge failures, kto's rewards and KL (TRL 1.16's log keys)."""
    if stage == "rm":
        return _rm_lines(log_history, evals)
    if stage in ("grpo", "rloo"):
        return _rl_lines(log_history)
    if stage == "kto":
        return _kto_lines(log_history, evals)
    return []


def _rm_lines(log_history: list[dict[str, Any]], evals: dict[str, Any]) -> list[str]:
    lines = []
    accuracy = _logged(log_history, "eval_accuracy")
    if "eval_accuracy" in evals:
        lines.append(f"- eval pairwise accuracy (chosen scored above rejected): {evals['eval_accuracy']:.3f}"
                     + (f" (first eval {accuracy[0]:.3f})" if accuracy else ""))
    if "eval_margin" in evals:
        lines.append(f"- eval mean margin (score of chosen - score of rejected): {evals['eval_margin']:.4f}")
    train = _logged(log_history, "accuracy")
    if train:
        lines.append(f"- train pairwise accuracy: {_first_last(train, 3)}")
    return lines


def _rl_lines(log_history: list[dict[str, Any]]) -> list[str]:
    rewards = _logged(log_history, "reward")
    if not rewards:
        return ["- reward: none logged"]
    lines = [f"- reward (weighted sum per completion): {_first_last(rewards)}"]
    for name in reward_sources(log_history):
        lines.append(f"- reward {name}: {_first_last(_logged(log_history, f'rewards/{name}/mean'))}")
    kl = _logged(log_history, "kl")
    if kl:
        lines.append(f"- KL to the reference (per token): last logged {kl[-1]:.4f}")
    lengths = _logged(log_history, "completions/mean_length")
    if lengths:
        lines.append(f"- completion length: mean {sum(lengths) / len(lengths):.1f} tokens, last logged {lengths[-1]:.1f}")
    clipped = _logged(log_history, "completions/clipped_ratio")
    if clipped:
        lines.append(f"- completions cut at rl.max_new_tokens: last logged {clipped[-1]:.1%}")
    failed = _logged(log_history, "judge/failed")
    if failed:
        lines.append(f"- judge failures: {sum(failed) / len(failed):.2f} per generation batch on average, "
                     f"in {sum(1 for n in failed if n)} of {len(failed)} logged steps")
    return lines


def _kto_lines(log_history: list[dict[str, Any]], evals: dict[str, Any]) -> list[str]:
    lines = []
    for key, what in (("rewards/chosen", "reward of desirable answers"), ("rewards/rejected", "reward of undesirable answers"),
                      ("rewards/margins", "reward margin"), ("kl", "KL estimate (the reference point)")):
        values = _logged(log_history, key)
        if values:
            lines.append(f"- {what}: {_first_last(values)}")
        if f"eval_{key}" in evals:
            lines.append(f"- eval {what}: {evals[f'eval_{key}']:.4f}")
    return lines


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
    if "prompts" in data:
        lines.append(f"- prompts: {data['prompts']}")
    if "examples" in data:
        split = [f"{data[k]} {k}" for k in ("desirable", "undesirable") if k in data]
        lines.append(f"- examples: {data['examples']}" + (f" ({', '.join(split)})" if split else ""))
    for key, where in (("dropped", "training"), ("eval_dropped", "validation")):
        if sum((data.get(key) or {}).values()):
            lines.append(f"- dropped from the {where} data: " + ", ".join(f"{n} {why}" for why, n in data[key].items() if n))
    if metrics.get("lora"):
        lines.append(f"- {describe(metrics['lora'])}")
    lines += [
        f"- steps: {metrics['global_step']}, epochs: {train.get('epoch', 0):.2f}",
        f"- train loss: first logged {losses[0]:.4f}, last logged {losses[-1]:.4f}, mean {train.get('train_loss', float('nan')):.4f}"
        if losses else "- train loss: none logged",
    ]
    if "eval_loss" in evals:
        lines.append(f"- eval loss: {evals['eval_loss']:.4f}")
    lines += stage_lines(config["stage"], metrics["log_history"], evals)
    if "trained_tokens_per_second" in train:
        lines.append(f"- throughput: {train['trained_tokens_per_second']:,.0f} trained tokens/s, {train['samples_per_second']:,.2f} samples/s")
    lines.append(f"- runtime: {train.get('train_runtime', 0):.1f} s")
    lines += ["", "![loss](loss.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_report(output_dir: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """`metrics.json`, `loss.png` and `summary.md` in `output_dir`."""
    (output_dir / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    plot_loss(metrics["log_history"], output_dir / "loss.png", f"{config['stage']} / {config['method']}", config["stage"])
    write_summary(output_dir / "summary.md", config, metrics)
