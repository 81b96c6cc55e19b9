"""The architecture matrix: every job of `belle.architectures.JOBS` through the CLI, in process, on a
tiny random model of every row of `MATRIX_ROWS`, one test per cell; a refused cell proves its refusal
(exit 2, the documented reason, nothing loaded). The table in train/README.md is the rendered one."""

from __future__ import annotations

import io
import json
import sys

import pytest

from belle.architectures import FAMILIES, JOBS, MATRIX_ROWS, MatrixRow, matrix_markdown, refusal
from belle.cli import main as belle
from tests.conftest import REPO, SAMPLES
from tests.helpers import read_jsonl

ROWS = {row.id: row for row in MATRIX_ROWS}
JOB = {job.id: job for job in JOBS}
QUICK = ("training.max_steps=2", "training.report_to=[]", "training.save_steps=100", "training.logging_steps=1",
         "data.max_length=128", "training.seed=0")
QUESTION = "为什么天空是蓝色的？"
MATRIX_START, MATRIX_END = "<!-- --8<-- [start:matrix] -->\n", "<!-- --8<-- [end:matrix] -->"


def test_readme_matrix_is_the_rendered_one():
    readme = (REPO / "train" / "README.md").read_text(encoding="utf-8")
    assert MATRIX_START in readme, "train/README.md has no architecture matrix section"
    shown = readme.split(MATRIX_START, 1)[1].split(MATRIX_END, 1)[0]
    assert shown.strip() == matrix_markdown().strip(), "paste belle.architectures.matrix_markdown() between the markers"


def test_matrix_names_every_family_and_job():
    table = matrix_markdown()
    assert {row.model_type for row in MATRIX_ROWS} == set(FAMILIES)
    assert all(f"`{job.command}`" in table for job in JOBS)
    assert table.count("refused (") == sum(refusal(row, job) is not None for row in MATRIX_ROWS for job in JOBS)


@pytest.fixture(scope="module")
def model_dir(arch_model):
    """`model_dir(row)`: the row's tiny model, the session's `arch_model` (read-only)."""

    def get(row: MatrixRow):
        return arch_model(row.model_type, tokenizer_kind=row.tokenizer_kind)

    return get


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `belle ARGV` in this process."""
    capsys.readouterr()
    status = belle([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def train(capsys, model, out, *overrides) -> tuple[int, str, str]:
    return run(capsys, "train", f"model.path={model}", f"output_dir={out}", *QUICK, *overrides)


def assert_ran(result: tuple[int, str, str]) -> None:
    status, out, err = result
    assert status == 0, f"exit {status}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


def assert_refused(result: tuple[int, str, str], reason: str) -> None:
    status, out, err = result
    assert status == 2 and " ".join(reason.split()) in " ".join(err.split()), f"exit {status}\n{err[-3000:]}"
    assert "Traceback" not in err


def conversations() -> str:
    return f"data.train_files=[{SAMPLES / 'belle_conversations.jsonl'}]"


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


# One function per job: (capsys, monkeypatch, the row, its model folder, a fresh folder to write in).


def cell_sft(capsys, monkeypatch, row, model, tmp):
    assert_ran(train(capsys, model, tmp / "sft", conversations()))
    assert (tmp / "sft" / "model.safetensors").is_file()


def cell_sft_packed(capsys, monkeypatch, row, model, tmp):
    result = train(capsys, model, tmp / "sft", conversations(), "data.pack=true")
    if reason := refusal(row, JOB["sft-packed"]):
        assert_refused(result, reason)
        assert not (tmp / "sft" / "model.safetensors").exists()
        return
    assert_ran(result)
    assert (tmp / "sft" / "model.safetensors").is_file()


def cell_lora_merge(capsys, monkeypatch, row, model, tmp):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from belle.modeling import load_tokenizer

    adapter, merged = tmp / "lora", tmp / "merged"
    assert_ran(train(capsys, model, adapter, conversations(), "method=lora", "training.learning_rate=1e-2"))
    assert_ran(run(capsys, "train", "merge", "--base", model, "--adapter", adapter, "--out", merged))
    text = f"Human: \n{QUESTION}\n\nAssistant: \n因为大气散射蓝光。"
    ids = load_tokenizer(merged)(text, return_tensors="pt").input_ids
    base_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base_model, str(adapter)).eval()
    expected = logits(adapted, ids)
    with adapted.disable_adapter():
        base = logits(adapted, ids)
    assert (expected - base).abs().max() > 1e-3, "the adapter barely changes the logits: the check would prove nothing"
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), ids),
                               expected, atol=1e-4, rtol=0)


def cell_pt(capsys, monkeypatch, row, model, tmp):
    assert_ran(train(capsys, model, tmp / "pt", "stage=pt", f"data.train_files=[{SAMPLES / 'pretrain.jsonl'}]"))
    assert (tmp / "pt" / "model.safetensors").is_file()


def cell_dpo(capsys, monkeypatch, row, model, tmp):
    assert_ran(train(capsys, model, tmp / "dpo", "stage=dpo", f"data.train_files=[{SAMPLES / 'dpo.jsonl'}]"))
    assert (tmp / "dpo" / "model.safetensors").is_file()


def cell_chat(capsys, monkeypatch, row, model, tmp):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n/exit\n"))
    status, out, err = run(capsys, "chat", "--cli", "--model", model, "--temperature", "0", "--max-new-tokens", "8")
    assert_ran((status, out, err))
    assert out.count("Assistant: ") == 1 and out.count("User: ") == 2, out  # one reply, then /exit read


def cell_serve(capsys, monkeypatch, row, model, tmp):
    """`belle serve` in this process, with uvicorn's socket replaced by an in-process client."""
    import uvicorn
    from fastapi.testclient import TestClient

    replies = []

    def answer_one(app, **_):
        with TestClient(app) as client:
            messages = [{"role": "user", "content": QUESTION}]
            body = {"model": "m", "messages": messages, "temperature": 0, "max_tokens": 8}
            replies.append(client.post("/v1/chat/completions", json=body))

    monkeypatch.setattr(uvicorn, "run", answer_one)
    assert_ran(run(capsys, "serve", "--model", f"m={model}", "--device", "cpu"))
    assert replies[0].status_code == 200, replies[0].text
    reply = replies[0].json()
    assert reply["choices"][0]["message"]["content"] and reply["usage"]["completion_tokens"] == 8


