"""The RLHF stages end to end through `belle train` on the tiny model: a reward model that learns to
rank a separable preference set and loads with plain transformers, GRPO that learns an easy rule
reward and runs on that reward model, RLOO (LoRA) and KTO, and resuming rm and grpo after kill -9."""

import random
import sys

import pytest

from tests.helpers import write_jsonl
from tests.train.helpers import files_list, read_metrics, tail, train_overrides
from tests.train.test_resume import kill_at_checkpoint, snapshot

pytestmark = pytest.mark.slow

QUESTIONS = ["今天天气怎么样", "请介绍一下北京", "如何学习数学", "推荐一本书", "怎样保持健康", "什么是人工智能",
             "如何做番茄炒蛋", "为什么天空是蓝色的", "怎么学好英语", "周末去哪里玩"]
POLITE = ["您好", "谢谢您的提问", "很高兴为您解答", "请您放心", "希望对您有帮助", "祝您生活愉快", "感谢您的耐心", "这是个好问题"]
RUDE = ["滚开", "别烦我", "自己去查", "懒得理你", "无聊透顶", "xq zz", "### kk", "乱码 !!", "问这个干嘛"]
RM_SETTINGS = ("stage=rm", "data.max_length=128", "training.batch_size=8", "training.learning_rate=5e-4",
               "training.max_steps=12", "training.eval_steps=3", "training.save_steps=100")


def preference_pairs(count: int, seed: int) -> list[dict[str, str]]:
    """Pairs whose chosen answer is polite and ends with 。 and whose rejected one is rude or garbled."""
    rng = random.Random(seed)
    return [{"prompt": f"{rng.choice(QUESTIONS)}？",
             "chosen": "，".join(rng.sample(POLITE, rng.randint(2, 3))) + "。",
             "rejected": " ".join(rng.sample(RUDE, rng.randint(2, 3)))} for _ in range(count)]


def corpus_questions(path):
    """The questions of the tiny model's training corpus (`问：...` lines), as `{"prompt"}` records."""
    from belle.models.tiny import tiny_corpus_lines

    return write_jsonl(path, [{"prompt": line[2:]} for line in tiny_corpus_lines() if line.startswith("问：")])


def rewards_by_step(out, key="reward"):
    return [entry[key] for entry in read_metrics(out)["log_history"] if key in entry]


def run_train(belle_cli, model, out, *overrides):
    result = belle_cli("train", *train_overrides(model, out, *overrides))
    assert result.returncode == 0, tail(result)
    return result


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_pairs(64, seed=0))


@pytest.fixture(scope="module")
def reward_model(belle_cli, tiny_model_dir, pairs_file, tmp_path_factory):
    """A reward model trained on `pairs_file` (a quarter held out for eval) from the tiny model."""
    out = tmp_path_factory.mktemp("rm") / "run"
    run_train(belle_cli, tiny_model_dir, out, *RM_SETTINGS, f"data.train_files={files_list(pairs_file)}",
              "data.validation_split=0.25")
    return out


def scores(model_dir, conversations):
    """The reward model's score of each conversation, as plain transformers computes it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return [model(**tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_tensors="pt")).logits[0, 0].item()
                for c in conversations]


def test_rm_learns_to_rank_and_saves_a_plain_model(reward_model):
    """Eval pairwise accuracy starts near chance (the eval before the first step) and ends above 0.9; the folder loads with plain
    transformers (no belle, no peft) and scores held-out polite answers above rude ones."""
    accuracy = rewards_by_step(reward_model, "eval_accuracy")
    assert len(accuracy) == 5 and accuracy[0] <= 0.75 and accuracy[-1] > 0.9, accuracy
    metrics = read_metrics(reward_model)
    assert metrics["eval"]["eval_margin"] > 0
    assert (metrics["data"]["records"], metrics["data"]["pairs"]) == (64, 48)  # records read, before the split
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(reward_model)
    assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
    assert (reward_model / "belle.json").is_file() and (reward_model / "chat_template.jinja").is_file()
    held_out = preference_pairs(8, seed=1)
    chosen = scores(reward_model, [[{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}] for p in held_out])
    rejected = scores(reward_model, [[{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}] for p in held_out])
    assert all(c > r for c, r in zip(chosen, rejected)), (chosen, rejected)


def test_rm_with_lora_saves_the_merged_model(belle_cli, tiny_model_dir, pairs_file, tmp_path):
    """With method=lora the output is still a plain sequence-classification model: the adapter is
    merged into the base weights and the score head is the trained one. Pairs longer than
    data.max_length, which TRL would drop without a word, are dropped and counted, in training and
    validation data alike."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    long = {"prompt": "你好", "chosen": "很长的回答" * 100, "rejected": "走开"}
    longer = write_jsonl(tmp_path / "long.jsonl", [long, {**long, "chosen": "好", "rejected": "走开" * 150}])
    valid = write_jsonl(tmp_path / "valid.jsonl", [*preference_pairs(4, seed=3), long])
    run_train(belle_cli, tiny_model_dir, out, "stage=rm", "method=lora", "lora.r=4", "training.max_steps=3",
              "training.batch_size=4", "training.learning_rate=1e-3", f"data.train_files={files_list(pairs_file, longer)}",
              f"data.validation_files=[{valid}]", "data.max_length=128")
    data = read_metrics(out)["data"]
    assert (data["records"], data["pairs"]) == (66, 64)
    assert data["dropped"] == {"longer than 128 tokens": 2} and data["eval_dropped"] == {"longer than 128 tokens": 1}
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "- dropped from the training data: 2 longer than 128 tokens" in summary
    assert "- dropped from the validation data: 1 longer than 128 tokens" in summary
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    merged, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not any("lora" in name for name in merged) and "score.weight" in merged
    assert (merged[q_proj] - base[q_proj]).abs().max() > 0, "the adapter was not merged"
    pair = preference_pairs(1, seed=2)[0]
    assert len(scores(out, [[{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair["chosen"]}]])) == 1


