"""The tokenizer inside a GGUF file: a Hugging Face fast tokenizer as llama.cpp's `tokenizer.ggml.*` keys.

Two kinds of BPE tokenizer are written, decided from `tokenizer.json`:

- byte-level BPE (GPT-2, LLaMA 3, Qwen2, belle's tiny tokenizer): `tokenizer.ggml.model` "gpt2", the
  pieces in their byte-level spelling, the merges, and `tokenizer.ggml.pre` naming the pre-tokenizer
  llama.cpp must run. llama.cpp knows pre-tokenizers by name, not by regex, so the name is found by
  matching the tokenizer's regex and normalizer against the ones llama.cpp implements
  (`PRE_TOKENIZERS`); anything else is refused rather than written with a pre-tokenizer that would
  split text differently.
- SentencePiece-style BPE (LLaMA 1/2, belle's tiny `sentencepiece` tokenizer): `▁` for spaces, byte
  fallback to `<0xNN>` pieces; `tokenizer.ggml.model` "llama". llama.cpp's SentencePiece tokenizer
  merges by score rather than by a merge list: each piece scores minus the rank of the first merge
  that builds it, so merging the highest score first replays Hugging Face's merges in order.

  llama.cpp follows SentencePiece on spaces: it puts `▁` before the text and before any text that
  follows a special token, always. Hugging Face's `Metaspace(prepend_scheme="first")` (transformers'
  LLaMA tokenizers, belle's tiny one) puts it only at the start of the input, and not when the input
  already starts with a space. Text that starts with a space, or text right after a special token,
  therefore gets one `▁` more from llama.cpp than from transformers; all other text gets the same ids.

Token types: special added tokens are CONTROL, other added tokens USER_DEFINED, `<0xNN>` byte pieces
BYTE (SentencePiece-style only), the unknown token UNKNOWN, and rows the embedding has beyond the
tokenizer (`[PAD{id}]`) UNUSED.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from belle.cli import UsageError

if TYPE_CHECKING:
    import gguf
    from transformers import PreTrainedTokenizerFast

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# llama.cpp's name for a byte-level pre-tokenizer (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_*), keyed
# by the split regex and the normalizers it tolerates (Qwen2's NFC is one llama.cpp does not apply,
# as llama.cpp's own converter accepts it: it only changes text that is not already NFC).
PRE_TOKENIZERS: dict[str, tuple[str, frozenset[str | None]]] = {
    GPT2_REGEX: ("gpt-2", frozenset({None})),
    LLAMA3_REGEX: ("llama-bpe", frozenset({None})),
    QWEN2_REGEX: ("qwen2", frozenset({None, "NFC"})),
}
KNOWN = "GPT-2's ByteLevel regex, LLaMA 3's and Qwen2's Split regex before ByteLevel, or SentencePiece-style Metaspace"
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class VocabInfo:
    """What `add_vocab` wrote."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str | None  # tokenizer.ggml.pre for "gpt2" ("gpt-2", "qwen2", "llama-bpe"), None for "llama"
    tokens: int  # vocabulary size written (== the model's embedding rows; padded with [PAD{i}] if larger)


def add_vocab(writer: "gguf.GGUFWriter", tokenizer: "PreTrainedTokenizerFast", vocab_size: int,
              chat_template: str | None) -> VocabInfo:
    """Write `tokenizer` as `tokenizer.ggml.*` keys (and `chat_template` as `tokenizer.chat_template`).

    `vocab_size` is the number of rows of the model's embedding matrix: ids the tokenizer lacks below
    it become UNUSED `[PAD{id}]` tokens. Raises `UsageError` for a tokenizer llama.cpp cannot
    reproduce (not a fast BPE tokenizer, an unknown pre-tokenizer or normalizer, more tokens than rows).
    """
    spec = _spec(tokenizer)
    model, pre, add_space_prefix = _kind(spec)
    pieces, types = _pieces(spec, vocab_size, sentencepiece=model == "llama")
    merges = [_pair(merge) for merge in spec["model"]["merges"]]

    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(pieces)
    writer.add_token_types([int(t) for t in types])
    if model == "gpt2":
        writer.add_token_merges([f"{a} {b}" for a, b in merges])
    else:
        writer.add_token_scores(_scores(pieces, merges))
        writer.add_add_space_prefix(add_space_prefix)
    _add_special_ids(writer, tokenizer)
    if chat_template:
        writer.add_chat_template(chat_template)
    return VocabInfo(model=model, pre=pre, tokens=len(pieces))


