"""`belle gptq eval`: a (quantized) model beside its reference: perplexity on held-out text, weight
file size, peak memory and generation speed, as a table in JSON and markdown.

Each model is measured in a fresh Python process (`python -m belle.gptq.evaluate SPEC RESULT`), so
its peak memory is its own: on a GPU `torch.cuda.max_memory_allocated`, on the CPU the peak
resident set size of that process (VmHWM on Linux, else `getrusage(RUSAGE_SELF).ru_maxrss`), which
includes the Python, torch and transformers the process imported (about 0.6 GB) as well as the model.

Perplexity is `belle.perplexity`'s: that of BELLE's gptq scripts (and the GPTQ paper) on wikitext2,
on whatever text the user brings, in windows of `seqlen` tokens.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from belle.cli import UsageError
from belle.generation import LoadOptions
from belle.modeling import weights_bytes
from belle.perplexity import encode_text, score_ids
from belle.records import read_json_object, write_text_atomic

logger = logging.getLogger(__name__)

PROMPT_TOKENS = 128  # prompt length of the speed measurement, cut from the start of the text
SPEED_RUNS = 3  # timings are medians of this many runs
MB = 2**20


def quantization_info(model_dir: str | Path) -> dict[str, Any] | None:
    """bits, group_size, desc_act, sym and method from config.json's `quantization_config`, or None
    for an unquantized model. The method is `belle.json`'s when it records one (GPTQModel writes
    `gptq` for round-to-nearest too)."""
    config = _read_json(Path(model_dir) / "config.json")
    quant = config.get("quantization_config")
    if not quant:
        return None
    belle = _read_json(Path(model_dir) / "belle.json")
    recorded = belle.get("quantization", {}) if isinstance(belle.get("quantization"), dict) else {}
    method = recorded.get("method") or ("rtn" if "weight_only" in quant.get("meta", {}) else None)
    return {
        "bits": quant.get("bits"),
        "group_size": quant.get("group_size"),
        "desc_act": quant.get("desc_act"),
        "sym": quant.get("sym"),
        "method": method or quant.get("method") or quant.get("quant_method"),
    }


def describe_weights(model_dir: str | Path) -> str:
    """`4-bit g128 gptq`, `3-bit per-channel rtn act-order`, or the dtype of an unquantized model."""
    info = quantization_info(model_dir)
    if info is None:
        config = _read_json(Path(model_dir) / "config.json")
        return str(config.get("dtype") or config.get("torch_dtype") or "unquantized")
    group = "per-channel" if info["group_size"] in (-1, None) else f"g{info['group_size']}"
    words = [f"{info['bits']}-bit", group, str(info["method"] or "")]
    if info["desc_act"]:
        words.append("act-order")
    return " ".join(w for w in words if w)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.is_file() else {}


# ---- one model, measured in its own process ----------------------------------------------------


@dataclass(frozen=True)
class MeasureSpec:
    """What the measuring process does. `text_file` holds the (already cut) text, UTF-8."""

    model: str
    text_file: str
    seqlen: int
    stride: int | None
    gen_tokens: int
    device: str | None
    dtype: str
    trust_remote_code: bool


def measure(spec: MeasureSpec) -> dict[str, Any]:
    """Load one model, score the text and time generation; memory figures are this process's peaks.

    Returns perplexity (`nll` nats over `tokens_scored`), `load_s`, `perplexity_s`, the speed
    figures of `generation_speed`, and `peak_memory_mb` (what `memory` names) with
    `load_peak_memory_mb` (the same peak just after loading) and `baseline_memory_mb` (before).
    """
    import torch

    from belle.generation import load_engine

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    baseline = _peak_memory_mb(False)
    started = time.perf_counter()
    engine = load_engine(spec.model, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code)
    cuda = engine.model.device.type == "cuda"
    load_s = time.perf_counter() - started
    load_peak = _peak_memory_mb(cuda)
    ids = encode_text(engine.tokenizer, Path(spec.text_file).read_text(encoding="utf-8"))
    logger.info("%s loaded in %.1f s; scoring %d tokens in windows of %d", spec.model, load_s, len(ids), spec.seqlen)
    started = time.perf_counter()
    score = score_ids(engine.model, ids, seqlen=spec.seqlen, stride=spec.stride)
    _synchronize(engine.model)
    perplexity_s = time.perf_counter() - started
    logger.info("perplexity %.3f (%d windows, %.1f s)", score.perplexity, score.windows, perplexity_s)
    speed = {}
    if spec.gen_tokens:
        prompt = ids[: max(1, min(PROMPT_TOKENS, engine.context_length - spec.gen_tokens))]
        speed = generation_speed(engine, prompt, spec.gen_tokens)
    return {
        "perplexity": score.perplexity,
        "nll": score.nll,
        "tokens_scored": score.tokens,
        "windows": score.windows,
        "load_s": load_s,
        "perplexity_s": perplexity_s,
        **speed,
        "memory": "cuda max_memory_allocated" if cuda else "cpu peak RSS",
        "peak_memory_mb": _peak_memory_mb(cuda),
        "load_peak_memory_mb": load_peak,
        "baseline_memory_mb": 0.0 if cuda else baseline,
        "device": str(engine.model.device),
        "torch_dtype": str(engine.model.dtype).removeprefix("torch."),
    }


def generation_speed(engine: Any, prompt_ids: list[int], gen_tokens: int) -> dict[str, Any]:
    """Greedy generation of exactly `gen_tokens` tokens (EOS suppressed until then), batch 1.

    After a short warm-up, `prefill_s` is the time to the first token (a one-token generation:
    the prompt's forward pass) and `generate_s` that of all `gen_tokens`, each the median of
    `SPEED_RUNS` interleaved runs; `decode_tokens_per_s` = (gen_tokens - 1) / (generate_s -
    prefill_s), None when noise makes that difference negative; `tokens_per_s` = gen_tokens / generate_s.
    """
    from belle.generation import GenerationParams

    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens)

    def timed(p: GenerationParams) -> tuple[float, int]:
        _synchronize(engine.model)
        started = time.perf_counter()
        completion = engine.generate(prompt_ids, p)
        _synchronize(engine.model)
        return time.perf_counter() - started, completion.completion_tokens

    one_token = replace(params, max_new_tokens=1, min_new_tokens=1)
    short = min(gen_tokens, 4)
    timed(one_token)
    timed(replace(params, max_new_tokens=short, min_new_tokens=short))
    # Interleaved, so that a change in the machine's load affects both timings alike.
    prefills, runs = [], []
    for _ in range(SPEED_RUNS):
        prefills.append(timed(one_token)[0])
        runs.append(timed(params))
    prefill_s = statistics.median(prefills)
    generate_s, generated = statistics.median(run[0] for run in runs), runs[0][1]
    decode_s = generate_s - prefill_s
    return {
        "prompt_tokens": len(prompt_ids),
        "generated_tokens": generated,
        "prefill_s": prefill_s,
        "generate_s": generate_s,
        "decode_tokens_per_s": (generated - 1) / decode_s if generated > 1 and decode_s > 0 else None,
        "tokens_per_s": generated / generate_s,
    }


def _synchronize(model: Any) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(cuda: bool) -> float:
    """Peak GPU memory allocated by torch (all GPUs), or this process's peak resident set size.

    On Linux the peak RSS is `/proc/self/status`'s VmHWM: `getrusage(RUSAGE_SELF).ru_maxrss`
    starts out at the parent's peak when a large process (a test run) starts this one, since
    Linux carries it across fork and exec.
    """
    if cuda:
        import torch

        return sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / MB
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak / 1024


def measure_in_subprocess(spec: MeasureSpec) -> dict[str, Any]:
    """`measure(spec)` in a fresh `python -m belle.gptq.evaluate` process; its log goes to stderr."""
    with tempfile.TemporaryDirectory(prefix="belle-gptq-eval-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        command = [sys.executable, "-m", "belle.gptq.evaluate", str(spec_path), str(result_path)]
        code = subprocess.run(command, env=env, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None).returncode
        result = _read_json(result_path)
    if "error" in result:
        raise UsageError(f"{spec.model}: {result['error']}")
    if code != 0 or not result:
        raise RuntimeError(f"measuring {spec.model} failed (exit code {code}); its traceback is above")
    return result


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _child_main(argv: Sequence[str]) -> int:
    from belle.cli import setup_logging

    setup_logging()
    spec_path, result_path = (Path(a) for a in argv)
    spec = MeasureSpec(**json.loads(spec_path.read_text(encoding="utf-8")))
    try:
        result = measure(spec)
    except (FileNotFoundError, ValueError, OSError) as e:
        result_path.write_text(json.dumps({"error": str(e)}), encoding="utf-8")
        return 2
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---- the verb ------------------------------------------------------------------------------------


def eval_(
    *,
    model: Path,
    reference: Path | None = None,
    text: Path,
    seqlen: int = 2048,
    stride: int | None = None,
    max_chars: int | None = None,
    gen_tokens: int = 64,
    output: Path | None = None,
    load: LoadOptions = LoadOptions(),
) -> int:
    """Compare a (quantized) model with its reference: perplexity, weight size, peak memory, tokens/s.

    Each model is loaded and measured in its own process, one after the other, so peak memory is
    per model. Perplexity runs over the whole text in windows of --seqlen tokens (see --stride);
    speed is greedy generation of --gen-tokens tokens after a prompt cut from the text; --dtype applies
    to unquantized models. Writes eval.json and eval.md (the table, also printed).

    Args:
        model: the model folder to evaluate: a GPTQ folder from `belle gptq quantize`, or any model folder.
        reference: the model it was made from (16/32-bit), measured the same way beside it.
        text: held-out UTF-8 text for perplexity (wikitext-2's test split, our own documents, ...).
        seqlen: tokens per perplexity window; capped at the models' max_position_embeddings.
        stride: tokens scored per window; below --seqlen the windows overlap and each token sees more context; default: --seqlen.
        max_chars: use only the first MAX_CHARS characters of the text.
        gen_tokens: tokens generated for the speed measurement (exactly that many: EOS is suppressed); 0 skips it.
        output: folder for eval.json and eval.md, or a file name ending in .json or .md (both are written beside
            each other); default: the --model folder.
    """
    models = [("reference", reference)] if reference is not None else []
    models.append(("model", model))
    for flag, folder in models:
        _check_model_folder(flag, folder)
    text_value = _read_text(text, max_chars)
    problems = []
    if seqlen < 1:
        problems.append(f"--seqlen must be at least 1, not {seqlen}")
    if stride is not None and not 1 <= stride <= seqlen:
        problems.append(f"--stride must be between 1 and --seqlen ({seqlen}), not {stride}")
    if gen_tokens < 0:
        problems.append(f"--gen-tokens must be 0 (no speed measurement) or more, not {gen_tokens}")
    if problems:
        raise UsageError("; ".join(problems))
    context = min(_max_positions(folder) for _, folder in models)
    window = min(seqlen, context)
    if window < seqlen:
        logger.info("--seqlen %d is longer than the models' %d positions; using %d", seqlen, context, window)
    if gen_tokens >= context:
        raise UsageError(f"--gen-tokens {gen_tokens} leaves no room for a prompt in the models' {context}-token context")
    tokens = _count_tokens(models, text_value, load.trust_remote_code)
    files = _output_files(output if output is not None else model)

    rows = []
    with tempfile.TemporaryDirectory(prefix="belle-gptq-eval-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text_value, encoding="utf-8")
        for role, folder in models:
            logger.info("measuring %s %s in a fresh process", role, folder)
            spec = MeasureSpec(str(folder), str(text_file), window, stride, gen_tokens, load.device, load.dtype,
                               load.trust_remote_code)
            rows.append({"role": role, "path": str(folder), "weights": describe_weights(folder),
                         "quantization": quantization_info(folder), "weights_bytes": weights_bytes(folder),
                         **measure_in_subprocess(spec)})
    _compare(rows)
    report = {
        "text": {"path": str(text), "chars": len(text_value), "tokens": tokens},
        "settings": {"seqlen": window, "stride": stride or window, "gen_tokens": gen_tokens,
                     "prompt_tokens": rows[-1].get("prompt_tokens"), "device": load.device, "dtype": load.dtype},
        "models": rows,
    }
    markdown = render_markdown(report)
    write_text_atomic(files[0], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(files[1], markdown)
    print(markdown)
    print(f"wrote {files[0]} and {files[1]}")
    return 0


def _check_model_folder(flag: str, folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"--{flag} {folder}: no such folder")
    if not (folder / "config.json").is_file():
        raise UsageError(f"--{flag} {folder}: not a model folder (no config.json)")
    if not weights_bytes(folder):
        raise UsageError(f"--{flag} {folder}: no weight files (*.safetensors, *.bin)")


def _read_text(path: Path, max_chars: int | None) -> str:
    if max_chars is not None and max_chars < 1:
        raise UsageError(f"--max-chars must be at least 1, not {max_chars}")
    if not path.is_file():
        raise UsageError(f"--text {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    try:
        value = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--text {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    value = value[:max_chars] if max_chars is not None else value
    if not value.strip():
        raise UsageError(f"--text {path}: no text" + (f" in its first {max_chars} characters" if max_chars else ""))
    return value


def _max_positions(folder: Path) -> int:
    config = _read_json(folder / "config.json")
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def _count_tokens(models: list[tuple[str, Path]], text: str, trust_remote_code: bool) -> int:
    """The text's length in tokens; at least 2 are needed, and the two tokenizers should agree."""
    from belle.modeling import load_tokenizer

    encoded = {}
    for role, folder in models:
        try:
            tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UsageError(f"--{role} {folder}: cannot load its tokenizer: {e}") from None
        encoded[role] = encode_text(tokenizer, text)
    ids = encoded["model"]
    if len(ids) < 2:
        raise UsageError(f"the text is {len(ids)} token(s) long; perplexity needs at least 2")
    if "reference" in encoded and encoded["reference"] != ids:
        logger.warning("the model and the reference tokenize the text differently: their perplexities are not comparable")
    return len(ids)


def _output_files(output: Path) -> tuple[Path, Path]:
    """(json, md): OUTPUT/eval.json and OUTPUT/eval.md, or OUTPUT with .json and .md when it names a file."""
    if output.suffix in (".json", ".md"):
        return output.with_suffix(".json"), output.with_suffix(".md")
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: a file; name a folder, or a file ending in .json or .md")
    return output / "eval.json", output / "eval.md"


def _compare(rows: list[dict[str, Any]]) -> None:
    """Add each row's size ratio and perplexity change relative to the reference row (the first)."""
    reference = rows[0] if rows[0]["role"] == "reference" else None
    for row in rows:
        if reference is None:
            row["size_ratio"] = row["perplexity_change"] = row["perplexity_change_pct"] = None
            continue
        row["size_ratio"] = row["weights_bytes"] / reference["weights_bytes"]
        row["perplexity_change"] = row["perplexity"] - reference["perplexity"]
        row["perplexity_change_pct"] = 100 * row["perplexity_change"] / reference["perplexity"]


def render_markdown(report: dict[str, Any]) -> str:
    """The side-by-side table with a line on what was measured."""
    text, settings, rows = report["text"], report["settings"], report["models"]
    header = ["model", "path", "weights", "weights MB", "size vs ref", "perplexity", "change vs ref",
              "peak memory MB", "prompt ms", "tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        change = "" if row["perplexity_change"] is None or row["role"] == "reference" else (
            f"{row['perplexity_change']:+.3f} ({row['perplexity_change_pct']:+.2f}%)")
        cells = [
            row["role"],
            f"`{row['path']}`",
            row["weights"],
            f"{row['weights_bytes'] / MB:.2f}",
            "" if row["size_ratio"] is None else f"{row['size_ratio']:.2f}x",
            f"{row['perplexity']:.3f}",
            change,
            f"{row['peak_memory_mb']:.0f}",
            _number(row.get("prefill_s"), 1000, ".1f"),
            _number(row.get("decode_tokens_per_s"), 1, ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    memory = rows[-1]["memory"]
    notes = [
        f"Perplexity on `{text['path']}` ({text['chars']:,} characters, {text['tokens']:,} tokens): windows of "
        f"{settings['seqlen']} tokens, {settings['stride']} scored per window.",
        f"Peak memory: {memory}" + (" of the measuring process (Python, torch and transformers included)."
                                    if memory.startswith("cpu") else ", weights and activations."),
    ]
    if settings["gen_tokens"]:
        notes.append(f"Speed on {rows[-1]['device']}: greedy, batch 1, a {settings['prompt_tokens']}-token prompt "
                     f"(prompt ms: time to the first token), then {settings['gen_tokens']} tokens (tokens/s: decoding).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _number(value: float | None, scale: float, spec: str) -> str:
    return "" if value is None else format(value * scale, spec)


if __name__ == "__main__":
    from belle.gptq import evaluate  # this module under its own name, for its logger's

    raise SystemExit(evaluate._child_main(sys.argv[1:]))
