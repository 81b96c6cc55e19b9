"""Vocabulary extension in the style of BELLE-LLaMA-EXT: add Chinese pieces to a BPE tokenizer and its model.

BELLE extended LLaMA's vocabulary with pieces learned on Chinese text, then continued pretraining so
the new embeddings learn their meaning. Here a tokenizer is trained on the corpus with the base
tokenizer's own algorithm and pre-tokenization; the pieces the base lacks are appended to its BPE
model after every existing id, with the merges that build them after the base's merges: old ids and
special tokens stay as they were, and the base's merges keep priority, so text the base already
tokenized into whole words is tokenized as before. New embedding rows start at the mean of the old rows.
"""

from __future__ import annotations

import json
import logging
import tempfile
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from belle.cli import UsageError
from belle.records import write_text_atomic

logger = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.1
BATCH_LINES = 1000
REPORT_JSON = "vocab_report.json"


def extend_tokenizer(base_tokenizer: Any, corpus_lines: Iterable[str], vocab_size: int) -> tuple[Any, list[str]]:
    """Add to a fast BPE tokenizer the pieces of a `vocab_size`-piece tokenizer trained on `corpus_lines`.

    Returns the extended tokenizer and the added pieces in id order: they take ids `len(base)`,
    `len(base) + 1`, ..., so every existing id keeps its token and `len(new) == len(base) + len(added)`.
    Raises `UsageError` for a tokenizer that is not a fast BPE one, or when no piece would be added.
    """
    spec = _bpe_spec(base_tokenizer)
    trained = base_tokenizer.train_new_from_iterator(_batches(corpus_lines), vocab_size=vocab_size)
    trained_spec = json.loads(trained.backend_tokenizer.to_str())
    if not trained_spec["model"]["merges"]:
        raise UsageError(
            f"a vocab size of {vocab_size} leaves no room for merges: the special tokens and initial alphabet "
            f"alone take {len(trained_spec['model']['vocab'])} pieces; choose a larger vocab size"
        )
    added = _add_pieces(spec, trained_spec)
    if not added:
        raise UsageError(
            f"every piece learned from the corpus at vocab size {vocab_size} is already in the base tokenizer; "
            "choose a larger vocab size"
        )
    return _with_backend(base_tokenizer, spec), added


def _bpe_spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's `tokenizer.json` as a dict, if it is a fast tokenizer with a BPE model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else None
    if spec is None or spec["model"].get("type") != "BPE":
        kind = f"a {spec['model'].get('type', 'unknown')}" if spec else "a slow (non-fast)"
        raise UsageError(
            f"only BPE-based fast tokenizers are supported (byte-level BPE as in LLaMA 3, Qwen, GPT-2, or "
            f"SentencePiece-style BPE with byte fallback as in LLaMA 1 and 2); "
            f"this one is {kind} tokenizer"
        )
    return spec


