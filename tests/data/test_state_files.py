"""Small state files (stats, summaries, listings, belle.json, configs) are replaced whole, never
rewritten in place: a reader that opened the old file (or a crash halfway) never sees half of one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import pytest


def _write_report(folder: Path) -> list[Path]:
    from belle.data.progress import write_report

    output = folder / "out.jsonl"
    write_report(output, {"kept": 1}, ["- kept: 1"])
    return [folder / "out.jsonl.stats.json", folder / "out.jsonl.summary.md"]


def _report_rejects(folder: Path) -> list[Path]:
    from belle.records import report_rejects

    report_rejects(["a.jsonl:1: malformed JSON"], folder / "out.jsonl")
    return [folder / "out.jsonl.rejected.txt"]


def _checkpoint_info(folder: Path) -> list[Path]:
    from belle.modeling import write_checkpoint_info

    write_checkpoint_info(folder, "belle", note="new")
    return [folder / "belle.json"]


def _save_config(folder: Path) -> list[Path]:
    from belle.config import save_config

    @dataclasses.dataclass
    class Config:
        output_dir: str = "runs/a"

    save_config(Config(), folder / "config.yaml")
    return [folder / "config.yaml"]


def _data_stats(folder: Path) -> list[Path]:
    from belle.data.tools import stats

    record = {"id": "a", "conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "你好！"}]}
    (folder / "in.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    stats([str(folder / "in.jsonl")], output=folder / "figures.json", bins=5)
    return [folder / "figures.json"]


WRITERS = [_write_report, _report_rejects, _checkpoint_info, _save_config, _data_stats]


@pytest.mark.parametrize("write", WRITERS, ids=lambda f: f.__name__.strip("_"))
def test_a_state_file_is_replaced_whole(tmp_path: Path, write: Callable[[Path], list[Path]]) -> None:
    files = write(tmp_path)
    for path in files:
        path.write_bytes(b"the old file")
    handles = {path: path.open("rb") for path in files}
    try:
        write(tmp_path)
        for path, handle in handles.items():
            assert handle.read() == b"the old file", f"{path.name} was rewritten in place"
            assert path.read_bytes() != b"the old file"
    finally:
        for handle in handles.values():
            handle.close()
    assert not list(tmp_path.glob(".*.tmp"))
