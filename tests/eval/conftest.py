"""Fixtures of the eval tests: our sample eval set and judge prompts, read once per module."""

from pathlib import Path

import pytest

from belle.eval.evalset import default_eval_set_path, read_eval_set
from belle.eval.judging import default_judge_prompts_path, read_judge_prompts


@pytest.fixture(scope="module")
def items():
    return read_eval_set(default_eval_set_path())


@pytest.fixture(scope="module")
def prompts():
    return read_judge_prompts(default_judge_prompts_path())


# lm-eval (`belle eval bench`, `belle.eval.lm_models`): belle's offline tasks and the tests' own.
TEST_TASKS = Path(__file__).with_name("lm_eval_tasks")
"""The tests' lm-eval tasks: belle_test_gen (generate_until, tagged belle_test_tag) and belle_test_group."""


@pytest.fixture(scope="module")
def offline():
    """Hugging Face datasets and hub offline: the local tasks must not reach the network."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def local_task_manager():
    """lm-eval's TaskManager over belle's and the tests' tasks only (no lm-eval defaults: indexed at once)."""
    from lm_eval.tasks import TaskManager

    from belle.eval.bench import LOCAL_TASKS

    return TaskManager(include_path=[str(LOCAL_TASKS), str(TEST_TASKS)], include_defaults=False)


@pytest.fixture
def local_tasks(monkeypatch, local_task_manager):
    """`belle eval bench` indexes `local_task_manager` instead of lm-eval's thousands of task YAMLs
    (seconds per call); the include path it is given must be the tests' task folder or none."""
    import belle.eval.bench

    def manager(include_path=()):
        assert {str(p) for p in include_path} <= {str(TEST_TASKS)}, include_path
        return local_task_manager

    monkeypatch.setattr(belle.eval.bench, "task_manager", manager)
    return local_task_manager


def lm_eval_results(lm, manager, task="belle_zh_mc", **kwargs):
    """lm-eval run directly (`simple_evaluate`, with its samples) on one local task."""
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True, **kwargs)


def loglikelihoods(results, task="belle_zh_mc"):
    """Per document (in doc order), per choice: (loglikelihood, is_greedy)."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[tuple(resp[0]) for resp in sample["resps"]] for sample in samples]


def hflm(model, tokenizer, **kwargs):
    """lm-eval's HFLM on a model and tokenizer loaded by hand."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, **kwargs)