def test_grpo_learns_an_easy_format_reward(belle_cli, trained_tiny_dir, tmp_path):
    """Rewarded for a full-width comma (a character the model writes in about one completion in
    five), the policy writes one in nearly every completion within 20 steps."""
    out = tmp_path / "run"
    run_train(belle_cli, trained_tiny_dir, out, "stage=grpo", f"data.train_files={files_list(corpus_questions(tmp_path / 'q.jsonl'))}",
              "reward.weights={format: 1}", "reward.format_pattern=，", "rl.num_generations=8", "rl.max_new_tokens=8",
              "rl.beta=0", "training.batch_size=16", "training.max_steps=20", "training.learning_rate=5e-4",
              "training.save_steps=100", "data.max_length=128")
    rewards = rewards_by_step(out)
    assert len(rewards) == 20 and rewards == rewards_by_step(out, "rewards/format/mean"), rewards
    first, last = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert first < 0.6 and last > first + 0.3, rewards
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()


def test_grpo_on_the_reward_model(belle_cli, tiny_model_dir, reward_model, tmp_path):
    """BELLE's ppo stage as TRL runs it now: the reward model of the rm test scores the completions,
    with a KL penalty towards the starting policy."""
    out = tmp_path / "run"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    run_train(belle_cli, tiny_model_dir, out, "stage=grpo", f"data.train_files={files_list(prompts)}",
              "reward.weights={model: 1}", f"reward.model={reward_model}", "rl.num_generations=4", "rl.max_new_tokens=8",
              "training.batch_size=8", "training.max_steps=2", "data.max_length=128")
    history = read_metrics(out)["log_history"]
    assert [e["step"] for e in history if "rewards/model/mean" in e] == [1, 2]
    assert all("kl" in e for e in history if "reward" in e)


class MutedEveryFourth:
    """A judge that scores each answer by its length (longer is better, 20 characters or more: 1)
    and answers every fourth request with a reply that holds no score."""

    def __init__(self):
        self.requests = 0

    def __call__(self, request):
        self.requests += 1
        if self.requests % 4 == 0:
            return "这个回答我无法评分。"
        answer = request["messages"][-1]["content"].split("【模型回答 开始】\n", 1)[1].split("\n【模型回答 结束】", 1)[0]
        return f"理由：长度合适。\n得分: {min(len(answer), 20) / 20:.2f}"


def test_grpo_with_an_llm_judge_counts_its_failures_and_reuses_its_cache(belle_cli, tiny_model_dir, tmp_path):
    """RL from AI feedback through the CLI: the judge (our scripted OpenAI stub on 127.0.0.1, so no
    key) fails twice with a 500 (retried) and leaves every fourth answer unscored (counted, never
    0); a second run with the same seed asks it nothing: every judgment comes from the cache."""
    from belle.testing.openai_stub import Fault, serve_stub

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q, "class": "open qa"} for q in QUESTIONS])
    with serve_stub(MutedEveryFourth(), faults=[Fault(500), Fault(500)]) as stub:
        judge = ("reward.weights={judge: 1}", "reward.judge.model=stub-model", f"reward.judge.base_url={stub.url}",
                 f"reward.judge.cache={tmp_path / 'judge.sqlite'}", "rl.num_generations=4", "rl.max_new_tokens=8",
                 "training.batch_size=8", "training.max_steps=3", "data.max_length=128", f"data.train_files={files_list(prompts)}")
        run_train(belle_cli, tiny_model_dir, tmp_path / "first", "stage=grpo", *judge)
        asked = stub.calls
        run_train(belle_cli, tiny_model_dir, tmp_path / "second", "stage=grpo", *judge)
        assert stub.calls == asked
    assert asked > 2 + 3 * 8 // 2  # the two faults and at least one request per distinct answer of 3 steps
    history = read_metrics(tmp_path / "first")["log_history"]
    judged = [e for e in history if "rewards/judge/mean" in e]
    assert len(judged) == 3 and sum(e["judge/failed"] for e in judged) > 0
    assert all(0 < e["rewards/judge/mean"] <= 1 for e in judged)
    assert rewards_by_step(tmp_path / "second", "rewards/judge/mean") == [e["rewards/judge/mean"] for e in judged]
    assert "judge failures" in (tmp_path / "first" / "summary.md").read_text(encoding="utf-8")


