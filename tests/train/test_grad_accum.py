"""Gradient accumulation is exact: 8 micro-batches of 1 sample train like one batch of 8."""

import pytest

from tests.helpers import write_jsonl
from tests.train.helpers import assert_same_losses, assert_same_weights, conversation, files_list, load_weights, losses_by_step

pytestmark = pytest.mark.slow

WORDS = ("the quick brown fox jumps over the lazy dog while a small bird sings in the old tree near the river "
         "and children play with a red ball on the green grass under the warm afternoon sun of early summer").split()
ANSWER_WORDS = (1, 3, 6, 10, 16, 23, 31, 40)


def test_accumulated_micro_batches_equal_one_large_batch(train, tiny_model_dir, tmp_path):
    """Samples with 1 to 40 answer words differ widely in trained tokens, so averaging the loss per
    micro-batch instead of per token, or scaling the summed gradient wrongly, would show. Plain SGD
    without clipping keeps any gradient scale error visible in the weights (Adam would hide it). Each
    step covers all 8 samples; both runs log the same loss at every step and end with the same
    weights, after moving them far more than the tolerance."""
    records = [conversation(f"Say {n} words.", " ".join(WORDS[:n]), id=f"words-{n}") for n in ANSWER_WORDS]
    data = write_jsonl(tmp_path / "words.jsonl", records)
    settings = (f"data.train_files={files_list(data)}", "data.pack=false", "training.max_steps=3", "training.optim=sgd",
                "training.learning_rate=0.5", "training.weight_decay=0", "training.max_grad_norm=1e9")
    micro, whole = tmp_path / "micro", tmp_path / "whole"
    train(micro, *settings, "training.batch_size=1", "training.gradient_accumulation_steps=8")
    train(whole, *settings, "training.batch_size=8", "training.gradient_accumulation_steps=1")

    assert_same_losses(losses_by_step(micro), losses_by_step(whole), rtol=1e-4)
    assert sorted(losses_by_step(micro)) == [1, 2, 3]
    start = load_weights(tiny_model_dir / "model.safetensors")
    micro_weights, whole_weights = load_weights(micro / "model.safetensors"), load_weights(whole / "model.safetensors")
    moved = max((micro_weights[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, f"training moved no weight by more than {moved:.3g}; the comparison would prove nothing"
    assert_same_weights(micro_weights, whole_weights, atol=1e-5)