def _spec(tokenizer: Any) -> dict[str, Any]:
    """`tokenizer.json` as a dict; a slow tokenizer or a non-BPE model is refused."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError(f"GGUF export needs a fast tokenizer (tokenizer.json); this one is {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    kind = spec["model"].get("type")
    if kind != "BPE":
        raise UsageError(f"GGUF export supports BPE tokenizers (byte-level or SentencePiece-style); this one is {kind}")
    return spec


def _kind(spec: dict[str, Any]) -> tuple[str, str | None, bool]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre, add_space_prefix) for a BPE `tokenizer.json`."""
    pre, normalizer = spec.get("pre_tokenizer"), spec.get("normalizer")
    steps = pre.get("pretokenizers", []) if pre and pre["type"] == "Sequence" else [pre] if pre else []
    names = [step["type"] for step in steps]
    if names == ["Metaspace"] or (not steps and _legacy_spm_normalizer(normalizer)):
        return "llama", None, _sentencepiece_prefix(spec, steps[0] if steps else None)
    if names == ["ByteLevel"] and steps[0].get("use_regex", True):
        regex = GPT2_REGEX
    elif names == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = _split_regex(steps[0])
    else:
        raise UsageError(f"GGUF export cannot write a tokenizer with pre-tokenizer {_describe(pre)}: "
                         f"llama.cpp knows {KNOWN}")
    if steps[-1].get("add_prefix_space"):
        raise UsageError("GGUF export cannot write a byte-level tokenizer with add_prefix_space: llama.cpp never adds one")
    if regex not in PRE_TOKENIZERS:
        raise UsageError(f"GGUF export cannot write a tokenizer with pre-tokenizer {_describe(pre)}: "
                         f"llama.cpp knows {KNOWN}")
    name, normalizers = PRE_TOKENIZERS[regex]
    kind = normalizer["type"] if normalizer else None
    if kind not in normalizers:
        raise UsageError(f"GGUF export cannot write a {name} tokenizer with a {kind} normalizer: llama.cpp does not apply it")
    return "gpt2", name, False


def _split_regex(step: dict[str, Any]) -> str | None:
    """The regex of a `Split` that keeps each match as its own piece, else None."""
    if step.get("behavior") != "Isolated" or step.get("invert"):
        return None
    return step.get("pattern", {}).get("Regex")


def _describe(pre: dict[str, Any] | None) -> str:
    if not pre:
        return "none"
    if pre["type"] == "Sequence":
        return " + ".join(_describe(step) for step in pre.get("pretokenizers", []))
    if pre["type"] == "Split":
        return f"Split({json.dumps(pre.get('pattern'), ensure_ascii=False)}, {pre.get('behavior')})"
    return pre["type"]


def _legacy_spm_normalizer(normalizer: dict[str, Any] | None) -> bool:
    """LLaMA 2's original `tokenizer.json`: Prepend("▁") then Replace(" ", "▁"), no pre-tokenizer."""
    if not normalizer or normalizer["type"] != "Sequence":
        return False
    steps = normalizer.get("normalizers", [])
    return [s["type"] for s in steps] == ["Prepend", "Replace"] and steps[0].get("prepend") == "▁" \
        and steps[1].get("pattern") == {"String": " "} and steps[1].get("content") == "▁"


