"""The data pipeline on `datasets`: sources -> Arrow conversations -> encoded samples -> packed rows.

Every stage is an Arrow table on disk, cached by `datasets` (a re-run with the same inputs and
settings reuses it), and memory stays flat however many records there are. Rejected records stay
in the conversation table with their reason and `file:line`, so the counts survive the cache.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from belle.conversation import Conversation, Format, Policy, iter_parsed
from belle.records import DataError, as_source_list, is_saved_dataset, list_data_files
from belle.templates import Template
from belle.tokenization import Overlong, encode_columns, encode_document_columns, pack_columns


@dataclass
class TokenizeStats:
    """What happened to every record, for the console and `*.stats.json`."""

    records: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_length: int | None = None
    rows: int | None = None
    packing_efficiency: float | None = None
    notes: list[str] = field(default_factory=list)
    """One sentence per choice made for the user, e.g. documents left unpacked for an architecture that cannot pack."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"records read:   {self.records}",
            f"rejected:       {sum(self.rejected.values())}" + _reasons(self.rejected),
            f"dropped:        {sum(self.dropped.values())}" + _reasons(self.dropped),
            f"samples kept:   {self.samples}",
            f"tokens:         {self.tokens} ({self.trained_tokens} trained)",
        ]
        if self.rows is not None:
            lines.append(f"packed rows:    {self.rows} of {self.max_length} tokens")
            lines.append(f"packing efficiency: {self.packing_efficiency:.1%} of slots hold a sample's token")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _features(packed: bool) -> Any:
    """Columns of encoded samples or packed rows; token ids, labels and positions fit in int32,
    half the bytes of the int64 `datasets` would infer."""
    from datasets import Features, List, Value

    ints = List(Value("int32"))
    if packed:
        return Features({"ids": List(Value("string")), "input_ids": ints, "labels": ints, "position_ids": ints})
    return Features({"id": Value("string"), "input_ids": ints, "labels": ints, "drop": Value("string")})


def _reasons(counts: dict[str, int]) -> str:
    return " (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")" if counts else ""


def _conversation_rows(sources: list[Any], format: Format | None, policy: Policy, stamps: list[Any]) -> Iterator[dict[str, Any]]:
    """Rows for `Dataset.from_generator`; `stamps` only makes the cache key change with the files."""
    for location, item in iter_parsed(sources, format):
        if isinstance(item, Conversation):
            yield {"id": item.id, "messages": item.messages, "reject": "", "location": location}
        elif policy == "strict":
            raise DataError(item.at(location))
        else:
            yield {"id": "", "messages": [], "reject": item.reason, "location": item.at(location)}


def load_conversations(sources: Any, format: Format | None = None, policy: Policy = "skip") -> Any:
    """Read sources (paths, folders, `datasets` datasets, or saved dataset folders) into one Arrow
    dataset with columns `id`, `messages`, `reject` (empty when kept) and `location`."""
    from datasets import Dataset, Features, Value, load_from_disk

    resolved, stamps = [], []
    for source in as_source_list(sources):
        if is_saved_dataset(source):
            source = load_from_disk(str(source))
        if isinstance(source, (str, Path)):
            files = list_data_files(source)
            resolved.append(str(source))  # a folder stays one source: the reader skips a bad file in it
            stamps += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        else:
            resolved.append(source)
            stamps.append(getattr(source, "_fingerprint", None))
    features = Features({
        "id": Value("string"),
        "messages": [{"role": Value("string"), "content": Value("string")}],
        "reject": Value("string"),
        "location": Value("string"),
    })
    gen_kwargs = {"sources": resolved, "format": format, "policy": policy, "stamps": tuple(stamps)}
    try:
        return Dataset.from_generator(_conversation_rows, features=features, gen_kwargs=gen_kwargs)
    except Exception as e:  # datasets wraps errors raised in the generator
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        if next(_conversation_rows(**gen_kwargs), None) is None:  # datasets cannot build a table of no rows
            return _empty(features)
        raise


def _empty(features: Any) -> Any:
    """A dataset of no rows with these columns."""
    from datasets import Dataset

    return Dataset.from_dict({name: [] for name in features}, features=features)


def rejected_lines(conversations: Any) -> list[str]:
    """`file:line: reason: detail` for every rejected record, in input order."""
    return list(conversations.filter(lambda r: r != "", input_columns="reject").with_format(None)["location"])


