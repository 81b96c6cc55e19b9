"""Checkpoints that are complete or ignored: a `COMPLETE` marker, resume from the newest marked one.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states, trainer
state), so a process killed mid-save leaves a folder that looks like a checkpoint but is not one.
`CheckpointCallback` writes the marker once every rank has finished saving, and only then removes
checkpoints beyond `save_total_limit`, so a complete checkpoint always survives.
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

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match[1]) if match and path.is_dir() else None


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for every `checkpoint-N` folder, oldest first."""
    root = Path(output_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        step = checkpoint_step(path)
        if step is not None:
            found.append((step, path, (path / MARKER).is_file()))
    return sorted(found)


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) for every checkpoint that holds its `COMPLETE` marker, oldest first."""
    return [(step, path) for step, path, done in list_checkpoints(output_dir) if done]


def resolve_resume(output_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `never` -> None, `auto` -> the newest complete one (or None),
    anything else -> that folder, which must be a complete checkpoint."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / MARKER).is_file():
            raise ValueError(f"resume={resume}: not a complete checkpoint (it has no {MARKER} marker)")
        return path
    complete = complete_checkpoints(output_dir)
    return complete[-1][1] if complete else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete half-written checkpoints (from a killed run) so a resumed run never mixes their files
    with its own; returns what was removed."""
    removed = []
    for _, path, done in list_checkpoints(output_dir):
        if not done:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class CheckpointCallback(TrainerCallback):
    """Marks each saved checkpoint complete after all ranks saved it, then applies `save_total_limit`."""

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            marker = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
            (path / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            self._rotate(Path(args.output_dir))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _rotate(self, output_dir: Path) -> None:
        if self.save_total_limit is None:
            return
        for _, path in complete_checkpoints(output_dir)[: -self.save_total_limit]:
            logger.info("removing %s (save_total_limit=%d)", path, self.save_total_limit)
            shutil.rmtree(path, ignore_errors=True)
