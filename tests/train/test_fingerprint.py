"""The run fingerprint: what changes the optimisation is in it, what only changes reporting is not."""

import os
from pathlib import Path

import pytest

from belle.config import load_config
from belle.train.config import TrainConfig
from belle.train.fingerprint import check_fingerprint, differences, read_fingerprint, run_fingerprint, write_fingerprint
from tests.helpers import write_jsonl
from tests.train.helpers import conversation, files_list


@pytest.fixture
def make_config(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [conversation("问题", "回答")])
    base = [f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", f"data.train_files={files_list(data)}"]

    def make(*overrides):
        return load_config(TrainConfig, None, [*base, *overrides])

    make.data = data
    return make


@pytest.mark.parametrize("override", [
    "training.logging_steps=3", "training.save_steps=7", "training.eval_steps=9", "training.report_to=[]",
    "training.save_total_limit=2", "training.ddp_timeout=60", "data.num_proc=2", "data.strict=true", "resume=never",
])
def test_settings_that_do_not_change_the_optimisation_keep_the_fingerprint(make_config, override):
    assert differences(run_fingerprint(make_config()), run_fingerprint(make_config(override))) == []


@pytest.mark.parametrize("override, key", [
    ("training.learning_rate=0.001", "training.learning_rate"), ("training.lr_scheduler=linear", "training.lr_scheduler"),
    ("training.max_steps=5", "training.max_steps"), ("training.epochs=2", "training.epochs"),
    ("training.batch_size=4", "training.batch_size"), ("training.gradient_accumulation_steps=2", "training.gradient_accumulation_steps"),
    ("training.seed=1", "training.seed"), ("data.max_length=64", "data.max_length"), ("data.pack=true", "data.pack"),
    ("stage=pt", "stage"), ("method=lora", "method"),
])
def test_settings_that_change_the_optimisation_are_listed_old_to_new(make_config, override, key):
    changed = differences(run_fingerprint(make_config()), run_fingerprint(make_config(override)))
    assert changed and changed[0].startswith(f"{key}: "), changed
    assert " -> " in changed[0]


def test_lora_settings_count_only_for_lora_runs(make_config):
    lora = run_fingerprint(make_config("method=lora"))
    assert differences(lora, run_fingerprint(make_config("method=lora", "lora.r=4"))) == ["lora.r: 16 -> 4"]
    assert not any(k.startswith("lora.") for k in run_fingerprint(make_config()))


def test_a_changed_data_file_is_a_difference(make_config):
    before = run_fingerprint(make_config())
    make_config.data.write_text(make_config.data.read_text(encoding="utf-8") * 2, encoding="utf-8")
    changed = differences(before, run_fingerprint(make_config()))
    assert len(changed) == 1 and changed[0].startswith(f"data file {make_config.data.resolve()}: "), changed


def test_a_relative_path_to_the_same_file_is_the_same_run(make_config, tmp_path, monkeypatch):
    before = run_fingerprint(make_config())
    monkeypatch.chdir(tmp_path)
    assert differences(before, run_fingerprint(make_config(f"data.train_files=[{os.path.relpath(make_config.data)}]"))) == []


def test_check_refuses_a_changed_run_unless_forced(make_config):
    config = make_config()
    assert check_fingerprint(config) == [], "a fresh folder proceeds"
    write_fingerprint(config.output_dir, run_fingerprint(config))
    assert read_fingerprint(config.output_dir) == run_fingerprint(config)
    assert check_fingerprint(config) == [], "the same run again proceeds"
    [problem] = check_fingerprint(make_config("training.learning_rate=0.5"))
    assert "resume=force" in problem and "training.learning_rate: 2e-05 -> 0.5" in problem
    assert check_fingerprint(make_config("training.learning_rate=0.5", "resume=force")) == []


def test_an_unreadable_fingerprint_is_a_difference_not_a_crash(make_config):
    config = make_config()
    Path(config.output_dir).mkdir()
    (Path(config.output_dir) / "run_fingerprint.json").write_bytes(b"\xff{")
    [problem] = check_fingerprint(config)
    assert "run_fingerprint.json" in problem
