"""On a GPU: packed logits equal per-sample logits in bf16, per family and attention kernel.

The CPU test (`tests/train/test_packing.py`) proves the architecture table in fp32 with
sdpa/eager. This script repeats the check where training really runs: tiny random models of every
family in `belle.architectures.FAMILIES`, in bfloat16 on CUDA, with `sdpa`, `eager`, and
`flash_attention_2` / `flex_attention` where they are installed. Samples of 70, 50 and 20 tokens go
through the Trainer's path (best-fit rows of 96, `collate` padding to a multiple of 8, no cache).
A cell passes when the gap, relative to the largest logit, is within the bf16 tolerance of the
run-time probe for a family that packs, and above it for one that is refused (BLOOM).

    python benchmarks/check_packing_gpu.py [--json packing_gpu.json]

Prints a table (family, attention, relative gap, expected, result); exit status 1 if a cell fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_common import finish, machine_info, markdown_table  # noqa: E402

from belle.architectures import FAMILIES  # noqa: E402
from belle.models.tiny import build_tiny_model  # noqa: E402
from belle.train.packing import PROBE_TOLERANCE, packed_logit_gap  # noqa: E402

LENGTHS = (70, 50, 20)


def kernels() -> list[str]:
    """The attention implementations to try on this machine."""
    names = ["sdpa", "eager"]
    if importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attention_2")
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        names.append("flex_attention")
    return names


def check(model_dir: Path, attn: str) -> float:
    """Relative packed-vs-alone logit gap of the model in bf16 on the GPU with `attn`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation=attn).cuda()
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    samples = [torch.randint(vocab, (n,), generator=generator).tolist() for n in LENGTHS]
    gap, scale = packed_logit_gap(model, samples, max_length=96, pad_to_multiple_of=8)
    return gap / max(scale, 1e-6)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_packing_gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    tolerance = PROBE_TOLERANCE["bfloat16"]
    rows, cells, passed = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        for model_type, family in FAMILIES.items():
            model_dir = build_tiny_model(Path(tmp) / model_type, arch=model_type)
            expected = "exact" if family.pack_refusal is None else "mixes (refused)"
            for attn in kernels():
                try:
                    relative = check(model_dir, attn)
                except (ValueError, ImportError, RuntimeError) as e:  # a kernel the family does not support
                    rows.append((family.name, attn, "-", expected, f"unsupported: {str(e).splitlines()[0][:80]}"))
                    cells.append({"family": model_type, "attention": attn, "unsupported": str(e)})
                    continue
                ok = (relative <= tolerance) == (family.pack_refusal is None)
                passed &= ok
                rows.append((family.name, attn, f"{relative:.1e}", expected, "PASS" if ok else "FAIL"))
                cells.append({"family": model_type, "attention": attn, "relative_gap": relative, "passed": ok})
    print(markdown_table(("family", "attention", "relative gap (bf16)", "expected", "result"), rows))
    print(f"\ntolerance: {tolerance:g} of the largest logit")
    return finish({"machine": machine_info(), "tolerance": tolerance, "cells": cells}, passed, args.json)


if __name__ == "__main__":
    sys.exit(main())
