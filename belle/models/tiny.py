"""The tiny model: a small random model of any family in `belle.architectures`, with a tokenizer
trained on our bundled Chinese and English text, saved as a normal Hugging Face folder in seconds and
without any download (`belle model tiny`, the test fixtures, the benchmarks).

The bundled corpus (`belle/assets/tiny_corpus.txt`) is also the text of the quick start and the
tests: its first 90% (`tiny_split_at`) is what `belle.testing.tiny_training` trains on, its last 10%
(`tiny_heldout_text`) is held out.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from belle.modeling import write_checkpoint_info
from belle.templates import get_template, to_jinja

# Markers of the chatml/qwen and llama3 templates, so every template tokenizes them as one token.
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                       "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TOKENIZER_KINDS = ("bpe", "sentencepiece")


def tiny_corpus_text() -> str:
    """Our bundled Chinese and English corpus (about 50 KB), paragraphs separated by blank lines."""
    return resources.files("belle").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")


def tiny_corpus_lines() -> list[str]:
    """The non-empty lines of the bundled corpus."""
    return [line for line in tiny_corpus_text().splitlines() if line.strip()]


def tiny_corpus_documents() -> list[str]:
    """Pairs of consecutive paragraphs, so a tokenizer trained on them learns newline merges too."""
    paragraphs = [p.strip() for p in tiny_corpus_text().split("\n\n") if p.strip()]
    return ["\n\n".join(paragraphs[i : i + 2]) for i in range(0, len(paragraphs), 2)]


def tiny_split_at() -> int:
    """Where the held-out tail of the bundled corpus begins: its last 10%, in characters."""
    text = tiny_corpus_text()
    return len(text) - len(text) // 10


def tiny_heldout_text() -> str:
    """The last 10% (by characters) of the bundled corpus, which
    `belle.testing.tiny_training.train_tiny_model` never sees."""
    return tiny_corpus_text()[tiny_split_at() :]


def train_bpe_tokenizer(lines: list[str], vocab_size: int, special_tokens: list[str]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `lines` (no normalizer, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def train_sentencepiece_tokenizer(lines: list[str], vocab_size: int) -> Any:
    """A LLaMA-style `tokenizers.Tokenizer`: BPE over `▁`-prefixed words with byte fallback, BOS
    added in front, and no pad token, the shape of the SentencePiece tokenizer BELLE-LLaMA uses.

    As in LLaMA's vocabulary, `<unk>`, `<s>` and `</s>` take ids 0-2 and are the only special
    tokens; the 256 byte pieces `<0x00>` ... `<0xFF>` take ids 3-258 as ordinary pieces (so
    `decode(..., skip_special_tokens=True)` keeps the characters they spell), and no text is unknown.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(bytes_), min_frequency=2, special_tokens=specials,
                                  show_progress=False)
    trained.train_from_iterator(lines, trainer)
    spec = json.loads(trained.to_str())["model"]
    pieces = list(dict.fromkeys([*specials, *bytes_, *sorted(spec["vocab"], key=spec["vocab"].get)]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tokenizer = Tokenizer(models.BPE({piece: i for i, piece in enumerate(pieces)}, merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(specials)
    tokenizer.pre_tokenizer = trained.pre_tokenizer
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return tokenizer


def _tiny_tokenizer(kind: str, vocab_size: int, max_length: int) -> Any:
    """The tiny model's tokenizer: byte-level BPE with a distinct pad and the chat markers as single
    tokens (`bpe`), or LLaMA's shape without a pad (`sentencepiece`)."""
    from transformers import PreTrainedTokenizerFast

    if kind == "sentencepiece":
        backend = train_sentencepiece_tokenizer(tiny_corpus_documents(), vocab_size)
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                       model_max_length=max_length)
    backend = train_bpe_tokenizer(tiny_corpus_documents(), vocab_size, TINY_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=TINY_SPECIAL_TOKENS[4:],
        model_max_length=max_length,
    )


def build_tiny_model(
    out_dir: str | Path,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
    template: str = "belle",
    seed: int = 0,
    arch: str = "llama",
    tokenizer_kind: str = "bpe",
) -> Path:
    """Build and save a small random model of family `arch` (see `belle.architectures.FAMILIES`)
    with a tokenizer trained on the bundled corpus (`tokenizer_kind`: one of `TOKENIZER_KINDS`).

    The defaults give a LLaMA of about 1.3M parameters (embeddings 2 x 3471 x 128: the bundled
    corpus runs out of BPE merges at 3,471 pieces, below `vocab_size`; two layers), which trains on
    a laptop CPU at hundreds of steps per minute. Families with tied embeddings (BLOOM, Gemma 2)
    keep them tied, as their real checkpoints do. Returns `out_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from belle.architectures import TinySizes, tiny_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(tokenizer_kind, vocab_size, max_position_embeddings)
    tokenizer.chat_template = to_jinja(get_template(template))
    tokenizer.save_pretrained(out)
    sizes = TinySizes(len(tokenizer), hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
                      max_position_embeddings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    config = tiny_config(arch, sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=pad_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out, safe_serialization=True)
    write_checkpoint_info(out, template, built_by="belle model tiny", seed=seed)
    return out
