#!/usr/bin/env python
"""Training throughput: padding to the longest sample in the batch (BELLE's default) against packing.

Method: the answered rows of a real instruction set (`eval_set.json` of BELLE's eval data: each
row's `question` as the user turn, its `std_answer` as the assistant turn; rows with an empty answer
are skipped) are cycled to N conversations and written as a `messages` JSONL file in a temporary
folder. A random-init LLaMA is built with `belle.models.tiny.build_tiny_model`. Each arm is then the
real training CLI, `python -m belle train`, as a subprocess with the same settings but `data.pack`:

    padding: data.pack=false, training.batch_size=B samples, each batch padded to its longest sample
    packing: data.pack=true,  training.batch_size=k rows of max_length tokens (best-fit packed)

Fair comparison: the same tokens per optimizer step, not the same slots. k is chosen so that k rows
hold about as many sample tokens as B samples do (k = round(B * mean sample tokens / (max_length *
packing efficiency))); both arms then take optimizer steps of the same size, and the only
difference is the padding the padding arm computes. Same slots (k = B) would give packing ~2.8x the
tokens per step, larger matrix products, and a speedup that is partly a bigger batch. Defaults:
B = 8 and max_length = 1024, BELLE's cutoff_len and belle's default; with the tiny model's
tokenizer the answered rows have 41 to 1,662 tokens (mean 373, p99 ~1,050), so 1024 keeps 623 of
the 631 rows (belle drops a one-round conversation that does not fit: no earlier assistant turn to
cut at) and packs them into rows 99.6% full. Both arms train on exactly the same samples.

Trained tokens per second (tokens with a loss, i.e. the answers) excludes start-up: the run's
`ThroughputCallback` starts its clock at `on_train_begin`, after tokenization and model load. The
headline is the steady rate: the median over the per-logging-interval rates of `log_history`, the
first interval (step 1: first allocations, first batch) left out; each arm runs R times, in ABBA
order, and its best run counts. Other work on the machine only ever slows a run down, and on a
shared 2-core VM it comes and goes in phases of minutes, so the best of several short runs is the
closest to the machine's own speed, as `timeit` takes the minimum. Each run also reports the CPU
time that other processes used while it ran (from /proc/stat, less the run's own), so a disturbed
run shows as one. The session rate of `metrics.json` (`train.trained_tokens_per_second`, first
step included, median of the runs) is shown beside it.

On a GPU the table adds model FLOPs utilisation (MFU), model FLOPs per second over peak:

    MFU = (6 * N + 12 * n_layers * hidden * S_eff) * (non-padding tokens / s) / peak

N counts the weights used in matrix products (all parameters but the input embedding, a lookup).
12 * n_layers * hidden * S is the attention score and value products of a token attending over a
sequence of S tokens, forward and backward, without halving for the causal mask (the PaLM
convention). Every token attends over its own sample only, so S_eff = sum(s^2) / sum(s) over the
sample lengths s: neither the padding nor the other samples in a packed row count as model FLOPs
(sdpa does compute the whole masked row; flash_attention_2 skips it). Non-padding tokens / s is the
trained rate times tokens / trained tokens of the arm's data.

Goals: packing fills at least 95% of its slots, and trains at least 1.5x the tokens per second of
padding.

Usage:
    python benchmarks/bench_train.py                      # tiny model on CPU (under 2 min on 2 cores)
    python benchmarks/bench_train.py --json bench_train.json
    python benchmarks/bench_train.py --size 1b --rounds 2           # on a GPU: bf16, sdpa, with MFU
    python benchmarks/bench_train.py --size 1b --attn flash_attention_2 --gradient-checkpointing  # needs flash-attn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_common import finish, machine_info  # noqa: E402  (beside this script)

EFFICIENCY_GOAL = 0.95  # packed slots holding a sample's token
SPEEDUP_GOAL = 1.5  # packing / padding, trained tokens per second

# TinyLlama-1.1B's shape. The vocabulary stays the BPE trained on belle's bundled corpus, which runs
# out of merges at 3,471 tokens whatever vocab_size asks, so the model has ~0.98B parameters
# (TinyLlama's 32k vocabulary adds 2 x 65.5M of embeddings).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {},
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32, num_kv_heads=4,
               max_position_embeddings=2048, vocab_size=32000),
}


# ---------------------------------------------------------------------------------------------
# Data


def read_eval_set(path: Path) -> list[list[dict[str, str]]]:
    """The rows with an answer, as one-round conversations (user = question, assistant = answer)."""
    conversations = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("std_answer", "").strip():
                conversations.append([{"role": "user", "content": row["question"]},
                                      {"role": "assistant", "content": row["std_answer"]}])
    return conversations


def write_jsonl(path: Path, conversations: list[list[dict[str, str]]], n: int) -> None:
    """`n` conversations in belle's messages format, cycling through `conversations` in order."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"messages": conversations[i % len(conversations)]}, ensure_ascii=False))
            f.write("\n")


