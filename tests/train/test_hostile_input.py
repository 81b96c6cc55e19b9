"""Hostile input to `belle train`, in process: exit 2 and one message naming the file or the folder,
found before the model is loaded (the decoy model's weights cannot be read)."""

import json

import pytest

from belle.config import load_config
from belle.train.checkpoints import IN_PROGRESS
from belle.train.cli import main
from belle.train.config import TrainConfig
from belle.train.fingerprint import run_fingerprint, write_fingerprint
from tests.helpers import write_jsonl
from tests.train.helpers import conversation, files_list, train_overrides


@pytest.fixture
def refused(decoy_model_dir, tmp_path, capsys):
    """`refused(*overrides)` runs `belle train` on the decoy model into `tmp_path/run`, asserts exit 2
    with one `error:` message and no model written, and returns the message."""

    def run(*overrides):
        out = tmp_path / "run"
        status = main(train_overrides(decoy_model_dir, out, *overrides), prog="belle train")
        err = capsys.readouterr().err
        assert status == 2, err[-3000:]
        assert "Traceback" not in err and err.count("belle train: error:") == 1, err[-3000:]
        assert not (out / "model.safetensors").exists()
        return err[err.index("belle train: error:"):]

    return run


def test_an_empty_file_names_the_file(refused, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    message = refused(f"data.train_files={files_list(empty)}")
    assert str(empty) in message and "no records" in message


def test_an_empty_file_with_a_validation_split_names_the_file(refused, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    message = refused(f"data.train_files={files_list(empty)}", "data.validation_split=0.1")
    assert str(empty) in message and "no records" in message


def test_a_file_without_an_assistant_turn_names_the_file_and_the_count(refused, tmp_path):
    questions = [{"conversations": [{"from": "human", "value": f"问题{i}"}]} for i in range(3)]
    data = write_jsonl(tmp_path / "questions.jsonl", questions)
    message = refused(f"data.train_files={files_list(data)}")
    assert str(data) in message and "of 3 records" in message and "no assistant turn: 3" in message


@pytest.mark.parametrize("pack", ["true", "false"])
def test_rejected_and_dropped_records_are_counted_per_reason(refused, tmp_path, pack):
    records = [conversation("问题", "很长的回答，" * 50) for _ in range(2)] + [{"conversations": [{"from": "human", "value": "没有回答"}]}]
    data = write_jsonl(tmp_path / "mixed.jsonl", records)
    message = refused(f"data.train_files={files_list(data)}", "data.max_length=8", "data.overlong=drop", f"data.pack={pack}")
    assert str(data) in message and "of 3 records" in message
    assert "rejected 1 (no assistant turn: 1)" in message and "dropped 2" in message


def test_a_gbk_file_is_one_message_naming_the_file(refused, tmp_path):
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes((json.dumps(conversation("你好，请介绍一下自己。", "我是一个语言模型。"), ensure_ascii=False) + "\n").encode("gbk"))
    message = refused(f"data.train_files={files_list(gbk)}")
    assert str(gbk) in message and "UTF-8" in message


def test_a_gbk_file_in_a_folder_is_a_counted_reject(refused, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "gbk.jsonl").write_bytes((json.dumps(conversation("你好", "我是模型。"), ensure_ascii=False) + "\n").encode("gbk"))
    message = refused(f"data.train_files={files_list(folder)}")
    assert str(folder) in message and "not UTF-8: 1" in message


def test_a_changed_run_is_refused_with_its_differences(refused, decoy_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [conversation("问题", "回答")])
    first = train_overrides(decoy_model_dir, tmp_path / "run", f"data.train_files={files_list(data)}", "training.learning_rate=0.001")
    write_fingerprint(tmp_path / "run", run_fingerprint(load_config(TrainConfig, None, first)))
    message = refused(f"data.train_files={files_list(data)}", "training.learning_rate=0.0002", "training.max_steps=9")
    assert "resume=force" in message
    assert "training.learning_rate: 0.001 -> 0.0002" in message and "training.max_steps: null -> 9" in message


def test_a_foreign_checkpoint_this_run_would_save_into_is_refused(refused, tmp_path):
    foreign = tmp_path / "run" / "checkpoint-10"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text("{}")
    message = refused(f"data.train_files={files_list(write_jsonl(tmp_path / 'd.jsonl', [conversation('问', '答')]))}",
                      "training.save_steps=5")
    assert "checkpoint-10" in message and "not written by belle" in message
    assert (foreign / "trainer_state.json").read_text() == "{}"


def test_resuming_from_a_folder_belle_did_not_complete_is_refused(refused, tmp_path):
    half = tmp_path / "other" / "checkpoint-4"
    half.mkdir(parents=True)
    (half / IN_PROGRESS).write_text("{}")
    message = refused(f"data.train_files={files_list(write_jsonl(tmp_path / 'd.jsonl', [conversation('问', '答')]))}",
                      f"resume={half}")
    assert str(half) in message and "COMPLETE" in message


def test_an_output_dir_that_is_a_file_is_one_message(decoy_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", [conversation("问题", "回答")])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    status = main(train_overrides(decoy_model_dir, a_file, f"data.train_files={files_list(data)}"), prog="belle train")
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err[-3000:]
    assert f"{a_file}: a file where a folder is needed" in err
    assert a_file.read_text() == "mine\n"
