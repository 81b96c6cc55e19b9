"""Bad configs of the stages rm, grpo, rloo and kto are refused in this process, each with one clear
message and exit status 2, before any model loads: the runs that get past the config point at
`decoy_model_dir`, whose weights crash any load."""

import json

import pytest

from belle.config import load_config
from belle.train.config import PPO_REFUSAL, TrainConfig
from belle.train.fingerprint import run_fingerprint
from tests.helpers import write_jsonl

PAIR = {"prompt": "你好", "chosen": "您好，很高兴见到您。", "rejected": "走开"}


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "今天天气怎么样？"}, {"prompt": "请介绍一下北京。"}])


@pytest.fixture
def refused(belle_main, tmp_path):
    """`refused(model, train_file, *overrides)` runs `belle train` in this process, asserts it exits 2
    with one `error:` message and no traceback, and returns the message."""

    def run(model, train_file, *overrides):
        result = belle_main("train", f"model.path={model}", f"output_dir={tmp_path / 'run'}",
                            f"data.train_files=[{train_file}]", "training.report_to=[]", *overrides)
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-3000:]
        assert "Traceback" not in output and output.count("error:") == 1, output[-3000:]
        assert output.count("\n  - ") <= 1, f"more than one problem:\n{output}"
        return result.stderr

    return run


def test_stage_ppo_names_what_replaces_it(refused, tiny_model_dir, prompts):
    assert PPO_REFUSAL in refused(tiny_model_dir, prompts, "stage=ppo")


@pytest.mark.parametrize(("overrides", "expected"), [
    (("stage=grpo",), "reward.weights: name at least one reward source"),
    (("stage=rloo",), "reward.weights: name at least one reward source"),
    (("stage=rm", "data.pack=true"), "data.pack: stage rm scores each sequence at its last token"),
    (("stage=rm", "data.format=messages"), "data.format: stage rm reads preference pairs"),
    (("stage=grpo", "reward.weights={format: 1}", "reward.format_pattern=x", "data.pack=true"), "data.pack: stage grpo reads prompts"),
    (("stage=kto", "training.batch_size=2", "data.pack=true"), "data.pack: stage kto reads"),
    (("stage=kto", "training.batch_size=1"), "training.batch_size: stage kto needs at least 2"),
    (("stage=sft", "rl.num_generations=4"), "rl: RL options are set but stage is sft; set stage=grpo or rloo"),
    (("stage=dpo", "reward.weights={eos: 1}"), "reward: reward options are set but stage is dpo"),
    (("stage=grpo", "reward.weights={eos: 1}", "kto.beta=0.2"), "kto: KTO options are set but stage is grpo"),
    (("stage=grpo", "reward.weights={eos: 1}", "rl.num_generations=1"), "rl.num_generations: 1 must be at least 2"),
    (("stage=grpo", "reward.weights={eos: 1}", "rl.max_new_tokens=300", "data.max_length=256"),
     "rl.max_new_tokens: 300 leaves no room for the prompt"),
    (("stage=rm", "method=qlora"), "method: stage rm saves a plain model"),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_config_problems_are_refused_as_it_loads(refused, decoy_model_dir, prompts, overrides, expected):
    assert expected in refused(decoy_model_dir, prompts, *overrides)


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "expected"), [
    (("reward.weights={bogus: 1}",), "reward.weights: unknown reward source 'bogus'"),
    (("reward.weights={model: 1}", "reward.model=/nonexistent/rm"), "reward.model: /nonexistent/rm is not a model folder"),
    (("reward.weights={model: 1}",), "reward.model: the `model` source needs a reward model folder"),
    (("reward.weights={judge: 1}", "reward.judge.model=gpt-4o-mini"), "reward.judge.api_key_env: the environment variable"),
    (("reward.weights={eos: 1}", "training.batch_size=6", "rl.num_generations=4"),
     "= 6 per step, which must be a multiple of rl.num_generations (4)"),
], ids=["unknown-source", "missing-rm", "no-rm", "judge-key", "batch"])
def test_preflight_refuses_rl_runs_before_the_model_loads(refused, decoy_model_dir, prompts, monkeypatch, overrides, expected):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert expected in refused(decoy_model_dir, prompts, "stage=grpo", "training.batch_size=8", *overrides)


@pytest.mark.slow
def test_grpo_without_prompts_is_refused_before_the_model_loads(refused, decoy_model_dir, tmp_path):
    """Records with no prompt to sample from (preference pairs without one, empty prompts) leave
    nothing to train on; the message counts why each was rejected."""
    data = write_jsonl(tmp_path / "none.jsonl", [{"prompt": ""}, {"text": "纯文本"}, [1, 2]])
    message = refused(decoy_model_dir, data, "stage=grpo", "reward.weights={eos: 1}", "training.batch_size=8")
    assert "no usable prompt" in message and "rejected 3 records" in message


@pytest.mark.slow
def test_grpo_prompts_too_long_for_the_completion_room_are_refused(refused, decoy_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "很长的问题" * 40}])
    message = refused(decoy_model_dir, data, "stage=grpo", "reward.weights={eos: 1}", "data.max_length=64",
                      "rl.max_new_tokens=32", "training.batch_size=8")
    assert "no prompt fits" in message and "32 tokens" in message


@pytest.mark.slow
def test_rm_without_pairs_is_refused_before_the_model_loads(refused, decoy_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "你好", "output": "您好"}])
    assert "no usable preference pair" in refused(decoy_model_dir, data, "stage=rm")


def test_fingerprint_holds_the_rl_settings_but_not_the_judge_endpoint(tmp_path, prompts):
    def fingerprint(*overrides):
        return run_fingerprint(load_config(TrainConfig, None, [
            f"model.path={tmp_path}", f"output_dir={tmp_path / 'run'}", f"data.train_files=[{prompts}]", "stage=grpo",
            "reward.weights={judge: 1, eos: 0.5}", "reward.judge.model=judge-a", *overrides]))

    base = fingerprint()
    assert base["rl.num_generations"] == 8 and base["reward.weights"] == {"judge": 1, "eos": 0.5}
    assert fingerprint("reward.judge.base_url=http://127.0.0.1:9/v1", "reward.judge.concurrency=2",
                       "reward.judge.cache=off") == base
    assert fingerprint("rl.beta=0.1") != base and fingerprint("reward.judge.model=judge-b") != base
    assert json.dumps(base)  # plain JSON values


def test_kto_settings_apply_to_kto_only(tmp_path):
    config = load_config(TrainConfig, None, [f"model.path={tmp_path}", f"output_dir={tmp_path}", "data.train_files=[x]",
                                             "stage=kto", "kto.beta=0.2", "training.batch_size=2"])
    assert config.kto.beta == 0.2 and run_fingerprint(config)["kto.beta"] == 0.2


def test_trl_and_llama_factory_names_reach_the_rl_keys(tmp_path):
    from belle.train.cli import load_train_config

    config = load_train_config(None, [f"model.path={tmp_path}", f"output_dir={tmp_path}", "data.train_files=[x]",
                                      "stage=grpo", "reward.weights={model: 1}", "num_generations=4",
                                      "max_completion_length=64", f"reward_model={tmp_path / 'rm'}"])
    assert (config.rl.num_generations, config.rl.max_new_tokens, config.reward.model) == (4, 64, str(tmp_path / "rm"))
