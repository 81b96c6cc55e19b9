"""Hostile input to every CLI verb of the model, models, vocab, data and gptq jobs: a missing path,
a folder where a file belongs and the reverse, an empty, garbage or binary file, a folder that is not
a model, an output in a place that cannot be written, numbers out of range, unknown choices. Each ends
in exit status 2 and one message naming the problem, never a traceback (see data/README.md,
"Hostile input: the CLI")."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from belle.cli import _call
from belle.records import DataError

LLM = ["--model", "m", "--base-url", "http://127.0.0.1:9/v1"]  # a closed port: no case gets as far as a request
NOT_WRITABLE = "/sys/belle-hostile"  # read-only even for root

# (argv, a piece of the message); {name} is a path from the `paths` fixture.
CASES = [
    # belle model tiny
    (["model", "tiny", "--out", "{file}"], "a file where a folder is needed"),
    (["model", "tiny", "--out", "{file}/sub"], "a file where a folder is needed"),
    (["model", "tiny", "--out", NOT_WRITABLE], NOT_WRITABLE),
    (["model", "tiny", "--out", "{dir}"], "a folder with other files in it"),
    (["model", "tiny", "--out", "{tmp}/t", "--heads", "0"], "--heads 0: every size must be at least 1"),
    (["model", "tiny", "--out", "{tmp}/t", "--kv-heads", "0"], "--kv-heads 0"),
    (["model", "tiny", "--out", "{tmp}/t", "--hidden-size", "0"], "--hidden-size 0"),
    (["model", "tiny", "--out", "{tmp}/t", "--vocab-size", "-5"], "--vocab-size -5"),
    (["model", "tiny", "--out", "{tmp}/t", "--template", "bogus"], "--template must be one of"),
    # belle models decrypt
    (["models", "decrypt", "{missing}", "{dir}", "{tmp}/o"], "does not exist"),
    (["models", "decrypt", "{file}", "{dir}", "{tmp}/o"], "does not exist"),
    (["models", "decrypt", "{empty_dir}", "{dir}", "{tmp}/o"], "no encrypted files"),
    (["models", "decrypt", "{enc_dir}", "{dir}", "{tmp}/o"], "consolidated.00.pth does not exist"),
    (["models", "decrypt", "{enc_dir}", "{file}", "{tmp}/o"], "shorter than its 32-byte sha256 header"),
    # belle vocab extend
    (["vocab", "extend", "--base", "{missing}", "--corpus", "{corpus}", "--vocab-size", "300", "--out", "{tmp}/v"], "no config.json"),
    (["vocab", "extend", "--base", "{dir}", "--corpus", "{corpus}", "--vocab-size", "300", "--out", "{tmp}/v"], "no config.json"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{dir}", "--vocab-size", "300", "--out", "{tmp}/v"], "corpus file not found"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{empty}", "--vocab-size", "300", "--out", "{tmp}/v"], "0 non-blank lines"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{binary}", "--vocab-size", "300", "--out", "{tmp}/v"], "not UTF-8"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{corpus}", "--vocab-size", "-5", "--out", "{tmp}/v"], "--vocab-size must be at least 1"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{corpus}", "--vocab-size", "300", "--out", "{file}"], "not empty"),
    (["vocab", "extend", "--base", "{model}", "--corpus", "{corpus}", "--vocab-size", "300", "--out", NOT_WRITABLE], NOT_WRITABLE),
    # belle data convert
    (["data", "convert", "--input", "{missing}", "--output", "{tmp}/c.jsonl"], "no such file or folder"),
    (["data", "convert", "--input", "{empty_dir}", "--output", "{tmp}/c.jsonl"], "no .json or .jsonl files"),
    (["data", "convert", "--input", "{good}", "--output", "{dir}"], "a folder where a file is needed"),
    (["data", "convert", "--input", "{good}", "--output", "{file}/c.jsonl"], "a file where a folder is needed"),
    (["data", "convert", "--input", "{good}", "--output", NOT_WRITABLE + ".jsonl"], NOT_WRITABLE + ".jsonl: "),
    (["data", "convert", "--input", "{good}", "--output", "{tmp}/c.jsonl", "--to", "bogus"], "--to must be one of"),
    (["data", "convert", "--input", "{good}", "--output", "{tmp}/c.jsonl", "--from", "bogus"], "invalid choice"),
    # belle data tokenize
    (["data", "tokenize", "--model", "{dir}", "--input", "{good}", "--output", "{tmp}/t.jsonl"], "not a tokenizer folder"),
    (["data", "tokenize", "--model", "{missing}", "--input", "{good}", "--output", "{tmp}/t.jsonl"], "no such folder"),
    (["data", "tokenize", "--model", "{model}", "--input", "{missing}", "--output", "{tmp}/t.jsonl"], "no such file"),
    (["data", "tokenize", "--model", "{model}", "--input", "{good}", "--output", "{tmp}/t.jsonl", "--max-length", "0"], "--max-length"),
    (["data", "tokenize", "--model", "{model}", "--input", "{good}", "--output", "{tmp}/t.jsonl", "--num-proc", "-1"], "--num-proc"),
    (["data", "tokenize", "--model", "{model}", "--input", "{good}", "--output", "{tmp}/t.jsonl", "--template", "bogus"], "unknown template"),
    (["data", "tokenize", "--model", "{model}", "--input", "{good}", "--output", NOT_WRITABLE + ".jsonl"], NOT_WRITABLE),
    # belle data stats, dedup, filter
    (["data", "stats", "{missing}"], "no such file or folder"),
    (["data", "stats", "{empty}"], "no readable records"),
    (["data", "stats", "{garbage}"], "no readable records"),
    (["data", "stats", "{good}", "--bins", "0"], "--bins must be at least 1"),
    (["data", "stats", "{good}", "--model", "{dir}"], "not a tokenizer folder"),
    (["data", "stats", "{good}", "--output", "{dir}"], "a folder where a file is needed"),
    (["data", "stats", "{good}", "--output", NOT_WRITABLE + ".json"], NOT_WRITABLE + ".json: "),
    (["data", "dedup", "--input", "{missing}", "--output", "{tmp}/d.jsonl"], "no such file or folder"),
    (["data", "dedup", "--input", "{good}", "--output", "{tmp}/d.jsonl", "--threshold", "2"], "--threshold must be in (0, 1]"),
    (["data", "dedup", "--input", "{good}", "--output", "{tmp}/d.jsonl", "--threshold", "0"], "--threshold must be in (0, 1]"),
    (["data", "dedup", "--input", "{good}", "--output", "{tmp}/d.jsonl", "--on", "bogus"], "invalid choice"),
    (["data", "filter", "--input", "{good}", "--output", "{tmp}/f.jsonl", "--max-chars", "0"], "--max-chars at least 1"),
    (["data", "filter", "--input", "{good}", "--output", "{tmp}/f.jsonl", "--min-chars", "-1"], "--min-chars must be at least 0"),
    (["data", "filter", "--input", "{good}", "--output", "{tmp}/f.jsonl", "--language", "fr"], "invalid choice"),
    # belle data generate, chat
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "0"], "--num must be at least 1"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--seeds", "{missing}"], "no such file"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--seeds", "{dir}"], "a folder, not a file"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--seeds", "{garbage}"], "malformed JSON"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--seeds", "{empty}"], "0 tasks"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--max-tokens", "0"], "--max-tokens"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--max-requests", "-1"], "--max-requests"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--temperature", "-1"], "--temperature"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--concurrency", "0"], "concurrency"),
    (["data", "generate", *LLM, "--output", "{dir}", "--num", "5"], "a folder where a file is needed"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--cache", "{dir}"], "not a usable reply cache"),
    (["data", "generate", *LLM, "--output", "{tmp}/g.jsonl", "--num", "5", "--cache", "{garbage}"], "not a usable reply cache"),
    (["data", "generate", *LLM, "--output", "{file}", "--num", "5"], "a_file.txt:1: malformed JSON"),
    (["data", "generate", *LLM, "--output", "{notes}", "--num", "5"], "notes.jsonl:1: not a JSON object"),
    (["data", "chat", *LLM, "--seeds", "{missing}", "--output", "{tmp}/ch.jsonl"], "no such file"),
    (["data", "chat", *LLM, "--seeds", "{dir}", "--output", "{tmp}/ch.jsonl"], "a folder, not a file"),
    (["data", "chat", *LLM, "--seeds", "{empty}", "--output", "{tmp}/ch.jsonl"], "no seeds in this file"),
    (["data", "chat", *LLM, "--seeds", "{garbage}", "--output", "{tmp}/ch.jsonl"], "garbage.jsonl:1: malformed JSON"),
    (["data", "chat", *LLM, "--seeds", "{binary_txt}", "--output", "{tmp}/ch.jsonl"], "not UTF-8"),
    (["data", "chat", *LLM, "--seeds", "{file}", "--output", "{tmp}/ch.jsonl", "--rounds", "0"], "--rounds"),
    (["data", "chat", *LLM, "--seeds", "{file}", "--output", "{tmp}/ch.jsonl", "--similarity", "5"], "--similarity"),
    (["data", "chat", *LLM, "--seeds", "{file}", "--output", "{tmp}/ch.jsonl", "--max-tokens", "-1"], "--max-tokens"),
    # belle gptq quantize, eval
    (["gptq", "quantize", "--model", "{dir}", "--out", "{tmp}/q", "--method", "rtn"], "not a model folder"),
    (["gptq", "quantize", "--model", "{bad_config}", "--out", "{tmp}/q", "--method", "rtn"], "config.json: not a JSON file"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{file}", "--method", "rtn"], "not an empty folder"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--bits", "5", "--method", "rtn"], "--bits 5"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--calibration", "{missing}"], "no such file"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--calibration", "{empty}"], "no calibration text"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--calibration", "{binary_txt}"], "UTF-8"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--calibration", "{corpus}", "--nsamples", "0"], "--nsamples 0"),
    (["gptq", "quantize", "--model", "{model}", "--out", "{tmp}/q", "--method", "bogus"], "invalid choice"),
    (["gptq", "eval", "--model", "{missing}", "--text", "{corpus}"], "no such folder"),
    (["gptq", "eval", "--model", "{dir}", "--text", "{corpus}"], "not a model folder"),
    (["gptq", "eval", "--model", "{model}", "--text", "{dir}"], "a folder, not a file"),
    (["gptq", "eval", "--model", "{model}", "--text", "{empty}"], "no text"),
    (["gptq", "eval", "--model", "{model}", "--text", "{binary}"], "not UTF-8"),
    (["gptq", "eval", "--model", "{model}", "--text", "{corpus}", "--seqlen", "0"], "--seqlen must be at least 1"),
    (["gptq", "eval", "--model", "{model}", "--text", "{corpus}", "--output", "{file}"], "a file; name a folder"),
    # belle serve
    (["serve", "--model", "{model}", "--port", "-1"], "--port must be between 0 and 65535"),
    (["serve", "--model", "{model}", "--max-tokens", "0"], "--max-tokens must be at least 1"),
]


@pytest.fixture
def paths(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Every kind of bad path a case names, plus a good record, a corpus and the tiny model."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a model\n")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "garbage.jsonl").write_text("not json at all\n{oops\n")
    binary = bytes([0xFD, 0xFF, 0x80, 0x81]) * 40
    (tmp_path / "binary.bin").write_bytes(binary)
    (tmp_path / "binary.txt").write_bytes(binary)
    (tmp_path / "a_file.txt").write_text("你好\n")
    (tmp_path / "notes.jsonl").write_text("my notes, no final newline")
    record = {"id": "a", "conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "你好！"}]}
    (tmp_path / "good.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n")
    (tmp_path / "corpus.txt").write_text("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n本是同根生，相煎何太急。\n")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json.enc").write_bytes(b"short")
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "config.json").write_text("{garbage")
    (tmp_path / "bad_config" / "tokenizer.json").write_text("{}")
    names = {"dir": "folder", "empty_dir": "empty_dir", "empty": "empty.jsonl", "garbage": "garbage.jsonl",
             "binary": "binary.bin", "binary_txt": "binary.txt", "file": "a_file.txt", "good": "good.jsonl",
             "corpus": "corpus.txt", "notes": "notes.jsonl", "enc_dir": "enc", "bad_config": "bad_config", "missing": "missing.jsonl"}
    return {"tmp": str(tmp_path), "model": str(tiny_model_dir), **{k: str(tmp_path / v) for k, v in names.items()}}


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(argv[:2]) + f" #{i}" for i, (argv, _) in enumerate(CASES)])
def test_hostile_input_exits_2_with_one_message(argv, message, paths, belle_main):
    result = belle_main(*(arg.format(**paths) for arg in argv))
    code, err = result.returncode, result.stderr
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert message.format(**paths) in err, err[-2000:]
    assert err.count("error:") == 1, err[-2000:]


def test_a_file_the_job_did_not_write_is_never_cut(paths, belle_main):
    """An --output that is not a JSON-lines file of this job is refused whole, not truncated as a
    torn line; a hand-written one without a final newline keeps its last record."""
    notes = Path(paths["notes"])
    assert belle_main("data", "generate", *LLM, "--output", notes, "--num", "5").returncode == 2
    assert notes.read_text() == "my notes, no final newline"
    from belle.records import resume_records

    handwritten = Path(paths["tmp"]) / "handwritten.jsonl"
    handwritten.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in resume_records(handwritten)] == ["a", "b"]
    assert handwritten.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    torn = Path(paths["tmp"]) / "torn.jsonl"
    torn.write_text('{"id": "a"}\n{"id": "b", "te')
    assert [r["id"] for r in resume_records(torn)] == ["a"]
    assert torn.read_text() == '{"id": "a"}\n'


def test_nothing_is_left_behind_by_a_refused_output(paths, belle_main):
    """A refused output leaves the folder as it was: no temporary file beside it."""
    before = sorted(os.listdir(paths["tmp"]))
    assert belle_main("data", "convert", "--input", paths["good"], "--output", paths["dir"]).returncode == 2
    assert sorted(os.listdir(paths["tmp"])) == before


# ---- the central translation in belle.cli._call ----------------------------------------------


def test_data_error_is_one_message_and_exit_2(capsys):
    def verb() -> None:
        raise DataError("seeds.jsonl:3: instruction: missing")

    assert _call(verb, {}, "belle x") == 2
    assert capsys.readouterr().err == "belle x: error: seeds.jsonl:3: instruction: missing\n"


@pytest.mark.parametrize("error", [FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError])
def test_an_os_error_about_a_path_the_user_named_is_one_message(tmp_path, error, capsys):
    output = tmp_path / "out.jsonl"

    def verb(*, output: Path) -> None:
        raise error(errno.EIO, "it went wrong", str(output.with_name(f".{output.name}.123.tmp")))

    assert _call(verb, {"output": output}, "belle x") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"belle x: error: {output}: ") and err.count("\n") == 1


def test_an_os_error_inside_a_named_folder_names_that_path(tmp_path, capsys):
    def verb(*, model: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(model / "config.json"))

    assert _call(verb, {"model": tmp_path}, "belle x") == 2
    assert capsys.readouterr().err == f"belle x: error: {tmp_path / 'config.json'}: No such file or directory\n"


def test_an_os_error_about_another_path_is_a_bug_and_keeps_its_traceback(tmp_path):
    def verb(*, output: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/usr/share/belle-internal/table.json")

    with pytest.raises(FileNotFoundError):
        _call(verb, {"output": tmp_path / "out.jsonl"}, "belle x")


def test_other_errors_keep_their_traceback(tmp_path):
    def verb(*, output: Path) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _call(verb, {"output": tmp_path / "out.jsonl"}, "belle x")


# ---- belle.modeling: a path that is not a model --------------------------------------------------


@pytest.mark.parametrize(("layout", "message"), [
    ({}, "not a model folder (it has no config.json or adapter_config.json)"),
    ({"notes.txt": "x"}, "not a model folder"),
    (None, "no such model folder"),
    ("file", "a file, not a model folder"),
    ({"config.json": "{garbage", "tokenizer.json": "{}"}, "config.json: not a JSON file"),
    ({"adapter_config.json": "[1]"}, "adapter_config.json: expected a JSON object"),
])
def test_load_model_on_a_path_that_is_not_a_model_says_so(tmp_path, layout, message):
    from belle.modeling import ModelFolderError, load_model

    path = _lay_out(tmp_path / "not-a-model", layout)
    with pytest.raises(ModelFolderError, match=_escaped(message)):
        load_model(path, device="cpu")


@pytest.mark.parametrize(("layout", "message"), [
    ({"config.json": "{}"}, "not a tokenizer folder"),
    (None, "no such tokenizer folder"),
    ("file", "a file, not a tokenizer folder"),
])
def test_load_tokenizer_on_a_path_that_is_not_a_model_says_so(tmp_path, layout, message):
    from belle.modeling import ModelFolderError, load_tokenizer

    path = _lay_out(tmp_path / "not-a-model", layout)
    with pytest.raises(ModelFolderError, match=_escaped(message)):
        load_tokenizer(path)


def test_read_checkpoint_info_names_a_garbage_belle_json(tmp_path):
    from belle.modeling import ModelFolderError, read_checkpoint_info

    (tmp_path / "belle.json").write_text("{garbage")
    with pytest.raises(ModelFolderError, match="belle.json: not a JSON file"):
        read_checkpoint_info(tmp_path)


def _lay_out(path: Path, layout: dict[str, str] | str | None) -> Path:
    if layout == "file":
        path.write_text("x")
    elif layout is not None:
        path.mkdir()
        for name, text in layout.items():
            (path / name).write_text(text)
    return path


def _escaped(text: str) -> str:
    import re

    return re.escape(text)
