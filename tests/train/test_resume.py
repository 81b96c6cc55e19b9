"""A run killed with SIGKILL mid-epoch and restarted ends exactly where an uninterrupted run does."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import cli_env, read_jsonl, write_jsonl
from tests.train.helpers import (
    REPO,
    SAMPLES,
    assert_same_losses,
    assert_same_weights,
    files_list,
    load_weights,
    losses_by_step,
    train_overrides,
)

pytestmark = pytest.mark.slow

# 15 steps: a kill after checkpoint 10 leaves 5 steps to resume through, and checkpoint 5 to keep.
SETTINGS = ("training.max_steps=15", "training.save_steps=5", "training.batch_size=2", "training.learning_rate=1e-3",
            "data.pack=false", "training.seed=7")


def kill_at_checkpoint(command, out, step, timeout=300):
    """Start `command`, and SIGKILL it as soon as `checkpoint-STEP/COMPLETE` appears in `out`."""
    marker = out / f"checkpoint-{step}" / "COMPLETE"
    process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    output = process.communicate()[0]
    assert marker.exists(), f"{marker} never appeared (exit {process.returncode}):\n{output[-4000:]}"
    assert process.returncode == -signal.SIGKILL, f"the run ended by itself before the kill (exit {process.returncode})"


def snapshot(folder):
    """(name, size, mtime) of every file in a folder, to tell whether a later run rewrote it."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_resume_after_sigkill_matches_an_uninterrupted_run(train, tiny_model_dir, tmp_path):
    """With 216 samples (108 steps an epoch) the kill after checkpoint 10 lands mid-epoch and
    before the final save. The restart (resume=auto) removes a half-written checkpoint-999 that belle
    marked IN_PROGRESS, leaves a foreign checkpoint-7 (no belle marker) alone, keeps the earlier
    checkpoints as they were, and finishes with the same per-step losses and the same weights as a
    run that was never interrupted."""
    base = read_jsonl(SAMPLES / "belle_conversations.jsonl")
    data = write_jsonl(tmp_path / "data.jsonl", [{**r, "id": f"{r['id']}-{k}"} for k in range(9) for r in base])
    settings = (*SETTINGS, f"data.train_files={files_list(data)}")

    straight = tmp_path / "straight"
    train(straight, *settings)

    resumed = tmp_path / "resumed"
    kill_at_checkpoint([sys.executable, "-m", "belle", "train", *train_overrides(tiny_model_dir, resumed, *settings)], resumed, 10)
    assert not (resumed / "model.safetensors").exists(), "the final model was already written: the kill did not land mid-run"
    junk = resumed / "checkpoint-999"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half-written")
    (junk / "trainer_state.json").write_text('{"global_step": 999')
    (junk / "IN_PROGRESS").write_text("{}")
    foreign = resumed / "checkpoint-7"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text('{"global_step": 7}')
    kept = snapshot(resumed / "checkpoint-5")

    rerun = train(resumed, *settings, "resume=auto")
    assert snapshot(resumed / "checkpoint-5") == kept, "checkpoint-5 was rewritten: the rerun started over instead of resuming"
    assert not junk.exists()
    assert (foreign / "trainer_state.json").read_text() == '{"global_step": 7}' and f"left {foreign} alone" in rerun.stderr
    assert (resumed / "checkpoint-15" / "COMPLETE").is_file()
    assert_same_losses(losses_by_step(straight), losses_by_step(resumed), atol=1e-5)
    assert sorted(losses_by_step(resumed)) == list(range(1, 16))
    assert_same_weights(load_weights(straight / "model.safetensors"), load_weights(resumed / "model.safetensors"), atol=1e-5)