def _sentencepiece_prefix(spec: dict[str, Any], metaspace: dict[str, Any] | None) -> bool:
    """Whether llama.cpp should put `▁` before text; checks the model is one llama.cpp can run."""
    model = spec["model"]
    if metaspace is not None:
        if metaspace.get("replacement") != "▁":
            raise UsageError(f"GGUF export needs Metaspace to replace spaces with ▁, not {metaspace.get('replacement')!r}")
        if spec.get("normalizer"):
            raise UsageError(f"GGUF export cannot write a SentencePiece-style tokenizer with a "
                             f"{spec['normalizer']['type']} normalizer: llama.cpp does not apply it")
    vocab = model["vocab"]
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if not model.get("byte_fallback") or missing:
        raise UsageError("GGUF export supports SentencePiece-style tokenizers with byte fallback (all 256 <0xNN> "
                         "pieces), as llama.cpp spells unknown characters in bytes"
                         + (f"; this one lacks {missing[0]}" if missing else ""))
    scheme = metaspace.get("prepend_scheme", "always") if metaspace is not None else "always"
    if metaspace is not None and "add_prefix_space" in metaspace and "prepend_scheme" not in metaspace:
        scheme = "always" if metaspace["add_prefix_space"] else "never"
    return scheme != "never"


def _pieces(spec: dict[str, Any], vocab_size: int, sentencepiece: bool) -> tuple[list[str], list[Any]]:
    """Every id's piece and token type, ids `0 .. max(vocab_size, tokens) - 1`."""
    from gguf import TokenType

    by_id: dict[int, str] = {i: piece for piece, i in spec["model"]["vocab"].items()}
    added = {token["id"]: token for token in spec["added_tokens"]}
    by_id.update({i: token["content"] for i, token in added.items()})
    size = max(by_id) + 1 if by_id else 0
    if size > vocab_size:
        raise UsageError(f"the tokenizer has {size} tokens but the model only {vocab_size} embedding rows")
    unk = spec["model"].get("unk_token")
    pieces: list[str] = []
    types: list[Any] = []
    for i in range(vocab_size):
        piece = by_id.get(i)
        if piece is None:
            pieces.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        pieces.append(piece)
        if sentencepiece and piece == unk:
            types.append(TokenType.UNKNOWN)
        elif i in added:
            types.append(TokenType.CONTROL if added[i]["special"] else TokenType.USER_DEFINED)
        elif sentencepiece and BYTE_PIECE.fullmatch(piece):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    if len(set(pieces)) != len(pieces):
        twice = next(p for p in pieces if pieces.count(p) > 1)
        raise UsageError(f"the tokenizer has the piece {twice!r} under two ids; llama.cpp needs each piece once")
    return pieces, types


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as `tokenizer.json` stores it: `["a", "b"]` or the older `"a b"`."""
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a, b


def _scores(pieces: list[str], merges: list[tuple[str, str]]) -> list[float]:
    """SentencePiece scores: minus the rank of the first merge building a piece; pieces no merge builds
    (characters, bytes, special tokens) score below every merge, so they are never preferred."""
    index = {piece: i for i, piece in enumerate(pieces)}
    scores = [-float(len(merges) + 1)] * len(pieces)
    for rank, (a, b) in reversed(list(enumerate(merges))):
        i = index.get(a + b)
        if i is not None:
            scores[i] = -float(rank)
    return scores


def _add_special_ids(writer: Any, tokenizer: Any) -> None:
    """BOS, EOS, UNK and PAD ids (PAD only when it differs from EOS), and whether encoding adds BOS or EOS."""
    bos, eos, unk, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if unk is not None:
        writer.add_unk_token_id(unk)
    if pad is not None and pad != eos:
        writer.add_pad_token_id(pad)
    add_bos, add_eos = _added_specials(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)


def _added_specials(tokenizer: Any) -> tuple[bool, bool]:
    """Whether `tokenizer(text)` puts BOS in front and EOS behind, seen by encoding a text both ways."""
    text = "a"
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    front, back = full[:start], full[start + len(plain) :]
    return (tokenizer.bos_token_id is not None and front == [tokenizer.bos_token_id],
            tokenizer.eos_token_id is not None and back == [tokenizer.eos_token_id])