def _batches(lines: Iterable[str], size: int = BATCH_LINES) -> Iterator[list[str]]:
    lines = iter(lines)
    while batch := list(islice(lines, size)):
        yield batch


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as stored in `tokenizer.json`: `["a", "b"]` or the older `"a b"`."""
    a, b = merge.split(" ") if isinstance(merge, str) else merge
    return a, b


def _add_pieces(spec: dict[str, Any], trained: dict[str, Any]) -> list[str]:
    """Append to `spec`'s BPE model the pieces of `trained` it lacks, and the merges that build them.

    Trained merges are taken in rank order, so both parts of each exist before it (a part neither
    tokenizer builds, such as a character missing from the base's alphabet, is added first). Merges
    are written as pairs, after the base's. Returns the added pieces in id order.
    """
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    next_id = _contiguous_size(spec)
    merges = [list(_pair(merge)) for merge in model["merges"]]
    known = {tuple(merge) for merge in merges}
    special = {token["content"] for token in spec["added_tokens"] + trained["added_tokens"]}
    prefix_len = len(trained["model"].get("continuing_subword_prefix") or "")
    added: list[str] = []

    def add(piece: str) -> None:
        nonlocal next_id
        if piece not in vocab and piece not in special:
            vocab[piece] = next_id
            next_id += 1
            added.append(piece)

    for a, b in map(_pair, trained["model"]["merges"]):
        add(a)
        add(b)
        add(a + b[prefix_len:])
        if (a, b) not in known:
            merges.append([a, b])
            known.add((a, b))
    for piece in sorted(trained["model"]["vocab"], key=trained["model"]["vocab"].get):
        add(piece)
    model["merges"] = merges
    return added


def _contiguous_size(spec: dict[str, Any]) -> int:
    """The number of ids in use, after giving the BPE model an entry for each added token it lacks.

    Added tokens (LLaMA 3's specials, say) may sit above the model's vocab; entering them there keeps
    the model's ids contiguous, so the new pieces and any token added later get distinct ids.
    """
    vocab = spec["model"]["vocab"]
    taken = set(vocab.values())
    for token in spec["added_tokens"]:
        if token["content"] not in vocab and token["id"] not in taken:
            vocab[token["content"]] = token["id"]
            taken.add(token["id"])
    if taken != set(range(len(taken))):
        missing = min(set(range(max(taken) + 1)) - taken)
        raise UsageError(f"the base tokenizer's ids are not contiguous (no token has id {missing})")
    return len(taken)


def _with_backend(base_tokenizer: Any, spec: dict[str, Any]) -> Any:
    """A copy of `base_tokenizer` (same class, special tokens, chat template) whose `tokenizer.json` is `spec`."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        base_tokenizer.save_pretrained(folder)
        Path(folder, "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = base_tokenizer.padding_side
    tokenizer.chat_template = base_tokenizer.chat_template
    return tokenizer


def resize_embeddings(model: Any, new_size: int, old_size: int | None = None) -> None:
    """Give the input embeddings (and an untied LM head) `new_size` rows; rows from `old_size` on are new.

    Every new row is set to the mean of rows `[0, old_size)`, computed in float32. `old_size`
    defaults to the current number of rows; pass a smaller one when the ids just above it belong to
    new tokens although the matrix already has rows there (embeddings padded to a multiple).
    """
    import torch

    old_size = model.get_input_embeddings().num_embeddings if old_size is None else old_size
    model.resize_token_embeddings(new_size, mean_resizing=False)
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    with torch.no_grad():
        for weight in weights:
            weight[old_size:new_size] = weight[:old_size].float().mean(dim=0).to(weight.dtype)


def chars_per_token(tokenizer: Any, lines: Iterable[str]) -> float:
    """Characters per token over `lines`, tokenized one line at a time without special tokens."""
    chars = tokens = 0
    for batch in _batches(lines):
        chars += sum(map(len, batch))
        tokens += sum(map(len, tokenizer(batch, add_special_tokens=False)["input_ids"]))
    if tokens == 0:
        raise ValueError("no text to measure characters per token on")
    return chars / tokens


def read_lines(paths: Iterable[Path]) -> Iterator[str]:
    """The non-blank lines of UTF-8 text files, without their line endings."""
    for path in paths:
        with Path(path).open(encoding="utf-8") as file:
            for line in file:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line


def _count_lines(paths: list[Path], what: str) -> int:
    """The number of non-blank lines, after checking every file exists and is UTF-8."""
    count = 0
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{what} file not found: {path}")
        try:
            count += sum(1 for _ in read_lines([path]))
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}: not UTF-8 text ({e})") from None
    return count


def _check_folders(base: Path, out: Path) -> None:
    if not (base / "config.json").is_file():
        raise UsageError(f"base model folder not found (no config.json): {base}")
    if out.resolve() == base.resolve():
        raise UsageError(f"--out must differ from --base: {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder exists and is not empty: {out}")


def _split(corpus: list[Path], heldout: Path | None) -> tuple[int, int, Callable[[], Iterator[str]]]:
    """(training lines, held-out lines, a function streaming the held-out lines); training lines come first."""
    lines = _count_lines(corpus, "corpus")
    if heldout is not None:
        held = _count_lines([heldout], "held-out")
        if held == 0:
            raise UsageError(f"the held-out file has no text: {heldout}")
        train, stream = lines, partial(read_lines, [heldout])
    else:
        held = max(1, int(lines * HELDOUT_FRACTION))
        train, stream = lines - held, partial(_lines_from, corpus, lines - held)
    if train < 1:
        needed = 1 if heldout is not None else 2
        raise UsageError(f"the corpus has {lines} non-blank lines; it needs at least {needed}")
    return train, held, stream


def _lines_from(paths: list[Path], start: int) -> Iterator[str]:
    return islice(read_lines(paths), start, None)


def _load_model(base: Path) -> Any:
    """The base model on CPU, in the checkpoint's dtype."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base), dtype="auto", use_safetensors=True)


def _write_checkpoint_info(base: Path, out: Path, added: int, vocab_size: int) -> None:
    from belle.modeling import read_checkpoint_info, write_checkpoint_info

    info = read_checkpoint_info(base)
    info.pop("belle_version", None)
    template = info.pop("template", None)
    info["vocab_extension"] = {"base": str(base), "added": added, "vocab_size": vocab_size}
    write_checkpoint_info(out, template, **info)


def _report(
    base: Path,
    corpus: list[Path],
    vocab_size: int,
    tokenizer: Any,
    new_tokenizer: Any,
    added: list[str],
    heldout: Path | None,
    held: int,
    heldout_lines: Callable[[], Iterator[str]],
) -> dict[str, Any]:
    """The contents of `vocab_report.json`; `added_examples` are the last 20 added pieces as text."""
    return {
        "base": str(base),
        "corpus": [str(path) for path in corpus],
        "trained_vocab_size": vocab_size,
        "base_vocab_size": len(tokenizer),
        "new_vocab_size": len(new_tokenizer),
        "added": len(added),
        "added_examples": [new_tokenizer.convert_tokens_to_string([piece]) for piece in added[-20:]],
        "heldout": str(heldout) if heldout else "last 10% of corpus lines",
        "heldout_lines": held,
        "chars_per_token": {
            "base": chars_per_token(tokenizer, heldout_lines()),
            "extended": chars_per_token(new_tokenizer, heldout_lines()),
        },
    }


def _print_report(report: dict[str, Any]) -> None:
    cpt = report["chars_per_token"]
    print(f"{'':14}{'base':>10}{'extended':>10}")
    print(f"{'vocab size':14}{report['base_vocab_size']:>10}{report['new_vocab_size']:>10}")
    print(f"{'chars/token':14}{cpt['base']:>10.3f}{cpt['extended']:>10.3f}")
    print(f"added {report['added']} pieces; held-out: {report['heldout']} ({report['heldout_lines']} lines)")


def extend(*, base: Path, corpus: list[Path], vocab_size: int, out: Path, heldout: Path | None = None) -> int:
    """Extend a model's BPE vocabulary with pieces learned from a (Chinese) corpus, as BELLE-LLaMA-EXT did.

    A tokenizer of `--vocab-size` pieces is trained on the corpus with the base tokenizer's own
    algorithm and pre-tokenization. The pieces the base lacks get ids after all existing ones (old
    tokens and special tokens keep theirs), with the merges that build them after the base's merges.
    The input embeddings and an untied LM head grow by one row per added piece, each new row the
    mean of the old rows, ready for continued pretraining on the corpus.

    Writes to `--out` the model (safetensors), the tokenizer (with the base's chat template),
    `belle.json` with a `vocab_extension` entry, and `vocab_report.json`: vocab sizes, pieces added,
    and characters per token of the base and extended tokenizers on held-out text. Without
    `--heldout`, the last 10% of corpus lines are held out and NOT used for training.

    Args:
        base: folder of the model to extend: a causal LM with a fast BPE tokenizer.
        corpus: UTF-8 text files to learn pieces from, one text per line; blank lines are skipped.
        vocab_size: size of the tokenizer trained on the corpus; only its pieces that the base lacks
            are added, so fewer are added than this.
        out: new folder for the extended model.
        heldout: UTF-8 text file to measure characters per token on; default: the last tenth of
            the corpus lines, which are then left out of training.
    """
    from belle.modeling import load_tokenizer

    if vocab_size < 1:
        raise UsageError(f"--vocab-size must be at least 1, not {vocab_size}")
    _check_folders(base, out)
    train, held, heldout_lines = _split(corpus, heldout)
    tokenizer = load_tokenizer(base)
    logger.info("training a %d-piece tokenizer on %d corpus lines", vocab_size, train)
    new_tokenizer, added = extend_tokenizer(tokenizer, islice(read_lines(corpus), train), vocab_size)
    model = _load_model(base)
    rows = model.get_input_embeddings().num_embeddings
    resize_embeddings(model, max(rows, len(new_tokenizer)), old_size=min(rows, len(tokenizer)))

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    new_tokenizer.save_pretrained(out)
    _write_checkpoint_info(base, out, len(added), len(new_tokenizer))
    report = _report(base, corpus, vocab_size, tokenizer, new_tokenizer, added, heldout, held, heldout_lines)
    write_text_atomic(out / REPORT_JSON, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    _print_report(report)
    return 0
