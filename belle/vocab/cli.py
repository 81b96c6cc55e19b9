"""`belle vocab` (also `python -m belle.vocab`): extend a model's vocabulary with pieces learned from a corpus."""

from __future__ import annotations

from typing import Sequence

from belle.cli import run_verbs
from belle.vocab.extend import extend

VERBS = [extend]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.vocab") -> int:
    return run_verbs(VERBS, argv, prog)
