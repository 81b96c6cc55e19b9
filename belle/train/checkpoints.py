"""Checkpoints that are complete or ignored: belle's markers, resume from the newest complete one.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states, trainer
state), so a process killed mid-save leaves a folder that looks like a checkpoint but is not one.
`CheckpointCallback` writes an `IN_PROGRESS` marker into the folder before the Trainer saves into it,
and a `COMPLETE` marker once every rank has finished saving (then removes `IN_PROGRESS`, and only
then checkpoints beyond `save_total_limit`, so a complete checkpoint always survives). A folder
with neither marker was not written by `belle train` (a plain Trainer run, a copy, an older belle):
it is never resumed from, rotated or removed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from belle.cli import UsageError
from belle.records import write_text_atomic

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
IN_PROGRESS = "IN_PROGRESS"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match[1]) if match and path.is_dir() else None


def checkpoint_state(path: Path) -> str:
    """`complete`, `in progress` (belle started saving it and never finished) or `foreign` (no
    belle marker: not written by `belle train`)."""
    if (path / MARKER).is_file():
        return "complete"
    return "in progress" if (path / IN_PROGRESS).is_file() else "foreign"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path, str]]:
    """(step, folder, state) for every `checkpoint-N` folder, oldest first; see `checkpoint_state`."""
    root = Path(output_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        step = checkpoint_step(path)
        if step is not None:
            found.append((step, path, checkpoint_state(path)))
    return sorted(found)


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) for every checkpoint that holds its `COMPLETE` marker, oldest first."""
    return [(step, path) for step, path, state in list_checkpoints(output_dir) if state == "complete"]


def foreign_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) for every `checkpoint-N` folder without a belle marker, oldest first."""
    return [(step, path) for step, path, state in list_checkpoints(output_dir) if state == "foreign"]


def resolve_resume(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `never` -> None, `auto` or `force` -> the newest complete one
    (or None), anything else -> that folder, which must be a complete checkpoint."""
    if resume == "never":
        return None
    if resume not in ("auto", "force"):
        path = Path(resume)
        if not (path / MARKER).is_file():
            raise UsageError(f"resume: {resume} is not a complete belle checkpoint (it has no {MARKER} marker)")
        return path
    complete = complete_checkpoints(output_dir)
    return complete[-1][1] if complete else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete the checkpoints belle marked in progress and never completed (a run killed while
    saving), so a resumed run never mixes their files with its own; returns what was removed.
    Folders without a belle marker are left alone."""
    removed = []
    for _, path, state in list_checkpoints(output_dir):
        if state == "in progress":
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint in progress before the Trainer saves it and complete after all ranks
    saved it, then applies `save_total_limit` to belle's complete checkpoints."""

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer decides to save in `on_step_end` or `on_epoch_end` (DefaultFlowCallback, which
        runs before this one) and saves right after, into `checkpoint-{global_step}`."""
        self._mark_in_progress(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark_in_progress(args, state, control)

    def _mark_in_progress(self, args: Any, state: Any, control: Any) -> None:
        if control.should_save and state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_text_atomic(path / IN_PROGRESS, json.dumps({"step": state.global_step, "time": time.time()}) + "\n")
            (path / MARKER).unlink(missing_ok=True)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            marker = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
            write_text_atomic(path / MARKER, json.dumps(marker) + "\n")
            (path / IN_PROGRESS).unlink(missing_ok=True)
            self._rotate(Path(args.output_dir))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _rotate(self, output_dir: Path) -> None:
        """Remove belle's oldest complete checkpoints beyond the limit; nothing else is counted or touched."""
        if self.save_total_limit is None:
            return
        for _, path in complete_checkpoints(output_dir)[: -self.save_total_limit]:
            logger.info("removing %s (save_total_limit=%d)", path, self.save_total_limit)
            shutil.rmtree(path, ignore_errors=True)
