"""A run folder holds one run: a foreign checkpoint survives it, a changed run is refused until forced."""

import json

import pytest

from tests.train.helpers import SAMPLES, files_list, losses_by_step, tail, train_overrides

SETTINGS = ("training.max_steps=2", "training.save_steps=2", "data.pack=false",
            f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}")


def fingerprint(out):
    return json.loads((out / "run_fingerprint.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_foreign_checkpoint_survives_and_a_changed_run_waits_for_resume_force(train, belle_main, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    foreign = out / "checkpoint-3"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text('{"global_step": 3}')

    first = train(out, *SETTINGS)
    assert f"left {foreign} alone" in first.stderr
    assert (foreign / "trainer_state.json").read_text() == '{"global_step": 3}'
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and not (out / "checkpoint-2" / "IN_PROGRESS").exists()
    assert fingerprint(out)["training.learning_rate"] == 2e-05
    model = (out / "model.safetensors").read_bytes()

    # The refusal is a usage error, so it runs in this process (no model loads before it).
    changed = belle_main("train", *train_overrides(tiny_model_dir, out, *SETTINGS, "training.learning_rate=0.001", "training.max_steps=4"))
    assert changed.returncode == 2, tail(changed)
    assert "training.learning_rate: 2e-05 -> 0.001" in changed.stderr and "training.max_steps: 2 -> 4" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert (out / "model.safetensors").read_bytes() == model and not (out / "checkpoint-4").exists()

    forced = train(out, *SETTINGS, "training.learning_rate=0.001", "training.max_steps=4", "resume=force")
    assert "resume=force: continuing" in forced.stderr and f"resuming from {out / 'checkpoint-2'}" in forced.stderr
    assert sorted(losses_by_step(out)) == [1, 2, 3, 4]
    assert (out / "checkpoint-4" / "COMPLETE").is_file() and foreign.is_dir()
    assert fingerprint(out)["training.learning_rate"] == 0.001
