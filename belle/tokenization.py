"""Conversations -> (input_ids, labels) with loss masks, best-fit packing, and batch collation.

Labels are `IGNORE_INDEX` everywhere except the tokens of assistant turns and the end token after
each of them (all assistant turns of a multi-turn conversation are trained). Each template piece is
tokenized on its own, without special tokens, in one batched fast-tokenizer call per batch of
conversations. A sample that is too long is cut at a turn boundary or dropped; a sample with no
trained token is dropped; either way the reason is recorded, never patched over.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from belle.templates import Template, render_pieces

IGNORE_INDEX = -100
Overlong = Literal["truncate", "drop"]

DROP_TOO_LONG = "longer than max_length"
DROP_NO_TRAINED = "no trained token"


@dataclass(frozen=True)
class Encoded:
    """One encoded sample; `drop` is empty when kept, else the reason it was dropped."""

    input_ids: list[int]
    labels: list[int]
    drop: str = ""


def encode_batch(
    batch_messages: Sequence[list[dict[str, str]]],
    tokenizer: Any,
    template: Template,
    max_length: int | None = None,
    overlong: Overlong = "truncate",
) -> list[Encoded]:
    """Encode conversations with one batched tokenizer call over all their pieces (without the
    tokenizer's warning about pieces over its `model_max_length`: `max_length` decides here)."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    rendered = [render_pieces(template, messages, False, bos, eos) for messages in batch_messages]
    texts = [text for pieces in rendered for text, _ in pieces]
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"] if texts else []
    out, cursor = [], 0
    for pieces in rendered:
        encoded = _assemble(pieces, ids[cursor : cursor + len(pieces)], max_length, overlong)
        cursor += len(pieces)
        out.append(encoded)
    return out


def encode_prompt(messages: list[dict[str, str]], tokenizer: Any, template: Template) -> list[int]:
    """Token ids of a history ending in a user turn, with the reply header, ready for `generate`.

    Tokenized piece by piece exactly as in training, so the prompt is a token-for-token prefix of
    the training encoding of the same history plus a reply.
    """
    pieces = render_pieces(template, messages, True, tokenizer.bos_token or "", tokenizer.eos_token or "")
    ids = tokenizer([text for text, _ in pieces], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [token for piece in ids for token in piece]


def _assemble(pieces: list[tuple[str, bool]], piece_ids: list[list[int]], max_length: int | None, overlong: Overlong) -> Encoded:
    input_ids: list[int] = []
    labels: list[int] = []
    turn_end = 0  # length after the last complete assistant turn that fits
    for (_, trained), ids in zip(pieces, piece_ids):
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
        if trained and (max_length is None or len(input_ids) <= max_length):
            turn_end = len(input_ids)
    if max_length is not None and len(input_ids) > max_length:
        if overlong == "drop" or turn_end == 0:
            return Encoded([], [], DROP_TOO_LONG)
        input_ids, labels = input_ids[:turn_end], labels[:turn_end]
    if all(label == IGNORE_INDEX for label in labels):
        return Encoded([], [], DROP_NO_TRAINED)
    return Encoded(input_ids, labels)


def encode_columns(
    batch: dict[str, list[Any]],
    tokenizer: Any,
    template: Template,
    max_length: int | None = None,
    overlong: Overlong = "truncate",
) -> dict[str, list[Any]]:
    """`datasets.map(batched=True)` function: columns `id`, `messages` -> `id`, `input_ids`, `labels`, `drop`."""
    encoded = encode_batch(batch["messages"], tokenizer, template, max_length, overlong)
    return {
        "id": batch["id"],
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "drop": [e.drop for e in encoded],
    }


def encode_document_columns(batch: dict[str, list[Any]], tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
    """`datasets.map(batched=True)` function for continued pretraining: columns `id`, `messages`
    (one assistant message holding a document) -> `id`, `input_ids`, `labels`, `drop`.

    Each document becomes its tokens plus EOS, every token trained, cut into chunks of at most
    `max_length` so that nothing is lost; chunk `k` of document `id` is named `id#k`.
    """
    texts = [messages[-1]["content"] for messages in batch["messages"]]
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"] if texts else []
    out: dict[str, list[Any]] = {"id": [], "input_ids": [], "labels": [], "drop": []}
    for doc_id, tokens in zip(batch["id"], ids):
        tokens = tokens + [tokenizer.eos_token_id]
        for k, start in enumerate(range(0, len(tokens), max_length)):
            chunk = tokens[start : start + max_length]
            out["id"].append(f"{doc_id}#{k}")
            out["input_ids"].append(chunk)
            out["labels"].append(chunk)
            out["drop"].append("")
    return out


def pack(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: group sample indices into rows of at most `max_length` tokens.

    Samples are placed longest first, each into the row with the least room that still fits it, so
    no sample is split and rows come out nearly full. Returns one list of sample indices per row.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted by room
    for i in order:
        if lengths[i] > max_length:
            raise ValueError(f"sample {i} has {lengths[i]} tokens, more than max_length {max_length}")
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - lengths[i] > 0:
            bisect.insort(free, (room - lengths[i], row))
    return rows


def pack_columns(batch: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]]:
    """`datasets.map(batched=True)` function: samples -> packed rows with `position_ids`
    restarting at 0 for each sample, and `ids` listing the samples in each row."""
    rows = pack([len(ids) for ids in batch["input_ids"]], max_length)
    out: dict[str, list[Any]] = {"ids": [], "input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        out["ids"].append([batch["id"][i] for i in row])
        out["input_ids"].append([t for i in row for t in batch["input_ids"][i]])
        out["labels"].append([t for i in row for t in batch["labels"][i]])
        out["position_ids"].append([p for i in row for p in range(len(batch["input_ids"][i]))])
    return out


def collate(rows: Sequence[dict[str, list[int]]], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """Right-pad rows into tensors of shape (batch, length), ready for `model(**batch)`.

    Unpacked rows get an `attention_mask`. Packed rows (with `position_ids`) get none: the padding
    becomes one more sample whose positions restart at 0, and transformers derives the block-diagonal
    mask from `position_ids` alone, but only for architectures that take positions from them (not
    ALiBi: BLOOM; see `belle.train.packing`) and only when no KV cache is built. The default `use_cache=True`
    would let every token attend across samples, so packed batches carry `use_cache=False`.
    """
    import torch

    length = max(len(row["input_ids"]) for row in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    packed = "position_ids" in rows[0]
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids" if packed else "attention_mask": []}
    for row in rows:
        n = length - len(row["input_ids"])
        batch["input_ids"].append(row["input_ids"] + [pad_token_id] * n)
        batch["labels"].append(row["labels"] + [IGNORE_INDEX] * n)
        if packed:
            batch["position_ids"].append(row["position_ids"] + list(range(n)))
        else:
            batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * n)
    tensors: dict[str, Any] = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
    if packed:
        tensors["use_cache"] = False
    return tensors
