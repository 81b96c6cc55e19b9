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
    embedding_type: str | None = None,
    output_type: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> None:
    """Write a model as one GGUF file for llama.cpp, Ollama and LM Studio, tokenizer and chat template included.

    Args:
        model: a model folder, a LoRA adapter folder (merged into its base), a `belle vocab extend` folder, or a
            GPTQ folder (`belle gptq quantize --group-size 32`: its layers written exactly as --type q4_0, q4_1 or
            q8_0 blocks, its embeddings and LM head in the dtype the folder stores them, usually bf16; --type f32,
            f16, bf16: all dequantized to that type).
        out: the GGUF file to write (FILE.gguf).
        type: tensor type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (written directly), or a K-quant
            q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k (llama.cpp's quantizer).
        embedding_type: type of the token embeddings (token_embd.weight; llama-quantize's --token-embedding-type):
            f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, or for a K-quant --type also q2_k, q3_k, q4_k, q5_k, q6_k.
            Default: --type's rule (q4_0 ... q5_1 keep the output matrix in q8_0; K-quants: llama.cpp's mix), for a
            GPTQ folder the dtype it stores them in.
        output_type: type of the output matrix (output.weight; llama-quantize's --output-tensor-type), same choices.
            With tied embeddings token_embd.weight is the output matrix: --embedding-type wins, else this applies.
        base: the base model of a LoRA adapter folder; default: the one its adapter_config.json names.
        template: the belle template to record (belle.template) and embed as the chat template;
            default: belle.json's, else the tokenizer's own.
        overwrite: replace an existing --out.
        trust_remote_code: allow custom model code from the model folder.
    """
    from belle.export.gguf import export_gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # gguf-py's INFO lines say what the summary says
    report = export_gguf(model, out, type=type, base=base, template=template, overwrite=overwrite,
                         trust_remote_code=trust_remote_code, embedding_type=embedding_type, output_type=output_type)
    fallback = (f"{report.fallback_tensors} matrices in a wider type (rows not a whole number of blocks)"
                if report.fallback_tensors else "no fallbacks")
    heads = f"embeddings {report.embedding_type}, " + (
        f"output {report.output_type}" if report.output_type else "output tied to the embeddings")
    if report.gptq_kept:
        kept = ", ".join(name.removesuffix(".weight") for name in report.gptq_kept)
        heads += f" ({kept} in the GPTQ folder's own dtype: GPTQ left them unquantized)"
    print(f"Wrote {report.out} ({report.type}, {report.architecture}): {report.file_bytes / 2**20:.1f} MiB, "
          f"{report.tensors} tensors, {heads}, {fallback}, in {report.seconds:.1f} s.")


VERBS = [gguf]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.export") -> int:
    return run_verbs(VERBS, argv, prog)
