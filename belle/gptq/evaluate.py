"""`belle gptq eval`: (quantized) models side by side with their reference: perplexity on held-out
text, weight file size, peak memory and generation speed, as a table in JSON and markdown.

A model is a model folder (float, or GPTQ from `belle gptq quantize`), run by transformers, or a GGUF
file (`belle export gguf`), run by llama.cpp on the CPU; both are loaded with
`belle.generation.load_engine` and measured through the engine surface (`score_text`, `generate`).
Each model is measured in a fresh Python process (`python -m belle.gptq.evaluate SPEC RESULT`), so
its peak memory is its own: on a GPU `torch.cuda.max_memory_allocated`, on the CPU the peak
resident set size of that process (VmHWM on Linux, else `getrusage(RUSAGE_SELF).ru_maxrss`), which
includes the Python, torch and transformers the process imported (about 0.6 GB) as well as the model
(for a GGUF file, the pages of the memory-mapped file that llama.cpp touched).

Perplexity is `belle.perplexity`'s: that of BELLE's gptq scripts (and the GPTQ paper) on wikitext2,
on whatever text the user brings, in windows of `seqlen` tokens.
"""

from __future__ import annotations

import hashlib
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
from belle.perplexity import encode_text
from belle.records import read_json_object, write_text_atomic

logger = logging.getLogger(__name__)

PROMPT_TOKENS = 128  # prompt length of the speed measurement, cut from the start of the text
SPEED_RUNS = 3  # timings are medians of this many runs
MB = 2**20


def quantization_info(model_dir: str | Path) -> dict[str, Any] | None:
    """bits, group_size, desc_act, sym and method from config.json's `quantization_config`, or None
    for an unquantized model. The method is `belle.json`'s when it records one (GPTQModel writes
    `gptq` for round-to-nearest too). For a GGUF file: `{"method": "gguf", "type": "q4_0"}`."""
    if Path(model_dir).is_file():
        return {"method": "gguf", "type": gguf_info(model_dir).type}
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
    """`4-bit g128 gptq`, `3-bit per-channel rtn act-order`, `gguf q4_0`, or the dtype of an unquantized model."""
    info = quantization_info(model_dir)
    if info is not None and info["method"] == "gguf":
        return f"gguf {info['type']}"
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


@dataclass(frozen=True)
class GgufInfo:
    """What the header of a GGUF file says: `type` is llama.cpp's file type as `belle export gguf
    --type` names it (`q4_0`, `q4_k_m`, `f32`), `context_length` the model's training context."""

    type: str
    architecture: str
    context_length: int | None


def gguf_info(path: str | Path) -> GgufInfo:
    """Read `general.file_type`, `general.architecture` and `ARCH.context_length` from the header.
    Raises `UsageError` without the gguf package, `ValueError` for a file it cannot read."""
    from belle.llamacpp import read_gguf_fields

    fields = read_gguf_fields(path, ("general.file_type", "general.architecture", "{arch}.context_length"))
    import gguf  # read_gguf_fields has said how to install it if it is missing

    code = fields.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(code)).name if code is not None else "unknown"
    except ValueError:
        name = f"file type {code}"
    context = fields.get("{arch}.context_length")
    return GgufInfo(name.removeprefix("MOSTLY_").removeprefix("ALL_").lower(), str(fields.get("general.architecture") or ""),
                    int(context) if context is not None else None)


