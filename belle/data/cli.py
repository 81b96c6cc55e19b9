"""`belle data`: convert and tokenize (see exactly what a model will be trained on), generate and
chat (make data with an LLM), stats, dedup and filter (look at it and clean it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from belle.cli import UsageError, run_verbs
from belle.conversation import WRITERS, Format, read_conversations
from belle.data.dialogue import chat
from belle.data.generate import generate
from belle.data.tools import dedup, filter, stats
from belle.records import RejectReport, atomic_output, report_rejects, write_text_atomic
from belle.tokenization import Overlong


def convert(
    *,
    input: list[str],
    output: Path,
    from_: Format | None = None,
    to: str = "belle",
    strict: bool = False,
) -> int:
    """Convert conversation files of any supported format to BELLE's format or to messages JSONL.

    Args:
        input: files or folders (.json/.jsonl, JSON lines or a JSON array) or saved datasets.
        output: JSON-lines file to write.
        from_: force the input format instead of detecting it per record.
        to: output format: belle ({"id", "conversations": [{"from", "value"}]}) or messages.
        strict: stop at the first bad record instead of skipping and counting.
    """
    if to not in WRITERS:
        raise UsageError(f"--to must be one of {', '.join(WRITERS)}")
    write = WRITERS[to]
    report = RejectReport()
    written = 0
    with atomic_output(output) as f:
        for conversation in read_conversations(input, from_, "strict" if strict else "skip", report):
            f.write(json.dumps(write(conversation), ensure_ascii=False) + "\n")
            written += 1
    report_rejects(report.lines, output)
    print(f"wrote {written} conversations to {output}; {report.summary()}")
    return 0


def tokenize(
    *,
    model: Path,
    input: list[str],
    output: Path,
    template: str | None = None,
    max_length: int | None = None,
    overlong: Overlong = "truncate",
    pack: bool = False,
    from_: Format | None = None,
    strict: bool = False,
    num_proc: int | None = None,
) -> int:
    """Encode conversations as the trainer sees them: input_ids, and labels that are -100 off assistant turns.

    Writes one JSON object per sample ({"id", "input_ids", "labels"}) or, with --pack, per packed
    row ({"ids", "input_ids", "labels", "position_ids"}), then prints counts, dropped samples per
    reason and the packing efficiency; the same figures go to OUTPUT.stats.json.

    Args:
        model: model folder whose tokenizer (and belle.json template) to use.
        input: files or folders (.json/.jsonl) or saved datasets.
        output: JSON-lines file to write.
        template: prompt template (belle, chatml, qwen, llama2, llama3, raw, model); default: the model's belle.json.
        max_length: longest sample or packed row, in tokens.
        overlong: what to do with a longer sample: truncate at a turn boundary, or drop it.
        pack: pack whole samples into rows of max_length tokens (best fit), positions restarting per sample;
            refused for a model whose architecture cannot keep packed samples apart (BLOOM).
        from_: force the input format instead of detecting it per record.
        strict: stop at the first bad record instead of skipping and counting.
        num_proc: worker processes for encoding (datasets.map).
    """
    from belle.dataset import load_conversations, rejected_lines, tokenize_dataset
    from belle.modeling import load_tokenizer, resolve_template

    if pack and max_length is None:
        raise UsageError("--pack needs --max-length")
    if (max_length is not None and max_length < 1) or (num_proc is not None and num_proc < 1):
        raise UsageError("--max-length and --num-proc must be at least 1")
    if not Path(model).is_dir():
        raise UsageError(f"--model {model}: no such folder")
    if pack:
        from belle.train.packing import pack_refusal

        refusal = pack_refusal(model)
        if refusal:
            raise UsageError(f"--pack: {refusal}; leave out --pack to write each sample as its own row")
    tokenizer = load_tokenizer(model)
    try:
        chosen = resolve_template(model, tokenizer, template)
    except ValueError as e:  # an unknown template name
        raise UsageError(str(e)) from None
    conversations = load_conversations(input, from_, "strict" if strict else "skip")
    samples, stats = tokenize_dataset(conversations, tokenizer, chosen, max_length, overlong, pack, num_proc)
    columns = ["ids", "input_ids", "labels", "position_ids"] if pack else ["id", "input_ids", "labels"]
    with atomic_output(output) as f:
        for batch in samples.select_columns(columns).iter(batch_size=1000):
            for row in zip(*(batch[c] for c in columns)):
                f.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + "\n")
    report_rejects(rejected_lines(conversations) if stats.rejected else [], output)
    stats_path = output.with_name(output.name + ".stats.json")
    write_text_atomic(stats_path, json.dumps({"template": chosen.name, **stats.to_dict()}, indent=2))
    print(stats.summary())
    print(f"wrote {output} and {stats_path.name}")
    return 0


VERBS = [convert, tokenize, generate, chat, stats, dedup, filter]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.data") -> int:
    return run_verbs(VERBS, argv, prog)
