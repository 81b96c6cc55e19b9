from belle.cli import run_verbs
from belle.vocab.extend import extend

VERBS = [extend]


def main(argv=None, prog="python -m belle.vocab") -> int:
    return run_verbs(VERBS, argv, prog)
