"""Preflight on its own: the checks on paths, checkpoints, hardware and DeepSpeed JSON, each one
sentence per problem, all collected at once (`test_bad_input` runs a few through `belle train`)."""

import json

import pytest
import torch

from belle.config import load_config
from belle.train.checkpoints import MARKER
from belle.train.config import TrainConfig
from belle.train.preflight import check_deepspeed, check_run, resolve_precision


@pytest.fixture
def model_dir(tmp_path):
    """A folder that passes as a model for every check a full-parameter run makes (no weights)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("{}\n", encoding="utf-8")
    return path


@pytest.fixture
def config(model_dir, data_file, tmp_path):
    """`config(*overrides)`: a TrainConfig on `model_dir` and `data_file` into `tmp_path/run`."""

    def build(*overrides):
        return load_config(TrainConfig, None, [f"model.path={model_dir}", f"output_dir={tmp_path / 'run'}",
                                               f"data.train_files=[{data_file}]", *overrides])

    return build


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def checkpoint(folder, complete=True):
    folder.mkdir(parents=True)
    if complete:
        (folder / MARKER).write_text("{}", encoding="utf-8")
    return folder


def test_precision_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (resolve_precision("auto"), resolve_precision("bf16")) == ("fp32", "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert (resolve_precision("auto"), resolve_precision("fp32")) == ("fp16", "fp32")


def test_a_sound_run_has_no_problems(config, cpu_only):
    assert check_run(config()) == []


def test_every_problem_is_found_in_one_go(config, cpu_only, tmp_path):
    missing_model, missing_data = tmp_path / "nowhere", tmp_path / "gone.jsonl"
    problems = check_run(config(f"model.path={missing_model}", f"data.validation_files=[{missing_data}]",
                                "model.attn_implementation=flash_attention_2", "training.precision=fp16",
                                f"training.deepspeed={tmp_path / 'ds.json'}"))
    assert problems == [
        f"model.path: {missing_model} does not exist; give a Hugging Face model folder",
        f"data.validation_files: {missing_data} does not exist",
        "model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa on CPU",
        "training.precision: fp16 needs a GPU; use auto or fp32 on CPU",
        f"training.deepspeed: {tmp_path / 'ds.json'} does not exist; see train/configs/ds_zero*.json",
    ]


def test_a_folder_without_config_json_is_named(config, cpu_only, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_run(config(f"model.path={empty}")) == [f"model.path: {empty} has no config.json; give a Hugging Face model folder"]


def test_qlora_on_cpu_names_the_gpu_it_needs(config, cpu_only):
    problems = check_run(config("method=qlora"))
    assert problems[0] == ("method: qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                           "use method=lora on CPU")


def test_resume_must_name_a_complete_checkpoint(config, cpu_only, tmp_path):
    nowhere = tmp_path / "nowhere"
    assert check_run(config(f"resume={nowhere}")) == [
        f"resume: {nowhere} is not a checkpoint folder; use auto, never, force or a checkpoint-N folder"]
    half = checkpoint(tmp_path / "other" / "checkpoint-3", complete=False)
    assert check_run(config(f"resume={half}")) == [
        f"resume: {half} is not a complete belle checkpoint (it has no {MARKER} marker)"]


def test_a_fresh_run_may_not_overwrite_complete_checkpoints(config, cpu_only, tmp_path):
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint(run / f"checkpoint-{step}")
    assert check_run(config("resume=auto")) == []
    assert check_run(config("resume=never")) == [
        f"resume: {run} holds checkpoints this run would overwrite (checkpoint-2, checkpoint-4); "
        "resume=auto continues from the newest, or choose another output_dir"]
    problems = check_run(config(f"resume={run / 'checkpoint-2'}"))
    assert len(problems) == 1 and "(checkpoint-4)" in problems[0]


@pytest.mark.parametrize("overrides, at_risk", [
    (("training.save_steps=5",), False),
    (("training.save_steps=5", "training.max_steps=7"), True),
    (("training.save_steps=7",), True),
])
def test_a_foreign_checkpoint_counts_only_where_this_run_would_save(config, cpu_only, tmp_path, overrides, at_risk):
    checkpoint(tmp_path / "run" / "checkpoint-7", complete=False)
    problems = check_run(config(*overrides))
    assert bool(problems) == at_risk
    if at_risk:
        assert problems[0].startswith(f"output_dir: {tmp_path / 'run'} holds checkpoint-7, not written by belle train")


def test_a_foreign_checkpoint_before_the_resumed_step_is_left_alone(config, cpu_only, tmp_path):
    checkpoint(tmp_path / "run" / "checkpoint-5", complete=False)
    checkpoint(tmp_path / "run" / "checkpoint-10")
    assert check_run(config("training.save_steps=5")) == []


def write_ds(tmp_path, ds):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds) if not isinstance(ds, str) else ds, encoding="utf-8")
    return path


def test_deepspeed_auto_and_agreeing_values_pass(config, tmp_path):
    path = write_ds(tmp_path, {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": "auto",
                               "gradient_clipping": 1.0, "optimizer": {"params": {"lr": "auto", "weight_decay": 0.0}},
                               "bf16": {"enabled": "auto"}, "fp16": {"enabled": False},
                               "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
    assert check_deepspeed(path, config("training.batch_size=2"), "fp32") == []


def test_deepspeed_values_that_contradict_ours_name_both(config, tmp_path):
    path = write_ds(tmp_path, {"train_micro_batch_size_per_gpu": 4, "optimizer": {"params": {"lr": 0.001}}})
    where = f"training.deepspeed: {path}"
    assert check_deepspeed(path, config("training.batch_size=2"), "fp32") == [
        f'{where} sets train_micro_batch_size_per_gpu to 4 but training.batch_size is 2; set it to "auto" or make them agree',
        f'{where} sets optimizer.params.lr to 0.001 but training.learning_rate is 2e-05; set it to "auto" or make them agree',
    ]


@pytest.mark.parametrize("ds, precision, problem", [
    ({"bf16": {"enabled": True}}, "fp32", "sets bf16.enabled to true but the run's precision is fp32"),
    ({"bf16": {"enabled": False}}, "bf16", "sets bf16.enabled to false but the run's precision is bf16"),
    ({"fp16": {"enabled": True}}, "bf16", "sets fp16.enabled to true but the run's precision is bf16"),
    ({"fp16": {"enabled": True}}, "fp16", None),
])
def test_deepspeed_precision_must_match_the_run(config, tmp_path, ds, precision, problem):
    problems = check_deepspeed(write_ds(tmp_path, ds), config(), precision)
    assert [problem in p for p in problems] == ([True] if problem else [])


def test_deepspeed_zero_stages_that_cannot_work(config, tmp_path):
    zero3 = write_ds(tmp_path, {"zero_optimization": {"stage": 3}})
    assert check_deepspeed(zero3, config("method=qlora"), "bf16") == [
        f"training.deepspeed: {zero3} uses ZeRO-3, which cannot shard a 4-bit bitsandbytes model; use ZeRO-2 with method=qlora"]
    offload = write_ds(tmp_path, {"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})
    assert check_deepspeed(offload, config(), "fp32") == [
        f"training.deepspeed: {offload} offloads parameters, which only ZeRO-3 does; set zero_optimization.stage to 3"]
    assert check_deepspeed(write_ds(tmp_path, {"zero_optimization": {"stage": 2, "offload_param": {"device": "none"}}}),
                           config(), "fp32") == []


@pytest.mark.parametrize("text, problem", [("{not json", "is not valid JSON ("), ("[1, 2]", "must hold a JSON object")])
def test_a_deepspeed_file_that_is_not_a_json_object_is_one_problem(config, tmp_path, text, problem):
    path = write_ds(tmp_path, text)
    (found,) = check_deepspeed(path, config(), "fp32")
    assert found.startswith(f"training.deepspeed: {path} {problem}")
