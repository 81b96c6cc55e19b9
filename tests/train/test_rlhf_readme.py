"""train/README.md's RLHF section runs as written: the marked ```bash blocks (sft -> rm -> grpo on
the tiny model, then kto) in a shell with `$RUNS` under a temporary folder, and every `belle train`
command the section shows (the LLM-judge one too) loads a config with no problems."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from belle.train import cli as train_cli
from tests.test_docs import belle_commands
from tests.train.helpers import REPO, read_metrics

README = REPO / "train" / "README.md"
MARKER = "tests/train/test_rlhf_readme.py runs this block as written"
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def rlhf_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## RLHF: sft -> rm -> grpo\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(languages: tuple[str, ...]) -> list[str]:
    return [body for language, body in BLOCK.findall(rlhf_section()) if language in languages]


def marked_script() -> str:
    """The marked ```bash blocks of the section, in order, as one script."""
    return "\n".join(body for body in blocks(("bash",)) if MARKER in body)


def test_the_section_marks_the_pipeline_and_kto_blocks():
    marked = [body for body in blocks(("bash",)) if MARKER in body]
    assert len(marked) == 2 and "stage=rm" in marked[0] and "stage=grpo" in marked[0] and "stage=kto" in marked[1]
    assert len(blocks(("bash",))) == 2, "an unmarked ```bash block would not be run; mark it or make it ```sh"


def test_every_train_command_shown_loads_a_config_without_problems():
    commands = [words[1:] for words in belle_commands("\n".join(blocks(("bash", "sh")))) if words[0] == "train"]
    assert len(commands) == 5
    stages = []
    for words in commands:
        args = train_cli.parse_args(words)
        config = train_cli.load_train_config(REPO / args.config if args.config else None, args.overrides)
        assert config.problems() == [], words
        stages.append(config.stage)
    assert stages == ["sft", "rm", "grpo", "grpo", "kto"]


@pytest.mark.slow
def test_the_rlhf_pipeline_runs_as_written(tmp_path):
    """Each command exits 0 (the script stops at the first that does not); the reward model loads
    with plain transformers as a one-score classifier and was evaluated; the grpo run logged its
    reward overall and per source, and saved a policy; kto saved an adapter."""
    runs = tmp_path / "runs"
    env = {**os.environ, "RUNS": str(runs), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + marked_script()], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "Traceback" not in done.stderr, done.stderr[-5000:]
    for output in ("tiny/config.json", "sft/model.safetensors", "rm/model.safetensors", "rm/summary.md",
                   "grpo/model.safetensors", "grpo/generation_config.json", "grpo/loss.png", "kto/adapter_model.safetensors"):
        assert (runs / output).is_file(), output

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(runs / "rm")
    tokenizer = AutoTokenizer.from_pretrained(runs / "rm")
    assert rm.config.num_labels == 1 and tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}],
                                        tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.isfinite(rm(**ids).logits).all()
    rm_metrics = read_metrics(runs / "rm")
    assert 0 <= rm_metrics["eval"]["eval_accuracy"] <= 1 and "eval_margin" in rm_metrics["eval"]

    history = read_metrics(runs / "grpo")["log_history"]
    rewards = [h for h in history if "reward" in h]
    assert len(rewards) == 10, json.dumps(history)[:2000]
    assert all("rewards/model/mean" in h and "rewards/math_answer/mean" in h and "kl" in h for h in rewards)
    summary = (runs / "grpo" / "summary.md").read_text(encoding="utf-8")
    assert "- reward model: first logged" in summary and "- reward math_answer: first logged" in summary
