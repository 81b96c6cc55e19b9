"""`belle data stats`, `dedup` and `filter`: look at a dataset and clean it the way BELLE cleaned its 1M set.

All three read every format `belle data convert` reads. `dedup` and `filter` write the records they
keep unchanged (an Alpaca record stays an Alpaca record) as JSON lines, list every removed record
with its reason in `OUTPUT.removed.jsonl`, and print counts per reason; records that cannot be read
at all are listed in `OUTPUT.rejected.txt`, as `convert` does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from tqdm import tqdm

from belle.cli import UsageError
from belle.conversation import record_to_messages
from belle.records import (
    Rejection,
    RejectReport,
    as_source_list,
    atomic_output,
    iter_source_records,
    report_rejects,
    write_text_atomic,
)

TextOf = Literal["prompt", "conversation"]


def _read(inputs: list[str], report: RejectReport) -> Iterator[tuple[str, Any, list[dict[str, str]]]]:
    """Yield `(location, raw record, messages)` for every readable record; the rest go to `report`."""
    for source in as_source_list(inputs):
        for location, _, record in iter_source_records(source):
            try:
                if isinstance(record, Rejection):
                    raise record
                yield location, record, record_to_messages(record)
            except Rejection as rejection:
                report.add(location, rejection)


def _text(messages: list[dict[str, str]], roles: tuple[str, ...]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] in roles)


def _prompt(messages: list[dict[str, str]]) -> str:
    return _text(messages, ("user",))


def _answer(messages: list[dict[str, str]]) -> str:
    return _text(messages, ("assistant",))


def stats(
    input: list[str],
    *,
    output: Path | None = None,
    model: Path | None = None,
    bins: int = 50,
) -> int:
    """Count records, turns, lengths, categories and languages; plot the length histogram.

    Args:
        input: files or folders (.json/.jsonl) or saved datasets, any format `convert` reads.
        output: JSON file for the figures (a PNG histogram goes beside it); default INPUT.stats.json.
        model: model folder whose tokenizer measures lengths in tokens; default: characters.
        bins: bars in the histogram.
    """
    from belle.data.filters import language

    if bins < 1:
        raise UsageError(f"--bins must be at least 1, not {bins}")
    output = output or Path(str(input[0]).rstrip("/") + ".stats.json")
    tokenizer = None
    if model:
        from belle.modeling import load_tokenizer

        tokenizer = load_tokenizer(model)
    report = RejectReport()
    turns, lengths, categories = Counter(), [], Counter()
    languages = {"prompt": Counter(), "answer": Counter()}
    batch: list[str] = []

    def measure() -> None:
        if tokenizer:
            lengths.extend(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
        else:
            lengths.extend(len(text) for text in batch)
        batch.clear()

    for _, record, messages in tqdm(_read(input, report), desc="reading", unit="record", dynamic_ncols=True):
        turns[sum(m["role"] == "user" for m in messages)] += 1
        categories[str(record.get("category") or record.get("class") or "none")] += 1
        languages["prompt"][language(_prompt(messages))] += 1
        languages["answer"][language(_answer(messages))] += 1
        batch.append(_text(messages, ("system", "user", "assistant")))
        if len(batch) == 1000:
            measure()
    measure()
    if not lengths:
        raise UsageError(f"no readable records in {', '.join(input)}; {report.summary()}")
    unit = "tokens" if tokenizer else "characters"
    array = np.array(lengths)
    figures = {
        "records": len(lengths),
        "rejected": dict(report.counts),
        "turns": {str(k): n for k, n in sorted(turns.items())},
        "length_unit": unit,
        "length": {
            "mean": round(float(array.mean()), 1), "p50": int(np.percentile(array, 50)),
            "p90": int(np.percentile(array, 90)), "p99": int(np.percentile(array, 99)),
            "max": int(array.max()), "total": int(array.sum()),
        },
        "categories": dict(categories.most_common()),
        "languages": {side: dict(counts.most_common()) for side, counts in languages.items()},
    }
    write_text_atomic(output, json.dumps(figures, ensure_ascii=False, indent=2) + "\n")
    plot = output.with_suffix(".png")
    _histogram(array, unit, bins, plot, title=", ".join(map(str, input)))
    print(_stats_summary(figures))
    print(f"wrote {output} and {plot}")
    return 0


def _histogram(lengths: np.ndarray, unit: str, bins: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(lengths, bins=bins, color="#4c72b0")
    ax.axvline(np.percentile(lengths, 90), color="#c44e52", linestyle="--", label="p90")
    ax.set_xlabel(f"record length ({unit})")
    ax.set_ylabel("records")
    ax.set_title(title[:80])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _stats_summary(figures: dict[str, Any]) -> str:
    length = figures["length"]
    share = lambda counts: ", ".join(f"{k} {n / figures['records']:.1%}" for k, n in counts.items())  # noqa: E731
    rejected = sum(figures["rejected"].values())
    return "\n".join([
        f"records:    {figures['records']}" + (f" ({rejected} unreadable)" if rejected else ""),
        "user turns: " + ", ".join(f"{k}: {n}" for k, n in figures["turns"].items()),
        f"length ({figures['length_unit']}): mean {length['mean']}, p50 {length['p50']}, p90 {length['p90']}, "
        f"p99 {length['p99']}, max {length['max']}, total {length['total']:,}",
        "categories: " + share(figures["categories"]),
        "prompt languages: " + share(figures["languages"]["prompt"]),
        "answer languages: " + share(figures["languages"]["answer"]),
    ])


def dedup(
    *,
    input: list[str],
    output: Path,
    on: TextOf = "prompt",
    threshold: float = 0.7,
    exact_only: bool = False,
) -> int:
    """Remove exact and near-duplicate records (character-level, works for Chinese), keeping the first of each group.

    Exact duplicates have the same text once whitespace, punctuation, width and case are set aside;
    near duplicates are found with MinHash LSH and confirmed by character-level ROUGE-L.

    Args:
        input: files or folders (.json/.jsonl) or saved datasets.
        output: JSON-lines file of the records kept, unchanged.
        on: compare the user turns (prompt) or the whole conversation.
        threshold: character-level ROUGE-L above which two records are near duplicates.
        exact_only: remove exact duplicates only.
    """
    from belle.data.similarity import find_duplicates

    if not 0 < threshold <= 1:
        raise UsageError(f"--threshold must be in (0, 1], not {threshold}")
    pick = _prompt if on == "prompt" else (lambda messages: _text(messages, ("system", "user", "assistant")))
    report = RejectReport()
    locations, texts = [], []
    for location, _, messages in tqdm(_read(input, report), desc="reading", unit="record", dynamic_ncols=True):
        locations.append(location)
        texts.append(pick(messages))
    duplicates = find_duplicates(texts, threshold=1.0 if exact_only else threshold)
    del texts
    removed = Counter()
    with atomic_output(output) as kept, atomic_output(_removed_path(output)) as listing:
        records = (record for _, record, _ in _read(input, RejectReport(keep_lines=False)))
        for location, record, duplicate in zip(locations, records, duplicates):
            if duplicate is None:
                kept.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            earlier, score = duplicate
            reason = "exact duplicate" if score >= 1.0 else "near duplicate"
            removed[reason] += 1
            listing.write(json.dumps({"location": location, "reason": reason, "duplicate_of": locations[earlier],
                                      "similarity": round(score, 4)}, ensure_ascii=False) + "\n")
    _finish(output, len(locations), removed, report)
    return 0


def filter(
    *,
    input: list[str],
    output: Path,
    language: Literal["zh", "en", "any"] = "any",
    min_chars: int = 1,
    max_chars: int | None = None,
    blacklist: bool = True,
    gpt_identity: bool = True,
    zh_en_mismatch: bool = True,
) -> int:
    """Keep the records that pass BELLE-style quality rules; list the others with their reason.

    Args:
        input: files or folders (.json/.jsonl) or saved datasets.
        output: JSON-lines file of the records kept, unchanged.
        language: keep prompts in this language only (zh, en; mixed Chinese-English counts for both).
        min_chars: drop records whose answers are shorter than this, in characters.
        max_chars: drop records longer than this (all turns), in characters.
        blacklist: drop prompts that need images, files, charts or links, or name OpenAI/ChatGPT/GPT.
        gpt_identity: drop records whose answers call the model a GPT model or OpenAI's.
        zh_en_mismatch: drop Chinese prompts answered in English (translation tasks excepted).
    """
    from belle.data import filters

    if min_chars < 0 or (max_chars is not None and max_chars < 1):
        raise UsageError("--min-chars must be at least 0 and --max-chars at least 1")
    def rejection(messages: list[dict[str, str]]) -> str | None:
        prompt, answer = _prompt(messages), _answer(messages)
        if language != "any" and filters.language(prompt) not in (language, "mixed"):
            return f"language not {language}"
        if len(answer.strip()) < min_chars:
            return "answer too short"
        if max_chars and len(prompt) + len(answer) > max_chars:
            return "too long"
        if blacklist and filters.blacklisted(prompt):
            return "blacklist"
        if gpt_identity and filters.claims_gpt_identity(answer):
            return "gpt identity"
        if zh_en_mismatch and filters.zh_prompt_en_answer(prompt, answer):
            return "chinese prompt, english answer"
        return None

    report = RejectReport()
    removed = Counter()
    total = 0
    with atomic_output(output) as kept, atomic_output(_removed_path(output)) as listing:
        for location, record, messages in tqdm(_read(input, report), desc="filtering", unit="record", dynamic_ncols=True):
            total += 1
            reason = rejection(messages)
            if reason is None:
                kept.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            removed[reason] += 1
            listing.write(json.dumps({"location": location, "reason": reason}, ensure_ascii=False) + "\n")
    _finish(output, total, removed, report)
    return 0


def _removed_path(output: Path) -> Path:
    return output.with_name(output.name + ".removed.jsonl")


def _finish(output: Path, total: int, removed: Counter, report: RejectReport) -> None:
    report_rejects(report.lines, output)
    parts = "".join(f", {reason} {n}" for reason, n in removed.most_common())
    print(f"read {total} records; kept {total - sum(removed.values())} in {output}; removed {sum(removed.values())}{parts}")
    if removed:
        print(f"every removed record and its reason: {_removed_path(output)}")
    if report.total:
        print(report.summary())
