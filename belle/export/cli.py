"""`belle export` (also `python -m belle.export`): write a belle model in another runtime's format."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from belle.cli import run_verbs


def gguf(
    *,
    model: Path,
    out: Path,
    type: str = "f16",
    base: Path | None = None,
    template: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> None:
    """Write a model as one GGUF file for llama.cpp, Ollama and LM Studio, tokenizer and chat template included.

    Args:
        model: a model folder, a LoRA adapter folder (merged into its base), or a `belle vocab extend` folder.
        out: the GGUF file to write (FILE.gguf).
        type: tensor type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (written directly), or a K-quant
            q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (llama.cpp's quantizer).
        base: the base model of a LoRA adapter folder; default: the one its adapter_config.json names.
        template: the belle template to record (belle.template) and embed as the chat template;
            default: belle.json's, else the tokenizer's own.
        overwrite: replace an existing --out.
        trust_remote_code: allow custom model code from the model folder.
    """
    from belle.export.gguf import export_gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # gguf-py's INFO lines say what the summary says
    report = export_gguf(model, out, type=type, base=base, template=template, overwrite=overwrite,
                         trust_remote_code=trust_remote_code)
    fallback = (f"{report.fallback_tensors} matrices in a wider type (rows not a whole number of blocks)"
                if report.fallback_tensors else "no fallbacks")
    print(f"Wrote {report.out} ({report.type}, {report.architecture}): {report.file_bytes / 2**20:.1f} MiB, "
          f"{report.tensors} tensors, {fallback}, in {report.seconds:.1f} s.")


VERBS = [gguf]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.export") -> int:
    return run_verbs(VERBS, argv, prog)
