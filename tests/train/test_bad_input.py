"""Bad input to `belle train` is one clear error and exit 2, found before any model is loaded.

Every case but the missing model folder trains the decoy model, whose weights cannot be read: a run
that got as far as loading the model would crash instead of exiting 2. The cases run in process
(`belle.cli.main`) with CUDA hidden, so the GPU checks hold on any machine; one runs as
`python -m belle.train`, what torchrun launches.
"""

import json
import re

import pytest

from tests.helpers import write_jsonl
from tests.helpers import run_module
from tests.train.helpers import SAMPLES, conversation, files_list, train_overrides

LONG_ANSWER = "这是一个很长的回答，" * 40


def unknown_key(tmp_path):
    return ["training.learning_rat=1"], [r"unknown key 'training\.learning_rat'", r"training\.learning_rate"]


def missing_train_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    return [f"data.train_files={files_list(missing)}"], [re.escape(str(missing))]


def missing_model_folder(tmp_path):
    missing = tmp_path / "no-model"
    return [f"model.path={missing}"], [re.escape(str(missing))]


def no_trained_token(tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [conversation(f"问题{i}：请详细回答。", LONG_ANSWER) for i in range(4)])
    return [f"data.train_files={files_list(data)}", "data.max_length=8", "data.overlong=drop"], [r"(?i)no sample"]


def lora_options_with_full(tmp_path):
    return ["lora.r=8", "method=full"], [r"lora", r"method"]


def flash_attention_without_gpu(tmp_path):
    return ["model.attn_implementation=flash_attention_2"], [r"flash_attention_2", r"GPU|CUDA"]


def qlora_without_gpu(tmp_path):
    return ["method=qlora"], [r"(?i)qlora", r"CUDA", r"GPU"]


def deepspeed_batch_contradiction(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}))
    return [f"training.deepspeed={ds}", "training.batch_size=2"], [r"train_micro_batch_size_per_gpu\D*\b4\b", r"batch_size\D*\b2\b"]


def missing_deepspeed_config(tmp_path):
    missing = tmp_path / "no-ds.json"
    return [f"training.deepspeed={missing}"], [re.escape(str(missing))]


def restart_over_an_earlier_run(tmp_path):
    earlier = tmp_path / "run" / "checkpoint-3"
    earlier.mkdir(parents=True)
    (earlier / "COMPLETE").write_text("{}")
    return ["resume=never"], [r"checkpoint-3", r"resume=auto"]


CASES = [unknown_key, missing_train_file, missing_model_folder, no_trained_token, lora_options_with_full,
         flash_attention_without_gpu, qlora_without_gpu, deepspeed_batch_contradiction, missing_deepspeed_config,
         restart_over_an_earlier_run]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_exits_2_naming_the_problem_before_loading_the_model(decoy_model_dir, tmp_path, case, capsys, monkeypatch):
    """Exit 2, `belle train: error:` and the words that name the problem on stderr, no traceback,
    no model written."""
    import torch

    from belle.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides, patterns = case(tmp_path)
    out = tmp_path / "run"
    args = train_overrides(decoy_model_dir, out, f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}", *overrides)
    status = main(["train", *args])
    stderr = capsys.readouterr().err
    assert status == 2, f"exit {status}\n{stderr[-3000:]}"
    assert "belle train: error:" in stderr and "Traceback" not in stderr, stderr[-3000:]
    message = stderr[stderr.index("belle train: error:"):]
    missing = [p for p in patterns if not re.search(p, message)]
    assert not missing, f"the message lacks {missing}:\n{message}"
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_module_entry_point_reports_bad_input_the_same_way(decoy_model_dir, tmp_path):
    """`python -m belle.train` (what torchrun launches) also exits 2 with the suggestion."""
    args = train_overrides(decoy_model_dir, tmp_path / "run", f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}",
                           "training.learning_rat=1")
    result = run_module("belle.train", *args)
    assert result.returncode == 2 and "error:" in result.stderr and "training.learning_rate" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