def cell_eval_generate(capsys, monkeypatch, row, model, tmp):
    answers = tmp / "answers.jsonl"
    assert_ran(run(capsys, "eval", "generate", "--model", model, "--output", answers, "--limit", "3",
                   "--max-new-tokens", "8", "--batch-size", "3"))
    records = read_jsonl(answers)
    assert len(records) == 3 and all(isinstance(r.get("answer"), str) for r in records), records


def cell_gptq(capsys, monkeypatch, row, model, tmp):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from belle.modeling import load_model, load_tokenizer

    out = tmp / "gptq"
    calibration = tmp / "calibration.txt"
    calibration.write_text((SAMPLES / "heldout_zh.txt").read_text(encoding="utf-8") * 4, encoding="utf-8")
    monkeypatch.chdir(tmp)
    result = run(capsys, "gptq", "quantize", "--model", model, "--out", out, "--calibration", calibration,
                 "--nsamples", "4", "--seqlen", "64", "--batch-size", "4", "--device", "cpu")
    if reason := refusal(row, JOB["gptq"]):
        assert_refused(result, reason)
        assert not out.exists()
        return
    assert_ran(result)
    summary = json.loads((out / "quantize.json").read_text(encoding="utf-8"))
    assert summary["quantized_layers"] > 0 and summary["output_weight_bytes"] < summary["source_weight_bytes"]
    ids = load_tokenizer(out)(f"Human: \n{QUESTION}\n\nAssistant: \n", return_tensors="pt").input_ids
    expected = logits(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval(), ids)
    got = logits(load_model(out, device="cpu").eval(), ids).float()
    similarity = F.cosine_similarity(got.flatten(), expected.flatten(), dim=0).item()
    print(f"{row.id}: cosine similarity of quantized and float logits {similarity:.4f}")
    assert similarity > 0.9, "the quantized model does not compute what the float model does"


def cell_vocab_extend(capsys, monkeypatch, row, model, tmp):
    from belle.modeling import load_tokenizer

    out = tmp / "extended"
    corpus = tmp / "zh.txt"
    corpus.write_text((SAMPLES / "heldout_zh.txt").read_text(encoding="utf-8"), encoding="utf-8")
    before = len(load_tokenizer(model))
    assert_ran(run(capsys, "vocab", "extend", "--base", model, "--corpus", corpus, "--vocab-size", "600", "--out", out))
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == len(load_tokenizer(out)) > before


def cell_export_gguf(capsys, monkeypatch, row, model, tmp):
    """The f16 file llama.cpp reads; tests/export/test_arches.py proves what it computes."""
    from gguf import GGUFReader

    from belle.export.arches import GGUF_ARCHES

    out = tmp / "model.gguf"
    result = run(capsys, "export", "gguf", "--model", model, "--out", out)
    if reason := refusal(row, JOB["export-gguf"]):
        assert_refused(result, reason)
        assert not out.exists()
        return
    assert_ran(result)
    fields = GGUFReader(out).fields
    assert fields["general.architecture"].contents() == GGUF_ARCHES[row.model_type].name
    assert fields["general.file_type"].contents() == 1  # MOSTLY_F16


CELLS = {
    "sft": cell_sft, "sft-packed": cell_sft_packed, "lora-merge": cell_lora_merge, "pt": cell_pt, "dpo": cell_dpo,
    "chat": cell_chat, "serve": cell_serve, "eval-generate": cell_eval_generate, "gptq": cell_gptq,
    "vocab-extend": cell_vocab_extend, "export-gguf": cell_export_gguf,
}


def test_every_job_has_a_cell():
    assert set(CELLS) == set(JOB)


@pytest.mark.slow
@pytest.mark.parametrize("job", list(JOB))
@pytest.mark.parametrize("row", list(ROWS))
def test_cell(row, job, model_dir, tmp_path, capsys, monkeypatch):
    CELLS[job](capsys, monkeypatch, ROWS[row], model_dir(ROWS[row]), tmp_path)
