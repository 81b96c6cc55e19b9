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
    assert "none of the 1 prompts fits" in message and "data.max_length - rl.max_new_tokens = 32 tokens" in message


@pytest.mark.slow
def test_grpo_validation_prompts_too_long_are_refused_with_their_files(refused, decoy_model_dir, prompts, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "很长的问题" * 40}])
    message = refused(decoy_model_dir, prompts, "stage=grpo", "reward.weights={eos: 1}", "data.max_length=64",
                      "rl.max_new_tokens=32", "training.batch_size=8", f"data.validation_files=[{long}]")
    assert f"data.validation_files ({long}): none of the 1 prompts fits" in message


@pytest.mark.slow
def test_math_answer_without_any_reference_is_refused(refused, decoy_model_dir, prompts):
    message = refused(decoy_model_dir, prompts, "stage=grpo", "reward.weights={math_answer: 1}", "training.batch_size=8")
    assert "math_answer needs references: none of the 2 prompts has one" in message


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "what"), [("rm", "preference pairs"), ("kto", "examples")])
def test_preference_data_too_long_is_refused_before_the_model_loads(refused, decoy_model_dir, tmp_path, stage, what):
    """TRL would drop (rm) or cut (kto) these rows without a word; belle measures them as TRL renders
    them and refuses a run that has none left."""
    data = write_jsonl(tmp_path / "long.jsonl", [{**PAIR, "chosen": "很长的回答" * 40, "rejected": "走开" * 60}] * 2)
    message = refused(decoy_model_dir, data, f"stage={stage}", "data.max_length=64", "training.batch_size=2")
    assert f"none of the {2 if stage == 'rm' else 4} {what} fits" in message, message
    assert "data.max_length = 64 tokens" in message and "raise data.max_length" in message


@pytest.mark.slow
def test_judge_groups_split_over_processes_are_refused(refused, decoy_model_dir, prompts, monkeypatch):
    """Two processes of 2 completions each hold whole groups of 4 together, but the judge fills a
    failed judgment from its group within one process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = refused(decoy_model_dir, prompts, "stage=grpo", "reward.weights={judge: 1}", "reward.judge.model=j",
                      "reward.judge.base_url=http://127.0.0.1:9/v1", "rl.num_generations=4", "training.batch_size=2")
    assert "= 2 per process is not a multiple of rl.num_generations (4)" in message
    assert "set training.batch_size to a multiple of 4" in message


def test_judge_batch_rule_counts_each_process(tmp_path, prompts, monkeypatch):
    from belle.train.preflight import batch_problems

    def problems(*overrides):
        return batch_problems(load_config(TrainConfig, None, [
            f"model.path={tmp_path}", f"output_dir={tmp_path / 'run'}", f"data.train_files=[{prompts}]", "stage=grpo",
            "rl.num_generations=4", *overrides]))

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert problems("reward.weights={eos: 1}", "training.batch_size=2") == []
    assert problems("reward.weights={judge: 1}", "training.batch_size=4") == []
    assert problems("reward.weights={judge: 1}", "training.batch_size=2", "training.gradient_accumulation_steps=2") == []
    [message] = problems("reward.weights={judge: 1}", "training.batch_size=3", "training.gradient_accumulation_steps=2")
    assert "3 x gradient_accumulation_steps 2 = 6 per process" in message and "a multiple of 2," in message


def test_world_size_comes_from_the_launcher():
    from belle.train.distributed import world_size

    assert world_size({}) == 1 and world_size({"WORLD_SIZE": "4"}) == 4 and world_size({"WORLD_SIZE": "x"}) == 1


@pytest.mark.parametrize(("batch_size", "num_generations", "processes", "expected"), [
    (8, 4, 1, 8), (6, 4, 1, 8), (1, 8, 1, 8), (3, 4, 2, 4), (2, 4, 2, 2), (1, 8, 3, 8), (5, 6, 4, 6),
])
def test_rl_eval_batch_holds_whole_groups_across_processes(batch_size, num_generations, processes, expected):
    from belle.train.run import rl_eval_batch_size

    size = rl_eval_batch_size(batch_size, num_generations, processes)
    assert size == expected and size >= batch_size and size * processes % num_generations == 0


def test_saved_config_keeps_no_secret_of_the_judge_url(tmp_path):
    from belle.train.run import saved_config

    def config(url):
        return load_config(TrainConfig, None, [f"model.path={tmp_path}", f"output_dir={tmp_path}", "data.train_files=[x]",
                                               "stage=grpo", "reward.weights={judge: 1}", f"reward.judge.base_url={url}"])

    secret = config("https://user:hunter2@judge.example/v1?api-key=s3cret&region=cn")
    saved = saved_config(secret)
    assert saved.reward.judge.base_url == "https://***@judge.example/v1?api-key=***&region=cn"
    assert secret.reward.judge.base_url.startswith("https://user:hunter2@")  # the run itself still reaches the judge
    plain = config("http://127.0.0.1:8000/v1")
    assert saved_config(plain) is plain


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "rm", "kto", "grpo", "rloo"])
def test_trl_configs_load_references_with_the_policys_remote_code_setting(tmp_path, prompts, stage):
    """TRL loads the reference model (and grpo/rloo reward models given by name) itself, with its
    config's trust_remote_code; grpo/rloo eval batches hold whole groups, which TRL checks."""
    from belle.train.run import training_arguments

    rl = ["reward.weights={eos: 1}", "rl.num_generations=4", "training.gradient_accumulation_steps=2"]
    config = load_config(TrainConfig, None, [
        f"model.path={tmp_path}", f"output_dir={tmp_path / 'run'}", f"data.train_files=[{prompts}]", f"stage={stage}",
        "model.trust_remote_code=true", "data.validation_split=0.5", "training.batch_size=4", "training.report_to=[]",
        *(rl if stage in ("grpo", "rloo") else [])])
    args = training_arguments(config, "fp32")
    assert args.trust_remote_code is True
    if stage in ("grpo", "rloo"):
        assert args.per_device_eval_batch_size == 4  # one group per process, not the 8 completions of a whole step


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