def tokenize_dataset(
    conversations: Any,
    tokenizer: Any,
    template: Template,
    max_length: int | None = None,
    overlong: Overlong = "truncate",
    pack: bool = False,
    num_proc: int | None = None,
    batch_size: int = 1000,
    pack_window: int = 20_000,
    documents: bool = False,
) -> tuple[Any, TokenizeStats]:
    """Encode (and optionally pack) the kept conversations; returns the dataset and its stats.

    Unpacked rows have `id`, `input_ids`, `labels`; packed rows have `ids`, `input_ids`, `labels` and
    `position_ids`. Best-fit packing works within windows of `pack_window` samples. With `documents`
    (continued pretraining), each record is one text, trained on every token, and chunked to
    `max_length`; the chunks are packed when `pack` is set, else each is one unpacked sample.
    """
    if (pack or documents) and not max_length:
        raise ValueError("packing and documents need max_length")
    encoder, encoder_kwargs = (
        (encode_document_columns, {"tokenizer": tokenizer, "max_length": max_length})
        if documents
        else (encode_columns, {"tokenizer": tokenizer, "template": template, "max_length": max_length, "overlong": overlong})
    )
    stats = TokenizeStats(records=len(conversations), max_length=max_length)
    stats.rejected = _value_counts(conversations, "reject")
    kept = conversations.filter(lambda r: [x == "" for x in r], input_columns="reject", batched=True)
    # `map` returns a dataset of no rows unchanged, without the new columns.
    encoded = kept.map(
        encoder,
        batched=True,
        batch_size=batch_size,
        num_proc=_workers(num_proc, len(kept), batch_size),
        remove_columns=kept.column_names,
        features=_features(packed=False),
        fn_kwargs=encoder_kwargs,
        desc="encoding",
    ) if len(kept) else _empty(_features(packed=False))
    stats.dropped = _value_counts(encoded, "drop")
    samples = encoded.filter(lambda d: [x == "" for x in d], input_columns="drop", batched=True).remove_columns("drop")
    stats.samples = len(samples)
    if pack:
        samples = samples.map(
            pack_columns,
            batched=True,
            batch_size=pack_window,
            num_proc=_workers(num_proc, len(samples), pack_window),
            remove_columns=samples.column_names,
            features=_features(packed=True),
            fn_kwargs={"max_length": max_length},
            desc="packing",
        ) if len(samples) else _empty(_features(packed=True))
        stats.rows = len(samples)
    stats.tokens, stats.trained_tokens = _token_counts(samples)
    if pack:
        stats.packing_efficiency = stats.tokens / (stats.rows * max_length) if stats.rows else 0.0
    return samples, stats


def _workers(num_proc: int | None, rows: int, rows_per_batch: int) -> int | None:
    """Processes for a batched `map` over `rows` rows: no more than it has batches (each process
    packs only the samples it holds, so splitting one packing window would leave rows half empty),
    nor than the CPUs this process may use."""
    from belle.hardware import usable_cpus

    if not num_proc:
        return None
    workers = min(num_proc, -(-rows // rows_per_batch), usable_cpus())
    return workers if workers > 1 else None


def _arrow_batches(dataset: Any, batch_size: int = 10_000) -> Iterator[Any]:
    """The rows as Arrow record batches (honouring any filter's index mapping)."""
    return dataset.with_format("arrow").iter(batch_size=batch_size) if len(dataset) else iter(())


def _value_counts(dataset: Any, column: str) -> dict[str, int]:
    """How often each non-empty value of a string column occurs, most common first."""
    import pyarrow.compute as pc

    counts: Counter[str] = Counter()
    for batch in _arrow_batches(dataset):
        for item in pc.value_counts(batch[column]).to_pylist():
            if item["values"]:
                counts[item["values"]] += item["counts"]
    return dict(counts.most_common())


def _token_counts(dataset: Any) -> tuple[int, int]:
    """(all tokens, trained tokens), counted in Arrow without building Python lists."""
    import pyarrow.compute as pc

    tokens = trained = 0
    for batch in _arrow_batches(dataset):
        tokens += pc.sum(pc.list_value_length(batch["input_ids"])).as_py() or 0
        trained += pc.sum(pc.not_equal(pc.list_flatten(batch["labels"]), -100).cast("int64")).as_py() or 0
    return tokens, trained
