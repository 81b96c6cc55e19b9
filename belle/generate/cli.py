"""`belle generate` (also `python -m belle.generate`): batch inference over a prompts file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from belle.cli import UsageError, run_command
from belle.data.progress import write_report
from belle.generate.inputs import read_prompts
from belle.generate.run import Decoding, RunResult, generate_locally, generate_remotely, pending_items
from belle.generation import EngineOptions, LoadOptions
from belle.llm import LLMFatalError, LLMOptions, resume_message
from belle.records import jsonl

SHOWN_SKIPS = 10


def generate(
    *,
    model: str,
    input: Path,
    output: Path,
    api_base: str | None = None,
    api_key_env: str = "BELLE_API_KEY",
    concurrency: int = 8,
    cache: str = "default",
    batch_size: int = 8,
    system: str = "",
    decoding: Decoding = Decoding(),
    engine: EngineOptions = EngineOptions(),
    load: LoadOptions = LoadOptions(),
) -> int:
    """Answer every prompt of a JSON-lines file with a model: BELLE's batch inference (inference.py --infer_file).

    An input line is {"text"} (an instruction, rendered with the model's template, as BELLE's infer
    file), {"prompt"} (raw text given to the model as it is, with NO template), or a conversation in
    any format belle reads ("messages", "conversations", Alpaca "instruction"); a conversation ending
    in an assistant turn is answered from the history before it. "id" is optional (default: the
    line number). OUTPUT gets the input line plus "reply", "finish_reason", "prompt_tokens",
    "completion_tokens" and "model", one flushed line per reply; a re-run skips the ids already
    there, so a killed run resumes with nothing lost or doubled. OUTPUT.stats.json and
    OUTPUT.summary.md sum up all runs. Exit status 1 when a prompt was skipped (too long for the
    context, or a request that failed for good); a re-run tries it again.

    Args:
        model: model folder, LoRA adapter folder, GPTQ folder or .gguf file; with --api-base, the name the server serves.
        input: prompts, one JSON object per line (or a JSON array).
        output: JSON-lines file to append the replies to.
        api_base: run through an OpenAI-compatible server instead (vLLM, `belle serve`), e.g. http://127.0.0.1:8000/v1.
        api_key_env: the environment variable holding that server's API key (none needed for a local server).
        concurrency: requests in flight at once through --api-base.
        cache: with --api-base, the SQLite file of earlier replies (a re-run asks nothing twice); `off` for none;
            default $XDG_CACHE_HOME/belle/llm.sqlite.
        batch_size: replies a local model decodes together (prompts sorted by length; a finished reply's place goes to the next).
        system: system prompt for every prompt that is not raw and has none.
    """
    if batch_size < 1 or concurrency < 1:
        raise UsageError(f"--batch-size and --concurrency must be at least 1, not {batch_size} and {concurrency}")
    if output.exists() and input.exists() and output.resolve() == input.resolve():
        raise UsageError(f"--output {output} is the input file; name another file for the replies")
    items = read_prompts(input, system)
    pending, done = pending_items(items, output)
    if not pending:
        print(f"all {len(items)} prompts are already answered in {output}")
        return _report(input, output, model, done, RunResult())
    print(f"answering {len(pending)} prompts ({len(items) - len(pending)} already in {output})")
    with tqdm(total=len(pending), desc="generating", unit="prompt", dynamic_ncols=True) as bar:
        if api_base:
            options = LLMOptions(model=model, base_url=api_base, api_key_env=api_key_env, concurrency=concurrency,
                                 cache=cache)
            try:
                result = generate_remotely(options, pending, output, decoding, on_item=bar.update)
            except LLMFatalError as e:
                raise UsageError(resume_message(e, "the replies so far", output)) from None
        else:
            from belle.chat.engines import load_engines

            (local,) = load_engines([model], **asdict(engine), **asdict(load)).values()
            try:
                params = decoding.params(local.default_params)
                result = generate_locally(local, pending, output, params, batch_size=batch_size, on_item=bar.update)
            finally:
                local.close()
    return _report(input, output, model, done, result)


def _report(input: Path, output: Path, model: str, earlier: list[dict[str, Any]], run: RunResult) -> int:
    """Print the summary line, write OUTPUT.stats.json and OUTPUT.summary.md; the exit status."""
    everything = jsonl.resume_records(output) if output.exists() else earlier
    finish = {}
    for record in everything:
        reason = str(record.get("finish_reason"))
        finish[reason] = finish.get(reason, 0) + 1
    rate = run.completion_tokens / run.seconds if run.seconds else 0.0
    stats = {
        "input": str(input), "output": str(output), "model": model,
        "replies": len(everything), "finish_reasons": finish,
        "tokens": {"prompt": sum(_int(r.get("prompt_tokens")) for r in everything),
                   "completion": sum(_int(r.get("completion_tokens")) for r in everything)},
        "this_run": {"replies": run.written, "skipped": len(run.skipped), "seconds": round(run.seconds, 3),
                     "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
                     "completion_tokens_per_s": round(rate, 2), "finish_reasons": dict(run.finish_reasons),
                     "skipped_ids": dict(list(run.skipped.items())[:100])},
    }
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(run.finish_reasons.items())) or "none"
    lines = [f"- wrote {run.written} replies to {output} in {run.seconds:.1f} s: {run.completion_tokens:,} tokens "
             f"generated, {rate:.1f} tokens/s; finish: {reasons}",
             f"- {output} holds {len(everything)} replies in all ({stats['tokens']['completion']:,} tokens generated)"]
    if run.skipped:
        lines.append(f"- skipped {len(run.skipped)} prompts; a re-run tries them again:")
        lines += [f"  - {item_id}: {why}" for item_id, why in list(run.skipped.items())[:SHOWN_SKIPS]]
    write_report(output, stats, lines)
    return 1 if run.skipped else 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


COMMAND = generate


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.generate") -> int:
    return run_command(COMMAND, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
