"""Fixtures of the eval tests: our sample eval set and judge prompts, read once per module."""

import pytest

from belle.eval.evalset import default_eval_set_path, read_eval_set
from belle.eval.judging import default_judge_prompts_path, read_judge_prompts


@pytest.fixture(scope="module")
def items():
    return read_eval_set(default_eval_set_path())


@pytest.fixture(scope="module")
def prompts():
    return read_judge_prompts(default_judge_prompts_path())