def length_profile(jsonl: Path, model_dir: Path, max_length: int, batch_size: int, pad_multiple: int | None, seed: int) -> dict[str, Any]:
    """What the data looks like to belle's pipeline at `max_length`, computed in this process with
    the same `load_conversations` + `tokenize_dataset` the runs use (and the same datasets cache,
    which the runs then reuse).

    The padding arm's slot efficiency is an expectation: the Trainer's sampler shuffles, so it is
    averaged over 20 random orders cut into batches of `batch_size` (each padded to its longest
    sample, rounded up to `pad_multiple` as belle's collator does on a GPU).
    """
    import numpy as np

    from belle.dataset import load_conversations, tokenize_dataset
    from belle.modeling import load_tokenizer, resolve_template

    tokenizer = load_tokenizer(model_dir)
    template = resolve_template(model_dir, tokenizer)
    conversations = load_conversations(str(jsonl))
    samples, stats = tokenize_dataset(conversations, tokenizer, template, max_length=max_length)
    _, packed = tokenize_dataset(conversations, tokenizer, template, max_length=max_length, pack=True)
    lengths = np.array([len(ids) for ids in samples.with_format(None)["input_ids"]], dtype=np.int64)
    rng = np.random.default_rng(seed)
    efficiencies = []
    for _ in range(20):
        order = rng.permutation(lengths)[: len(lengths) // batch_size * batch_size].reshape(-1, batch_size)
        longest = order.max(axis=1)
        if pad_multiple:
            longest = -(-longest // pad_multiple) * pad_multiple
        efficiencies.append(order.sum() / (longest.sum() * batch_size))
    return {
        "records": stats.records,
        "samples": stats.samples,
        "dropped": stats.dropped,
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "mean_tokens": float(lengths.mean()),
        "median_tokens": float(np.median(lengths)),
        "p99_tokens": float(np.percentile(lengths, 99)),
        "max_tokens": int(lengths.max()),
        # Per-token attention length when every token attends over its own sample.
        "attention_length": float((lengths**2).sum() / lengths.sum()),
        "padding_efficiency_expected": float(np.mean(efficiencies)),
        "packed_rows": packed.rows,
        "packing_efficiency": packed.packing_efficiency,
    }


# ---------------------------------------------------------------------------------------------
# Model


def build_model(size: str, out: Path) -> Path:
    from belle.models.tiny import build_tiny_model

    return build_tiny_model(out, **SIZES[size])


def model_shape(model_dir: Path) -> dict[str, Any]:
    """Parameter counts and shape, from a model built on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "parameters": total,
        "matmul_parameters": total - embedding,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
    }


def flops_per_token(shape: dict[str, Any], attention_length: float) -> float:
    """Training (forward + backward) model FLOPs per token; see the module docstring."""
    return 6 * shape["matmul_parameters"] + 12 * shape["layers"] * shape["hidden"] * attention_length


# ---------------------------------------------------------------------------------------------
# Runs


def run_arm(args: argparse.Namespace, pack: bool, batch_size: int, model_dir: Path, jsonl: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `belle train` run; returns its throughput figures and data stats from `metrics.json`."""
    overrides = [
        f"output_dir={out}",
        f"model.path={model_dir}",
        f"data.train_files={json.dumps([str(jsonl)])}",
        f"data.max_length={args.max_length}",
        f"data.pack={str(pack).lower()}",
        f"training.batch_size={batch_size}",
        f"training.max_steps={args.steps}",
        f"training.logging_steps={args.logging_steps}",
        f"training.save_steps={10**9}",  # no checkpoint inside the timed loop
        "training.report_to=[]",
        f"training.precision={args.precision}",
        f"training.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"training.seed={args.seed}",
        "resume=never",
    ]
    if args.attn:
        overrides.append(f"model.attn_implementation={args.attn}")
    command = [sys.executable, "-m", "belle", "train", *overrides]
    log = out.with_suffix(".log")
    cpu_before, own_before, start = cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    wall = time.perf_counter() - start
    cpu_after, own_after = cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    capacity = wall * (os.cpu_count() or 1)
    if proc.returncode != 0 or not (out / "metrics.json").is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"`{' '.join(command)}` failed with exit status {proc.returncode}:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    intervals = [h for h in metrics["log_history"] if "loss" in h and "trained_tokens_per_second" in h]
    data = metrics["data"]
    return {
        "pack": pack,
        "batch_size": batch_size,
        "wall_seconds": wall,
        # Shares of the machine's CPU time (cores x wall) while the run lasted, start-up included.
        "own_cpu_share": own / capacity,
        "other_cpu_share": max(0.0, cpu_after["busy"] - cpu_before["busy"] - own) / capacity,
        "steal_share": (cpu_after["steal"] - cpu_before["steal"]) / capacity,
        "train_runtime": metrics["train"]["train_runtime"],
        "session_trained_tokens_per_second": metrics["train"]["trained_tokens_per_second"],
        "trained_tokens": metrics["train"]["trained_tokens"],
        "samples_trained": metrics["train"]["samples"],
        "global_step": metrics["global_step"],
        # log_history's first training entry is step 1 alone (logging_first_step): the warm-up.
        "interval_steps": [h["step"] for h in intervals],
        "interval_trained_tokens_per_second": [h["trained_tokens_per_second"] for h in intervals],
        "final_loss": intervals[-1]["loss"] if intervals else None,
        "data": {k: data.get(k) for k in ("records", "samples", "dropped", "tokens", "trained_tokens", "rows", "packing_efficiency")},
    }


def cpu_seconds() -> dict[str, float]:
    """CPU seconds all processes have spent busy since boot, and stolen by the hypervisor (Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {"busy": 0.0, "steal": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def steady_rate(run: dict[str, Any]) -> float:
    """Median trained tokens/s over a run's logging intervals, the warm-up (step 1) left out."""
    return statistics.median(run["interval_trained_tokens_per_second"][1:])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(runs, key=steady_rate)
    return {
        "steady_trained_tokens_per_second": steady_rate(best),
        "steady_per_run": [steady_rate(r) for r in runs],
        "best_run": runs.index(best),
        "session_trained_tokens_per_second": statistics.median(r["session_trained_tokens_per_second"] for r in runs),
        "other_cpu_share_best_run": best["other_cpu_share"],
        "train_runtime": [r["train_runtime"] for r in runs],
        "data": runs[0]["data"],
        "final_loss": [r["final_loss"] for r in runs],
    }


# ---------------------------------------------------------------------------------------------


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*lines, *(fmt.format(*r) for r in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="tiny: ~1.3M parameters (CPU); 1b: TinyLlama's shape (GPU)")
    parser.add_argument("--eval-set", type=Path, default=REPO.parent / "shared" / "belle-data" / "eval_set.json",
                        help="JSONL of question / std_answer / class rows (default: ../shared/belle-data/eval_set.json)")
    parser.add_argument("--conversations", type=int, default=4000, help="conversations written, cycling through the answered rows")
    parser.add_argument("--max-length", type=int, default=1024, help="data.max_length: tokens per sample (longer ones are cut or dropped) and per packed row")
    parser.add_argument("--batch-size", type=int, default=8, help="padding arm: samples per step")
    parser.add_argument("--pack-batch-size", type=int, default=0, help="packing arm: rows per step; 0: as many tokens as the padding arm's step")
    # 40 steps logged every 5: 8 timed intervals after the warm-up step. The tiny model on 2 cores
    # takes ~0.3 s a padded step and ~0.17 s a packed one, so a run is ~6 s of start-up and 7-14 s
    # of training, and the default benchmark under 2 minutes.
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--logging-steps", type=int, default=5, help="steps per logged interval")
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm, in ABBA order; the best counts")
    parser.add_argument("--attn", default="sdpa", help="model.attn_implementation: sdpa, flash_attention_2, eager")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"), help="training.precision (auto: bf16 on an H100, fp32 on CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="training.gradient_checkpointing=true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOPS for MFU (H100 SXM: 989)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tmp-dir", default=None, help="where the model, data, datasets cache and runs go (deleted at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, metrics.json of every run)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not args.eval_set.is_file():
        parser.error(f"--eval-set {args.eval_set}: no such file (BELLE's eval_set.json, JSON lines of question / std_answer / class)")
    if args.steps < 2 * args.logging_steps:
        parser.error("--steps must be at least two logging intervals (the first is left out as warm-up)")

    workdir = Path(tempfile.mkdtemp(prefix="belle-bench-train-", dir=args.tmp_dir))
    # Set before `datasets` is imported: the profile below and every run share one cache, so the
    # runs after the first skip tokenization (it is outside the timed loop either way).
    os.environ["HF_DATASETS_CACHE"] = str(workdir / "hf_datasets_cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        return benchmark(args, workdir, env)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def benchmark(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> int:
    import torch

    info = machine_info()
    gpu = info["gpu"] is not None
    load_before = os.getloadavg()
    print(f"machine: {info['gpu'] or info['cpu']}, {info['cores']} cores; python {info['python']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, datasets {info['datasets']}; load average {load_before[0]:.2f}")
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    conversations = read_eval_set(args.eval_set)
    jsonl = workdir / "conversations.jsonl"
    write_jsonl(jsonl, conversations, args.conversations)
    start = time.perf_counter()
    model_dir = build_model(args.size, workdir / "model")
    shape = model_shape(model_dir)
    print(f"model: {args.size}, {shape['parameters'] / 1e6:,.1f}M parameters ({shape['layers']} layers, hidden {shape['hidden']}, "
          f"vocab {shape['vocab']:,}), built in {time.perf_counter() - start:.0f} s")

    pad_multiple = 8 if torch.cuda.is_available() else None  # belle's collator on a GPU
    profile = length_profile(jsonl, model_dir, args.max_length, args.batch_size, pad_multiple, args.seed)
    rows_per_step = args.pack_batch_size or max(1, round(args.batch_size * profile["mean_tokens"] / (args.max_length * profile["packing_efficiency"])))
    results.update(model=shape, profile=profile, pack_batch_size=rows_per_step)
    print(f"data: {len(conversations)} answered rows of {args.eval_set} cycled to {profile['records']:,} conversations; "
          f"{profile['samples']:,} samples at max_length {args.max_length} (dropped: {profile['dropped'] or 'none'}); tokens per sample "
          f"mean {profile['mean_tokens']:.0f}, median {profile['median_tokens']:.0f}, p99 {profile['p99_tokens']:.0f}, max {profile['max_tokens']}")
    print(f"step: padding {args.batch_size} samples (~{args.batch_size * profile['mean_tokens']:,.0f} tokens in "
          f"~{args.batch_size * profile['mean_tokens'] / profile['padding_efficiency_expected']:,.0f} slots); packing {rows_per_step} rows of "
          f"{args.max_length} (~{rows_per_step * args.max_length * profile['packing_efficiency']:,.0f} tokens); {args.steps} steps per run, "
          f"{args.rounds} run(s) per arm", flush=True)

    arms = {"padding": (False, args.batch_size), "packing": (True, rows_per_step)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name in (["padding", "packing"] if r % 2 == 0 else ["packing", "padding"]):
            pack, batch_size = arms[name]
            run = run_arm(args, pack, batch_size, model_dir, jsonl, workdir / f"{name}-{r}", env)
            runs[name].append(run)
            rates = run["interval_trained_tokens_per_second"]
            print(f"  round {r + 1} {name}: {run['wall_seconds']:.0f} s wall ({run['train_runtime']:.1f} s training), CPU: own "
                  f"{run['own_cpu_share']:.0%}, other processes {run['other_cpu_share']:.0%}, stolen {run['steal_share']:.0%}; trained tokens/s: "
                  f"steady {steady_rate(run):,.0f}, session {run['session_trained_tokens_per_second']:,.0f}, intervals "
                  f"{', '.join(f'{x:,.0f}' for x in rates)}", flush=True)
    load_after = os.getloadavg()
    results["runs"] = runs
    summary = {name: summarize(r) for name, r in runs.items()}
    summary["padding"]["slot_efficiency"] = profile["padding_efficiency_expected"]
    summary["packing"]["slot_efficiency"] = summary["packing"]["data"]["packing_efficiency"]
    base = summary["padding"]
    for name, s in summary.items():
        s["speedup"] = s["steady_trained_tokens_per_second"] / base["steady_trained_tokens_per_second"]
        s["session_speedup"] = s["session_trained_tokens_per_second"] / base["session_trained_tokens_per_second"]
        data = s["data"]
        s["tokens_per_second"] = s["steady_trained_tokens_per_second"] * data["tokens"] / data["trained_tokens"]
        if gpu:
            s["mfu"] = flops_per_token(shape, profile["attention_length"]) * s["tokens_per_second"] / (args.peak_tflops * 1e12)
    results["summary"] = summary
    results["load_average"] = {"before": load_before, "after": load_after}

    header = ("arm", "per step", "samples", "rows", "slot efficiency", "trained tok/s", "session tok/s", "speedup", *(("MFU",) if gpu else ()))
    rows = []
    for name, s in summary.items():
        data = s["data"]
        rows.append((
            name,
            f"{arms[name][1]} {'rows' if arms[name][0] else 'samples'}",
            f"{data['samples']:,}",
            f"{data['rows'] or data['samples']:,}",
            f"{s['slot_efficiency']:.1%}" + (" (expected)" if name == "padding" else ""),
            f"{s['steady_trained_tokens_per_second']:,.0f}",
            f"{s['session_trained_tokens_per_second']:,.0f}",
            f"{s['speedup']:.2f}x (session {s['session_speedup']:.2f}x)",
            *((f"{s['mfu']:.1%}",) if gpu else ()),
        ))
    print("\n" + table(header, rows))
    if gpu:
        print(f"MFU: (6 x {shape['matmul_parameters'] / 1e6:,.1f}M + 12 x {shape['layers']} x {shape['hidden']} x {profile['attention_length']:.0f}) "
              f"FLOPs/token x non-padding tokens/s / {args.peak_tflops:g} TFLOPS")
    shared = {name: s["other_cpu_share_best_run"] for name, s in summary.items() if s["other_cpu_share_best_run"] > 0.05}
    if shared:
        print("note: other processes used " + ", ".join(f"{share:.0%} of the CPU during the best {name} run" for name, share in shared.items())
              + "; the figures are then a lower bound of this machine's speed (try more --rounds on a quiet machine)")

    efficiency = summary["packing"]["slot_efficiency"]
    speedup = summary["packing"]["speedup"]
    goals = [
        ("packing slot efficiency", f"{efficiency:.1%}", f">= {EFFICIENCY_GOAL:.0%}", efficiency >= EFFICIENCY_GOAL),
        ("packing / padding, trained tokens/s", f"{speedup:.2f}x", f">= {SPEEDUP_GOAL}x", speedup >= SPEEDUP_GOAL),
    ]
    print("\n" + table(("metric", "value", "goal", "result"), [(g, v, t, "PASS" if ok else "FAIL") for g, v, t, ok in goals]))
    passed = all(ok for *_, ok in goals)
    results["goals"] = {g: {"value": v, "target": t, "passed": ok} for g, v, t, ok in goals}
    return finish(results, passed, args.json)


if __name__ == "__main__":
    sys.exit(main())
