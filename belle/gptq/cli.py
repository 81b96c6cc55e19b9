"""`belle gptq` (also `python -m belle.gptq`): quantize a model to 2, 3, 4 or 8 bits with GPTQ (or
round-to-nearest, the baseline), and evaluate it beside its reference: perplexity, size, memory, speed."""

from __future__ import annotations

from typing import Sequence

from belle.cli import run_verbs
from belle.gptq.evaluate import eval_
from belle.gptq.quantize import quantize

VERBS = [quantize, eval_]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.gptq") -> int:
    return run_verbs(VERBS, argv, prog)
