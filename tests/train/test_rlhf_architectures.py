"""The RLHF stages on every family of the architecture matrix but LLaMA (which tests/train/test_rlhf.py
covers), through `belle train` on a tiny random model of each: `stage=rm` with LoRA saves a merged
model that plain transformers loads as a sequence classifier giving one score per sequence (the same
score padded in a batch as alone), and `stage=grpo` with LoRA runs on a rule reward and saves an
adapter without TRL's reference copy. The CLI runs in this process, as in tests/test_architectures.py:
a fresh process per run would spend about 10 s of its 15 importing torch, transformers and TRL."""

from __future__ import annotations

import pytest

from belle.architectures import MATRIX_ROWS
from tests.helpers import write_jsonl
from tests.train.helpers import files_list, read_metrics, tail, train_overrides

pytestmark = pytest.mark.slow

ROWS = [row for row in MATRIX_ROWS if row.model_type != "llama"]
SHORT = ("data.max_length=64", "training.max_steps=2", "training.save_steps=100", "method=lora", "lora.r=4")
QUESTIONS = ["今天天气怎么样？", "请介绍一下北京。", "如何学习数学？", "推荐一本书。", "怎样保持健康？",
             "什么是人工智能？"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Short preference pairs and prompts, well under 64 tokens each with the tiny tokenizer."""
    folder = tmp_path_factory.mktemp("data")
    pairs = [{"prompt": q, "chosen": "您好，很高兴为您解答。", "rejected": "别烦我"} for q in QUESTIONS]
    return {"pairs": write_jsonl(folder / "pairs.jsonl", pairs),
            "prompts": write_jsonl(folder / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """`model_dir(row)`: the row's tiny causal LM, built once per module."""
    from belle.models.tiny import build_tiny_model

    built = {}

    def get(row):
        if row.id not in built:
            built[row.id] = build_tiny_model(tmp_path_factory.mktemp(row.id) / "model", arch=row.model_type,
                                             tokenizer_kind=row.tokenizer_kind)
        return built[row.id]

    return get


def run_train(belle_main, model, out, *overrides):
    result = belle_main("train", *train_overrides(model, out, *SHORT, *overrides))
    assert result.returncode == 0, tail(result)
    return result


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_rm_with_lora_loads_as_a_plain_sequence_classifier(belle_main, model_dir, data, tmp_path, row):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    run_train(belle_main, model_dir(row), out, "stage=rm", f"data.train_files={files_list(data['pairs'])}",
              "training.batch_size=2", "training.learning_rate=1e-3")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(out)
    assert config.architectures[0].endswith("ForSequenceClassification") and config.num_labels == 1, config.architectures
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    answers = [(QUESTIONS[0], "您好，很高兴为您解答，祝您生活愉快。"), (QUESTIONS[1], "别烦我")]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                           tokenize=False) for q, a in answers]
    with torch.inference_mode():
        batch = model(**tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")).logits
        alone = [model(**tokenizer(t, add_special_tokens=False, return_tensors="pt")).logits for t in texts]
    assert batch.shape == (2, 1)
    # Each sequence is scored at its own last token: padding the shorter one changes nothing.
    torch.testing.assert_close(batch, torch.cat(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_grpo_with_lora_on_a_rule_reward(belle_main, model_dir, data, tmp_path, row):
    out = tmp_path / "grpo"
    run_train(belle_main, model_dir(row), out, "stage=grpo", f"data.train_files={files_list(data['prompts'])}",
              "data.validation_split=0", "reward.weights={eos: 1}", "rl.num_generations=4", "rl.max_new_tokens=8",
              "training.batch_size=4")
    logged = [e for e in read_metrics(out)["log_history"] if "rewards/eos/mean" in e]
    assert [e["step"] for e in logged] == [1, 2] and all(0 <= e["rewards/eos/mean"] <= 1 for e in logged), logged
    assert all("kl" in e for e in logged), "rl.beta > 0 but no KL to the reference was logged"
    assert (out / "adapter_model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "ref").exists(), "TRL's frozen reference adapter was saved with the policy"