def test_rloo_with_lora(belle_cli, tiny_model_dir, tmp_path):
    """RLOO on a LoRA policy, evaluated on validation prompts (one too long for the room left by
    rl.max_new_tokens, dropped and counted). TRL's RLOOTrainer, given a PeftModel, adds a frozen copy
    of the starting adapter named "ref" (for any beta); it is not part of the result."""
    out = tmp_path / "run"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": q, "output": "好的。"} for q in QUESTIONS])
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"prompt": q} for q in QUESTIONS[:2]] + [{"prompt": "很长的问题" * 60}])
    run_train(belle_cli, tiny_model_dir, out, "stage=rloo", "method=lora", f"data.train_files={files_list(prompts)}",
              f"data.validation_files=[{valid}]", "reward.weights={eos: 1, length: 0.5}", "reward.length_target=4",
              "rl.num_generations=4", "rl.max_new_tokens=8", "training.batch_size=2", "training.gradient_accumulation_steps=2",
              "training.max_steps=2", "data.max_length=128")
    metrics = read_metrics(out)
    assert rewards_by_step(out, "rewards/eos/mean") and rewards_by_step(out, "rewards/length/mean")
    assert metrics["data"]["with_reference"] == 10 and metrics["data"]["eval_dropped"] == {"longer than 120 tokens": 1}
    assert "eval_reward" in metrics["eval"], metrics["eval"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "ref").exists(), "TRL's frozen reference adapter was saved with the policy"


def test_kto_on_preference_pairs(belle_cli, tiny_model_dir, pairs_file, tmp_path):
    """Each pair becomes a desirable and an undesirable example."""
    out = tmp_path / "run"
    run_train(belle_cli, tiny_model_dir, out, "stage=kto", f"data.train_files={files_list(pairs_file)}",
              "training.batch_size=4", "training.max_steps=2", "training.learning_rate=1e-4", "data.max_length=128")
    metrics = read_metrics(out)
    assert metrics["data"]["records"] == 64  # pairs read, each two examples
    assert metrics["data"]["examples"] == 128 and metrics["data"]["desirable"] == 64
    assert [e["step"] for e in metrics["log_history"] if "loss" in e] == [1, 2]
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", ["rm", "grpo"])
def test_resume_after_sigkill(belle_cli, tiny_model_dir, pairs_file, tmp_path, stage):
    """Killed right after checkpoint-2, the rerun resumes from it (checkpoint-2 is left as it was),
    logs every step once and ends at max_steps; rm's eval before the first step is not rerun on resume."""
    if stage == "rm":
        settings = ("stage=rm", f"data.train_files={files_list(pairs_file)}", "training.batch_size=4", "data.max_length=128",
                    "data.validation_split=0.125")
    else:
        prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
        settings = ("stage=grpo", f"data.train_files={files_list(prompts)}", "reward.weights={eos: 1}",
                    "rl.num_generations=4", "rl.max_new_tokens=8", "training.batch_size=4", "data.max_length=128")
    settings = (*settings, "training.max_steps=6", "training.save_steps=2", "training.learning_rate=1e-3")
    out = tmp_path / "run"
    kill_at_checkpoint([sys.executable, "-m", "belle", "train", *train_overrides(tiny_model_dir, out, *settings)], out, 2)
    assert not (out / "model.safetensors").exists(), "the final model was already written: the kill did not land mid-run"
    kept = snapshot(out / "checkpoint-2")
    rerun = run_train(belle_cli, tiny_model_dir, out, *settings)
    assert "resuming from" in rerun.stderr and snapshot(out / "checkpoint-2") == kept
    assert (out / "checkpoint-6" / "COMPLETE").is_file() and (out / "model.safetensors").is_file()
    history = read_metrics(out)["log_history"]
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 7))
    if stage == "rm":
        assert [e["step"] for e in history if "eval_accuracy" in e] == [0, 2, 4, 6]
