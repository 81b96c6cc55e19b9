"""`belle model` / `belle models`: build the tiny model, decrypt BELLE's encrypted releases."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from belle.cli import run_verbs
from belle.models.decrypt import decrypt
from belle.templates import TEMPLATE_NAMES


def tiny(
    *,
    out: Path,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    template: str = "belle",
    seed: int = 0,
    arch: str = "llama",
    tokenizer: str = "bpe",
) -> int:
    """Build a small random model and a tokenizer trained on belle's bundled text, in seconds.

    Args:
        out: folder to write (a normal Hugging Face model folder plus belle.json).
        vocab_size: target vocabulary size of the tokenizer.
        hidden_size: model width.
        intermediate_size: MLP width.
        layers: number of decoder layers.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention when fewer than heads).
        template: prompt template recorded in belle.json and saved as the chat_template.
        seed: seed of the random weights.
        arch: model family, by its model_type: llama, mistral, qwen2, qwen3, gemma2, phi3, bloom or gpt_neox.
        tokenizer: bpe (byte-level, with a pad token) or sentencepiece (LLaMA's shape: byte fallback, no pad).
    """
    from belle.architectures import FAMILIES
    from belle.cli import UsageError
    from belle.models.tiny import TOKENIZER_KINDS, build_tiny_model

    if template not in TEMPLATE_NAMES or template == "model":
        raise UsageError(f"--template must be one of {', '.join(t for t in TEMPLATE_NAMES if t != 'model')}")
    sizes = {"vocab-size": vocab_size, "hidden-size": hidden_size, "intermediate-size": intermediate_size,
             "layers": layers, "heads": heads, "kv-heads": kv_heads}
    small = [f"--{flag} {value}" for flag, value in sizes.items() if value < 1]
    if small:
        raise UsageError(f"{', '.join(small)}: every size must be at least 1")
    if arch not in FAMILIES:
        raise UsageError(f"--arch {arch}: not one of {', '.join(FAMILIES)}")
    if tokenizer not in TOKENIZER_KINDS:
        raise UsageError(f"--tokenizer {tokenizer}: not one of {', '.join(TOKENIZER_KINDS)}")
    _check_out(out)
    if hidden_size % heads or heads % kv_heads:
        raise UsageError("--hidden-size must be divisible by --heads, and --heads by --kv-heads")
    build_tiny_model(
        out, vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, template=template, seed=seed,
        arch=arch, tokenizer_kind=tokenizer,
    )
    print(f"tiny {FAMILIES[arch].name} model written to {out}")
    return 0


def _check_out(out: Path) -> None:
    """Refuse an `--out` folder holding anything but an earlier tiny model, which is rebuilt."""
    from belle.cli import UsageError
    from belle.modeling import read_checkpoint_info

    if not out.is_dir() or not any(out.iterdir()):
        return
    if read_checkpoint_info(out).get("built_by") != "belle model tiny":
        raise UsageError(f"--out {out}: a folder with other files in it; belle writes the tiny model only into "
                         "a new or empty folder, or over an earlier tiny model")


VERBS = [tiny, decrypt]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.models") -> int:
    return run_verbs(VERBS, argv, prog)