def model_bytes(path: str | Path) -> int:
    """The bytes of a model's weights: a GGUF file's size, a folder's weight files (`weights_bytes`)."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else weights_bytes(path)


# ---- one model, measured in its own process ----------------------------------------------------


@dataclass(frozen=True)
class MeasureSpec:
    """What the measuring process does. `text_file` holds the (already cut) text, UTF-8."""

    model: str  # a model folder or a GGUF file
    text_file: str
    seqlen: int
    stride: int | None
    gen_tokens: int
    device: str | None
    dtype: str
    trust_remote_code: bool


def measure(spec: MeasureSpec) -> dict[str, Any]:
    """Load one model, score the text and time generation; memory figures are this process's peaks.

    A GGUF file runs on the CPU through llama.cpp (`spec.device` and `spec.dtype` apply to model
    folders only). Returns perplexity (`nll` nats over `tokens_scored`), `text_tokens` and
    `text_ids_sha256` (the text as this model's tokenizer encodes it, to tell whether two models'
    perplexities compare), `load_s`, `perplexity_s`, the speed figures of `generation_speed`, and
    `peak_memory_mb` (what `memory` names) with `load_peak_memory_mb` (the same peak just after
    loading) and `baseline_memory_mb` (before); `runtime` says what ran it.
    """
    import torch

    from belle.generation import load_engine
    from belle.llamacpp import DEFAULT_CONTEXT, is_gguf, weight_repacking

    gguf = is_gguf(spec.model)
    if not gguf and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    baseline = _peak_memory_mb(False)
    started = time.perf_counter()
    if gguf:
        engine = load_engine(spec.model, context_length=spec.seqlen if spec.seqlen > DEFAULT_CONTEXT else None)  # windows fit
        cuda, device, dtype = False, "cpu", None
        runtime = {"runtime": "llama.cpp", "weight_repacking": weight_repacking()}
    else:
        engine = load_engine(spec.model, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code)
        cuda, device = engine.model.device.type == "cuda", str(engine.model.device)
        dtype = str(engine.model.dtype).removeprefix("torch.")
        runtime = {"runtime": "transformers", "torch_threads": torch.get_num_threads()}
    try:
        load_s = time.perf_counter() - started
        load_peak = _peak_memory_mb(cuda)
        ids = encode_text(engine.tokenizer, Path(spec.text_file).read_text(encoding="utf-8"))
        logger.info("%s loaded in %.1f s; scoring %d tokens in windows of %d", spec.model, load_s, len(ids), spec.seqlen)
        started = time.perf_counter()
        score = engine.score_text(ids, spec.seqlen, spec.stride)
        _synchronize(cuda)
        perplexity_s = time.perf_counter() - started
        logger.info("perplexity %.3f (%d windows, %.1f s)", score.perplexity, score.windows, perplexity_s)
        speed = {}
        if spec.gen_tokens:
            prompt = ids[: max(1, min(PROMPT_TOKENS, engine.context_length - spec.gen_tokens))]
            speed = generation_speed(engine, prompt, spec.gen_tokens, cuda=cuda)
    finally:
        engine.close()
    return {
        "perplexity": score.perplexity,
        "nll": score.nll,
        "tokens_scored": score.tokens,
        "windows": score.windows,
        "text_tokens": len(ids),
        "text_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "load_s": load_s,
        "perplexity_s": perplexity_s,
        **speed,
        "memory": "cuda max_memory_allocated" if cuda else "cpu peak RSS",
        "peak_memory_mb": _peak_memory_mb(cuda),
        "load_peak_memory_mb": load_peak,
        "baseline_memory_mb": 0.0 if cuda else baseline,
        "device": device,
        "torch_dtype": dtype,
        **runtime,
    }


def generation_speed(engine: Any, prompt_ids: list[int], gen_tokens: int, *, cuda: bool = False) -> dict[str, Any]:
    """Greedy generation of exactly `gen_tokens` tokens (EOS suppressed until then), batch 1, on
    any engine (`belle.generation.Engine`, `belle.llamacpp.GgufEngine`); `cuda`: the model is on a GPU.

    After a short warm-up, `prefill_s` is the time to the first token (a one-token generation:
    the prompt's forward pass) and `generate_s` that of all `gen_tokens`, each the median of
    `SPEED_RUNS` interleaved runs; `decode_tokens_per_s` = (gen_tokens - 1) / (generate_s -
    prefill_s), None when noise makes that difference negative; `tokens_per_s` = gen_tokens / generate_s.
    The one-token runs take `prompt_ids` and the full runs the same prompt with another first token,
    so that no run starts as the one before it did: llama.cpp keeps the last sequence's KV cache
    and would otherwise skip the prompt.
    """
    from belle.generation import GenerationParams

    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens)
    other = next((token for token in prompt_ids if token != prompt_ids[0]), None)
    variant = prompt_ids if other is None else [other, *prompt_ids[1:]]

    def timed(prompt: list[int], p: GenerationParams) -> tuple[float, int]:
        _synchronize(cuda)
        started = time.perf_counter()
        completion = engine.generate(prompt, p)
        _synchronize(cuda)
        return time.perf_counter() - started, completion.completion_tokens

    one_token = replace(params, max_new_tokens=1, min_new_tokens=1)
    short = min(gen_tokens, 4)
    timed(prompt_ids, one_token)
    timed(variant, replace(params, max_new_tokens=short, min_new_tokens=short))
    # Interleaved, so that a change in the machine's load affects both timings alike.
    prefills, runs = [], []
    for _ in range(SPEED_RUNS):
        prefills.append(timed(prompt_ids, one_token)[0])
        runs.append(timed(variant, params))
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


def _synchronize(cuda: bool) -> None:
    if cuda:
        import torch

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
    except (FileNotFoundError, ValueError, OSError, UsageError) as e:
        result_path.write_text(json.dumps({"error": str(e)}), encoding="utf-8")
        return 2
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---- the verb ------------------------------------------------------------------------------------


def eval_(
    *,
    model: list[Path],
    reference: Path | None = None,
    text: Path,
    seqlen: int = 2048,
    stride: int | None = None,
    max_chars: int | None = None,
    gen_tokens: int = 64,
    output: Path | None = None,
    load: LoadOptions = LoadOptions(),
) -> int:
    """Compare (quantized) models with their reference: perplexity, weight size, peak memory, tokens/s.

    Each model is loaded and measured in its own process, one after the other, so peak memory is
    per model. Perplexity runs over the whole text in windows of --seqlen tokens (see --stride);
    speed is greedy generation of --gen-tokens tokens after a prompt cut from the text. A GGUF
    file runs on the CPU through llama.cpp; --device and --dtype apply to model folders (--dtype to
    unquantized ones). Writes eval.json and eval.md (the table, also printed).

    Args:
        model: the models to evaluate, one or more: GPTQ folders from `belle gptq quantize`, model folders,
            or GGUF files from `belle export gguf`.
        reference: the model they were made from (a 16/32-bit folder), measured the same way, first.
        text: held-out UTF-8 text for perplexity (wikitext-2's test split, our own documents, ...).
        seqlen: tokens per perplexity window; capped at the models' context (max_position_embeddings).
        stride: tokens scored per window; below --seqlen the windows overlap and each token sees more context; default: --seqlen.
        max_chars: use only the first MAX_CHARS characters of the text.
        gen_tokens: tokens generated for the speed measurement (exactly that many: EOS is suppressed); 0 skips it.
        output: folder for eval.json and eval.md, or a file name ending in .json or .md (both are written beside
            each other); default: the first --model folder, or FILE.eval.json and .md beside a first --model FILE.gguf.
    """
    models = [("reference", reference)] if reference is not None else []
    models += [("model", path) for path in model]
    kinds = {path: _check_model(flag, path) for flag, path in models}
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
    context = min(_max_positions(path, kinds[path]) for _, path in models)
    window = min(seqlen, context)
    if window < seqlen:
        logger.info("--seqlen %d is longer than the models' %d positions; using %d", seqlen, context, window)
    if gen_tokens >= context:
        raise UsageError(f"--gen-tokens {gen_tokens} leaves no room for a prompt in the models' {context}-token context")
    _check_token_count([(flag, path) for flag, path in models if kinds[path] == "folder"], text_value,
                       load.trust_remote_code)
    files = _output_files(output if output is not None else _default_output(model[0]))

    rows = []
    with tempfile.TemporaryDirectory(prefix="belle-gptq-eval-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text_value, encoding="utf-8")
        for role, path in models:
            logger.info("measuring %s %s in a fresh process", role, path)
            spec = MeasureSpec(str(path), str(text_file), window, stride, gen_tokens, load.device, load.dtype,
                               load.trust_remote_code)
            rows.append({"role": role, "path": str(path), "format": kinds[path], "weights": describe_weights(path),
                         "quantization": quantization_info(path), "weights_bytes": model_bytes(path),
                         **measure_in_subprocess(spec)})
    _compare(rows)
    report = {
        "text": {"path": str(text), "chars": len(text_value), "tokens": rows[0]["text_tokens"]},
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


def _check_model(flag: str, path: Path) -> str:
    """"gguf" for a GGUF file, "folder" for a model folder with weights; else a `UsageError`."""
    from belle.llamacpp import is_gguf

    if path.is_file() or path.suffix.lower() == ".gguf":
        if not path.exists():
            raise UsageError(f"--{flag} {path}: no such file")
        if not path.is_file():
            raise UsageError(f"--{flag} {path}: a folder, not a GGUF file")
        if not is_gguf(path):
            raise UsageError(f"--{flag} {path}: not a GGUF file (it does not start with the GGUF magic bytes)"
                             if path.suffix.lower() == ".gguf" else
                             f"--{flag} {path}: a file that is not GGUF; name a model folder or a GGUF file")
        try:
            gguf_info(path)
        except ValueError as e:
            raise UsageError(f"--{flag} {e}") from None
        return "gguf"
    if not path.is_dir():
        raise UsageError(f"--{flag} {path}: no such folder")
    if not (path / "config.json").is_file():
        raise UsageError(f"--{flag} {path}: not a model folder (no config.json)")
    if not weights_bytes(path):
        raise UsageError(f"--{flag} {path}: no weight files (*.safetensors, *.bin)")
    return "folder"


def _default_output(first: Path) -> Path:
    """The first model's folder, or `NAME.eval.json` beside a GGUF file `NAME.gguf`."""
    return first.with_name(first.stem + ".eval.json") if first.is_file() else first


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


def _max_positions(path: Path, kind: str) -> int:
    if kind == "gguf":
        return gguf_info(path).context_length or 2048
    config = _read_json(path / "config.json")
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)


def _check_token_count(models: list[tuple[str, Path]], text: str, trust_remote_code: bool) -> None:
    """Perplexity needs at least 2 tokens: checked with each model folder's tokenizer before any is
    measured (a GGUF file's tokenizer is llama.cpp's: its process checks it)."""
    from belle.modeling import load_tokenizer

    for role, folder in models:
        try:
            tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UsageError(f"--{role} {folder}: cannot load its tokenizer: {e}") from None
        count = len(encode_text(tokenizer, text))
        if count < 2:
            raise UsageError(f"the text is {count} token(s) long; perplexity needs at least 2")


def _output_files(output: Path) -> tuple[Path, Path]:
    """(json, md): OUTPUT/eval.json and OUTPUT/eval.md, or OUTPUT with .json and .md when it names a file."""
    if output.suffix in (".json", ".md"):
        return output.with_suffix(".json"), output.with_suffix(".md")
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: a file; name a folder, or a file ending in .json or .md")
    return output / "eval.json", output / "eval.md"


def _compare(rows: list[dict[str, Any]]) -> None:
    """Add each row's size ratio and perplexity change relative to the reference row (the first),
    and `same_tokens`: whether its tokenizer encodes the text as the first row's does. Perplexities
    per token of different tokenizations do not compare: such a row gets no perplexity change."""
    first = rows[0]
    reference = first if first["role"] == "reference" else None
    for row in rows:
        row["same_tokens"] = row["text_ids_sha256"] == first["text_ids_sha256"]
        if not row["same_tokens"]:
            logger.warning("%s tokenizes the text differently from %s (%d tokens against %d): their perplexities "
                           "are not comparable", row["path"], first["path"], row["text_tokens"], first["text_tokens"])
        row["size_ratio"] = row["weights_bytes"] / reference["weights_bytes"] if reference else None
        row["perplexity_change"] = row["perplexity_change_pct"] = None
        if reference is not None and row["same_tokens"]:
            row["perplexity_change"] = row["perplexity"] - reference["perplexity"]
            row["perplexity_change_pct"] = 100 * row["perplexity_change"] / reference["perplexity"]


def render_markdown(report: dict[str, Any]) -> str:
    """The side-by-side table with a line on what was measured."""
    text, settings, rows = report["text"], report["settings"], report["models"]
    header = ["model", "path", "weights", "runs on", "weights MB", "size vs ref", "perplexity", "change vs ref",
              "peak memory MB", "prompt ms", "tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        change = ""
        if not row["same_tokens"]:
            change = "not comparable: other tokens"
        elif row["perplexity_change"] is not None and row["role"] != "reference":
            change = f"{row['perplexity_change']:+.3f} ({row['perplexity_change_pct']:+.2f}%)"
        cells = [
            row["role"],
            f"`{row['path']}`",
            row["weights"],
            f"{row['device']}, {row['runtime']}",
            f"{row['weights_bytes'] / MB:.2f}",
            "" if row["size_ratio"] is None else f"{row['size_ratio']:.2f}x",
            f"{row['perplexity']:.3f}",
            change,
            f"{row['peak_memory_mb']:.0f}",
            _number(row.get("prefill_s"), 1000, ".1f"),
            _number(row.get("decode_tokens_per_s"), 1, ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Perplexity on `{text['path']}` ({text['chars']:,} characters, {text['tokens']:,} tokens): windows of "
        f"{settings['seqlen']} tokens, {settings['stride']} scored per window.",
    ]
    for memory in dict.fromkeys(row["memory"] for row in rows):
        notes.append(f"Peak memory: {memory}" + (
            " of the measuring process (Python, torch and transformers included; for a GGUF file, the pages of "
            "the mapped file llama.cpp touched)." if memory.startswith("cpu") else ", weights and activations."))
    if settings["gen_tokens"]:
        notes.append(f"Speed: greedy, batch 1, a {settings['prompt_tokens']}-token prompt (prompt ms: time to the "
                     f"first token), then {settings['gen_tokens']} tokens (tokens/s: decoding).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _number(value: float | None, scale: float, spec: str) -> str:
    return "" if value is None else format(value * scale, spec)


if __name__ == "__main__":
    from belle.gptq import evaluate  # this module under its own name, for its logger's

    raise SystemExit(evaluate._child_main(sys.argv[1:]))
