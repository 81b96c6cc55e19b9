"""Calibration data for GPTQ: token windows cut from conversations or plain text.

GPTQ calibrates each layer on the activations of a few hundred thousand tokens (the paper: 128
random 2048-token segments of C4). In-domain data calibrates best, so conversation files (every
format `belle.conversation` reads) are rendered with the model's own template, exactly as the model
is prompted, EOS after each reply; plain `.txt` files are read as they are, EOS after each file.
Everything is concatenated into one token stream, cut into non-overlapping `seqlen` windows, and
`nsamples` windows are drawn at random (seeded).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.conversation import read_conversations
from belle.records import DATA_SUFFIXES, RejectReport, is_saved_dataset
from belle.templates import Template
from belle.tokenization import encode_batch

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
TEXT_CHUNK_CHARS = 1 << 16


def calibration_samples(
    paths: list[Path],
    tokenizer: Any,
    template: Template | None,
    *,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
) -> list[dict[str, list[int]]]:
    """`nsamples` windows of `seqlen` tokens, as `{"input_ids", "attention_mask"}` lists of ints.

    Args:
        paths: conversation files or folders (.json/.jsonl, saved datasets) and plain .txt files.
        tokenizer: the model's tokenizer.
        template: renders the conversations; needed only when `paths` holds conversation files.
        nsamples: windows to draw; the files must hold at least `nsamples * seqlen` tokens.
        seqlen: tokens per window.
        seed: which windows are drawn.

    Raises:
        UsageError: a file that cannot be read or holds no usable text, or fewer tokens in all than
            `nsamples * seqlen` (the message gives each file's token count).
    """
    stream, sizes = token_stream(paths, tokenizer, template)
    counts = [f"{path}: {n:,} tokens" for path, n in zip(paths, sizes)]
    needed = nsamples * seqlen
    if len(stream) < needed:
        raise UsageError(
            f"too little calibration text: {len(stream):,} tokens ({'; '.join(counts)}), but --nsamples {nsamples}"
            f" x --seqlen {seqlen} needs {needed:,}; give more text or lower --nsamples or --seqlen"
        )
    windows = len(stream) // seqlen
    starts = sorted(random.Random(seed).sample(range(windows), nsamples))
    logger.info("calibration: %d windows of %d tokens drawn from %d (%s)", nsamples, seqlen, windows, "; ".join(counts))
    return [
        {"input_ids": stream[k * seqlen : (k + 1) * seqlen], "attention_mask": [1] * seqlen}
        for k in starts
    ]


def token_stream(paths: list[Path], tokenizer: Any, template: Template | None) -> tuple[list[int], list[int]]:
    """All the files' tokens one after another, and how many each gave (see `calibration_samples`)."""
    stream: list[int] = []
    counts: list[int] = []
    for path in paths:
        ids = _text_ids(path, tokenizer) if is_text_file(path) else _conversation_ids(path, tokenizer, template)
        if not ids:
            raise UsageError(f"{path}: no calibration text in this file")
        stream += ids
        counts.append(len(ids))
    return stream, counts


def is_text_file(path: Path) -> bool:
    """True for a plain text file, False for conversations; UsageError for anything else."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        return True
    if path.is_dir() or is_saved_dataset(path) or path.suffix.lower() in DATA_SUFFIXES:
        return False
    raise UsageError(
        f"{path}: calibration files are conversations ({', '.join(DATA_SUFFIXES)}, or a folder of them)"
        f" or plain text ({', '.join(TEXT_SUFFIXES)})"
    )


def _text_ids(path: Path, tokenizer: Any) -> list[int]:
    """The file's tokens plus EOS; tokenized in chunks of whole lines so a big file is not one call."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read it as UTF-8 text: {e}") from None
    if not text.strip():
        return []
    chunks, chunk = [], []
    size = 0
    for line in text.splitlines(keepends=True):
        chunk.append(line)
        size += len(line)
        if size >= TEXT_CHUNK_CHARS:
            chunks.append("".join(chunk))
            chunk, size = [], 0
    if chunk:
        chunks.append("".join(chunk))
    ids = tokenizer(chunks, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [token for piece in ids for token in piece] + eos


def _conversation_ids(path: Path, tokenizer: Any, template: Template | None) -> list[int]:
    """Every conversation encoded by `belle.tokenization.encode_batch`, exactly as in training (no
    conversation is dropped: every one `read_conversations` yields has a trained assistant turn)."""
    if template is None:
        raise UsageError(f"{path}: conversation files need the model's template; name one with --template")
    report = RejectReport(keep_lines=False)
    conversations = list(read_conversations(path, report=report))
    if report.total:
        logger.warning("%s: %s", path, report.summary())
    encoded = encode_batch([c.messages for c in conversations], tokenizer, template)
    return [token for sample in encoded for token in sample.input_ids]
