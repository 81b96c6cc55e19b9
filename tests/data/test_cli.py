"""`belle data tokenize` end to end: the files it writes and what it prints."""

import json
from pathlib import Path

import pytest

from tests.helpers import read_jsonl

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


@pytest.mark.slow
def test_tokenize_writes_samples_with_masks_and_stats(belle_cli, tiny_model_dir, tmp_path):
    out = tmp_path / "tokens.jsonl"
    result = belle_cli("data", "tokenize", "--model", str(tiny_model_dir), "--input", str(SAMPLES / "belle_conversations.jsonl"),
                       "--output", str(out), "--max-length", "512")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 24 and set(rows[0]) == {"id", "input_ids", "labels"}
    assert rows[0]["id"] == "sample-1"
    assert all(len(r["input_ids"]) == len(r["labels"]) <= 512 for r in rows)
    assert all(r["labels"][-1] == r["input_ids"][-1] != -100 for r in rows)
    stats = json.loads((tmp_path / "tokens.jsonl.stats.json").read_text())
    assert stats["template"] == "belle" and stats["samples"] == 24 and stats["records"] == 24
    assert "samples kept:   24" in result.stdout


@pytest.mark.slow
def test_tokenize_packs_a_folder_of_mixed_formats_and_reports_rejects(belle_cli, tiny_model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("belle_conversations.jsonl", "alpaca.json", "multiturn_chat.jsonl", "messages.jsonl"):
        (folder / name).write_text((SAMPLES / name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "bad.jsonl").write_text('{"oops"\n{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    out = tmp_path / "packed.jsonl"
    result = belle_cli("data", "tokenize", "--model", str(tiny_model_dir), "--template", "chatml", "--input", str(folder),
                       "--output", str(out), "--max-length", "1024", "--pack")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert set(rows[0]) == {"ids", "input_ids", "labels", "position_ids"}
    assert sum(len(r["ids"]) for r in rows) == 24 + 16 + 10 + 12
    for row in rows:
        assert len(row["input_ids"]) <= 1024 and row["position_ids"].count(0) == len(row["ids"])
    stats = json.loads((tmp_path / "packed.jsonl.stats.json").read_text())
    assert stats["template"] == "chatml" and stats["rows"] == len(rows)
    assert stats["rejected"] == {"malformed JSON": 1, "no assistant turn": 1}
    assert "packing efficiency" in result.stdout
    rejected = (tmp_path / "packed.jsonl.rejected.txt").read_text().splitlines()
    assert rejected == [f"{folder / 'bad.jsonl'}:1: malformed JSON: Expecting ':' delimiter",
                        f"{folder / 'bad.jsonl'}:2: no assistant turn"]
    assert f"{folder / 'bad.jsonl'}:1: malformed JSON" in result.stderr


def test_tokenize_bad_arguments_are_clear_errors(tiny_model_dir, tmp_path, capsys):
    from belle.cli import main

    sample, output = str(SAMPLES / "belle_conversations.jsonl"), str(tmp_path / "o.jsonl")
    for args, message in (
        (["--model", str(tmp_path / "nope"), "--input", sample], "nope: no such folder"),
        (["--model", str(tiny_model_dir), "--input", sample, "--pack"], "--pack needs --max-length"),
        (["--model", str(tiny_model_dir), "--template", "vicuna", "--input", sample], "unknown template 'vicuna'"),
        (["--model", str(tiny_model_dir), "--input", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file or folder"),
    ):
        assert main(["data", "tokenize", *args, "--output", output]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
