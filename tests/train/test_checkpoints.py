"""Only what belle marked is removed, rotated or resumed from: a foreign `checkpoint-N` is left alone."""

from types import SimpleNamespace

from belle.train.checkpoints import (
    IN_PROGRESS,
    MARKER,
    CheckpointCallback,
    list_checkpoints,
    remove_incomplete,
    resolve_resume,
)


def checkpoint(root, step, *markers):
    """`root/checkpoint-STEP` holding a weights file and the given marker files."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    for marker in markers:
        (path / marker).write_text("{}")
    return path


def test_only_checkpoints_belle_marked_in_progress_are_removed(tmp_path):
    complete = checkpoint(tmp_path, 5, MARKER)
    half_written = checkpoint(tmp_path, 10, IN_PROGRESS)
    foreign = checkpoint(tmp_path, 15)
    finished_late = checkpoint(tmp_path, 20, IN_PROGRESS, MARKER)
    assert [(s, state) for s, _, state in list_checkpoints(tmp_path)] == [
        (5, "complete"), (10, "in progress"), (15, "foreign"), (20, "complete")]
    assert remove_incomplete(tmp_path) == [half_written]
    assert not half_written.exists()
    assert (foreign / "model.safetensors").read_bytes() == b"weights"
    assert complete.is_dir() and finished_late.is_dir()


def test_auto_resume_never_picks_a_newer_foreign_checkpoint(tmp_path):
    complete = checkpoint(tmp_path, 5, MARKER)
    checkpoint(tmp_path, 50)
    checkpoint(tmp_path, 60, IN_PROGRESS)
    assert resolve_resume(tmp_path, "auto") == complete
    assert resolve_resume(tmp_path, "force") == complete


def test_rotation_counts_and_removes_only_belles_complete_checkpoints(tmp_path):
    foreign_old = checkpoint(tmp_path, 1)
    checkpoint(tmp_path, 2, MARKER)
    checkpoint(tmp_path, 4, MARKER)
    foreign_new = checkpoint(tmp_path, 5)
    checkpoint(tmp_path, 6, MARKER)
    CheckpointCallback(save_total_limit=2)._rotate(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-4", "checkpoint-5", "checkpoint-6"]
    assert foreign_old.is_dir() and foreign_new.is_dir()


def test_a_checkpoint_is_marked_in_progress_before_the_trainer_saves_and_complete_after(tmp_path):
    """The callback's two halves, driven as the Trainer drives them: on_step_end (the save was just
    decided), the Trainer's own writes, then on_save."""
    callback = CheckpointCallback(save_total_limit=None)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=3, epoch=0.5, is_world_process_zero=True)
    callback.on_step_end(args, state, SimpleNamespace(should_save=False))
    assert list_checkpoints(tmp_path) == []
    callback.on_step_end(args, state, SimpleNamespace(should_save=True))
    folder = tmp_path / "checkpoint-3"
    assert list_checkpoints(tmp_path) == [(3, folder, "in progress")]
    (folder / "model.safetensors").write_bytes(b"weights")
    assert remove_incomplete(tmp_path) == [folder], "a run killed here leaves a folder the next run removes"
    callback.on_step_end(args, state, SimpleNamespace(should_save=True))
    (folder / "model.safetensors").write_bytes(b"weights")
    callback.on_save(args, state, SimpleNamespace(should_save=True))
    assert list_checkpoints(tmp_path) == [(3, folder, "complete")]
    assert not (folder / IN_PROGRESS).exists()


def test_saving_again_into_a_complete_checkpoint_takes_its_marker_away_first(tmp_path):
    folder = checkpoint(tmp_path, 3, MARKER)
    callback = CheckpointCallback(save_total_limit=None)
    state = SimpleNamespace(global_step=3, epoch=0.5, is_world_process_zero=True)
    callback.on_step_end(SimpleNamespace(output_dir=str(tmp_path)), state, SimpleNamespace(should_save=True))
    assert list_checkpoints(tmp_path) == [(3, folder, "in progress")]
