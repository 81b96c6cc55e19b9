"""belle.conversation: every input format to messages, every rejection as `file:line: reason`."""

import itertools
import json
import types
from pathlib import Path

import pytest

from belle.conversation import (Conversation, detect_format, read_conversations, record_to_messages, to_belle,
                                to_messages)
from belle.records import DataError, RejectReport, Rejection, list_data_files
from tests.helpers import count_text_read, write_lines

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def U(content):
    return {"role": "user", "content": content}


def A(content):
    return {"role": "assistant", "content": content}


def S(content):
    return {"role": "system", "content": content}


def read_all(source, **kwargs):
    report = RejectReport()
    conversations = list(read_conversations(source, report=report, **kwargs))
    return conversations, report


GOOD = {"instruction": "你好", "output": "你好！"}


# ---------------------------------------------------------------------------------------------
# One record -> messages, per format


def test_belle_from_values_map_to_roles_case_insensitively():
    record = {"conversations": [
        {"from": "System", "value": "你是助手"},
        {"from": "HUMAN", "value": "一"},
        {"from": "gpt", "value": "二"},
        {"from": "User", "value": "三"},
        {"from": "bot", "value": "四"},
        {"from": "human", "value": "五"},
        {"from": "Assistant", "value": "六"},
    ]}
    assert detect_format(record) == "belle"
    assert record_to_messages(record) == [S("你是助手"), U("一"), A("二"), U("三"), A("四"), U("五"), A("六")]


def test_alpaca_without_input_is_one_exchange():
    record = {"instruction": "列举三种水果。", "input": "", "output": "苹果、香蕉、橘子。"}
    assert detect_format(record) == "alpaca"
    assert record_to_messages(record) == [U("列举三种水果。"), A("苹果、香蕉、橘子。")]


def test_alpaca_missing_input_key_is_the_same_as_empty_input():
    assert record_to_messages({"instruction": "问", "output": "答"}) == [U("问"), A("答")]


def test_alpaca_input_is_joined_to_instruction_with_a_newline():
    record = {"instruction": "翻译成英文：", "input": "早上好", "output": "Good morning"}
    assert record_to_messages(record) == [U("翻译成英文：\n早上好"), A("Good morning")]


def test_alpaca_system_and_history_come_before_the_last_exchange():
    record = {
        "system": "你是数学老师",
        "history": [["1+1=?", "2"], ["再加1呢？", "3"]],
        "instruction": "再乘以2呢？",
        "input": "",
        "output": "6",
    }
    assert record_to_messages(record) == [
        S("你是数学老师"), U("1+1=?"), A("2"), U("再加1呢？"), A("3"), U("再乘以2呢？"), A("6"),
    ]


def test_alpaca_history_that_is_not_pairs_is_rejected():
    with pytest.raises(Rejection) as e:
        record_to_messages({"history": [["only one"]], "instruction": "q", "output": "a"})
    assert e.value.reason == "missing field"


def test_multiturn_string_becomes_alternating_turns_with_output_last():
    record = {"instruction": "Human:你好\nAssistant:嗨\nHuman:再见\nAssistant:", "input": "", "output": "拜拜"}
    assert detect_format(record) == "multiturn"
    assert record_to_messages(record) == [U("你好"), A("嗨"), U("再见"), A("拜拜")]


def test_multiturn_turn_contents_are_stripped():
    record = {"instruction": "Human: 你好 \nAssistant:  嗨\n\nHuman:\n再见\nAssistant: ", "output": "拜拜"}
    assert record_to_messages(record) == [U("你好"), A("嗨"), U("再见"), A("拜拜")]


def test_multiturn_turn_may_span_several_lines():
    record = {"instruction": "Human:第一行\n第二行\nAssistant:", "output": "好"}
    assert record_to_messages(record) == [U("第一行\n第二行"), A("好")]


def test_messages_with_system_message_are_kept_as_they_are():
    messages = [S("简洁回答"), U("天空为什么是蓝色的？"), A("瑞利散射。")]
    assert detect_format({"messages": messages}) == "messages"
    assert record_to_messages({"messages": messages}) == messages


def test_text_is_one_assistant_message_without_prompt():
    assert detect_format({"text": "一段预训练文本。"}) == "text"
    assert record_to_messages({"text": "一段预训练文本。"}) == [A("一段预训练文本。")]


def test_forced_alpaca_keeps_a_multiturn_instruction_literally():
    instruction = "Human:你好\nAssistant:嗨\nHuman:再见\nAssistant:"
    record = {"instruction": instruction, "input": "", "output": "拜拜"}
    assert record_to_messages(record, "alpaca") == [U(instruction), A("拜拜")]


def test_forced_format_applies_to_every_record_of_a_file(tmp_path):
    instruction = "Human:你好\nAssistant:嗨\nHuman:再见\nAssistant:"
    path = write_lines(tmp_path / "mt.jsonl", {"instruction": instruction, "output": "拜拜"}, GOOD)
    conversations, report = read_all(path, format="alpaca")
    assert [c.messages for c in conversations] == [[U(instruction), A("拜拜")], [U("你好"), A("你好！")]]
    assert report.total == 0


def test_forced_format_rejects_records_of_another_format(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", GOOD)
    conversations, report = read_all(path, format="belle")
    assert conversations == []
    assert report.lines == [f"{path}:1: missing field: 'conversations'"]


def test_format_is_detected_per_record_in_one_mixed_file(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        {"id": "b", "conversations": [{"from": "human", "value": "问1"}, {"from": "gpt", "value": "答1"}]},
        {"id": "a", "instruction": "问2", "input": "补充", "output": "答2"},
        {"id": "m", "instruction": "Human:问3\nAssistant:答3\nHuman:问4\nAssistant:", "output": "答4"},
        {"id": "o", "messages": [S("系统"), U("问5"), A("答5")]},
        {"id": "t", "text": "文本"},
    )
    conversations, report = read_all(path)
    assert report.total == 0
    assert [(c.id, c.messages) for c in conversations] == [
        ("b", [U("问1"), A("答1")]),
        ("a", [U("问2\n补充"), A("答2")]),
        ("m", [U("问3"), A("答3"), U("问4"), A("答4")]),
        ("o", [S("系统"), U("问5"), A("答5")]),
        ("t", [A("文本")]),
    ]


# ---------------------------------------------------------------------------------------------
# Files: BOM, broken arrays, folders (the record reader itself: tests/test_records.py)


def test_jsonl_with_utf8_bom_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode("utf-8") + (json.dumps(GOOD, ensure_ascii=False) + "\n").encode("utf-8"))
    conversations, report = read_all(path)
    assert [c.messages for c in conversations] == [[U("你好"), A("你好！")]]
    assert report.total == 0


def test_malformed_array_rejection_is_reported_and_the_next_file_is_still_read(tmp_path):
    folder = tmp_path / "d"
    (folder).mkdir()
    (folder / "a.json").write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": oops}\n]\n', encoding="utf-8")
    write_lines(folder / "b.jsonl", GOOD)
    conversations, report = read_all(folder)
    assert [c.id for c in conversations] == ["a-2", "b-1"]
    assert len(report.lines) == 1
    assert report.lines[0].startswith(f"{folder / 'a.json'}:3: malformed JSON: ")


def test_unclosed_json_array_is_reported_as_malformed(tmp_path):
    path = tmp_path / "open.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"}\n', encoding="utf-8")
    conversations, report = read_all(path)
    assert [c.messages for c in conversations] == [[U("a"), A("b")]]
    assert report.counts == {"malformed JSON": 1}


def test_folder_is_read_recursively_in_sorted_order_and_only_json_files(tmp_path):
    folder = tmp_path / "data"
    write_lines(folder / "c.jsonl", {"id": "c", **GOOD})
    write_lines(folder / "a.jsonl", {"id": "a", **GOOD})
    (folder / "sub").mkdir()
    (folder / "sub" / "b.json").write_text(json.dumps([{"id": "b", **GOOD}], ensure_ascii=False), encoding="utf-8")
    (folder / "notes.txt").write_text("not data\n", encoding="utf-8")
    (folder / "sub" / "README.md").write_text("# not data\n", encoding="utf-8")
    assert list_data_files(folder) == [folder / "a.jsonl", folder / "c.jsonl", folder / "sub" / "b.json"]
    conversations, report = read_all(folder)
    assert [c.id for c in conversations] == ["a", "c", "b"]
    assert report.total == 0


def test_several_sources_are_read_in_order(tmp_path):
    first = write_lines(tmp_path / "one.jsonl", {"id": "1", **GOOD})
    second = write_lines(tmp_path / "two.jsonl", {"id": "2", **GOOD})
    assert [c.id for c in read_conversations([second, str(first)])] == ["2", "1"]


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        list(read_conversations(tmp_path / "nope.jsonl"))


def test_folder_without_data_files_is_a_data_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"no \.json or \.jsonl files"):
        list(read_conversations(tmp_path))


# ---------------------------------------------------------------------------------------------
# Rejections: `file:line: reason`


REJECTS = {
    "malformed JSON": '{"instruction": "x", "output": ',
    "missing field": {"instruction": "只有指令"},
    "unknown role": {"conversations": [{"from": "narrator", "value": "从前"}, {"from": "gpt", "value": "有座山"}]},
    "empty content": {"messages": [U("问"), A("   ")]},
    "no assistant turn": {"messages": [S("系统"), U("问")]},
    "roles out of order (system not first)": {"messages": [U("问"), S("系统"), A("答")]},
    "roles out of order (two user turns)": {"messages": [U("问"), U("又问"), A("答")]},
    "roles out of order (assistant first)": {"conversations": [{"from": "gpt", "value": "答"}, {"from": "human", "value": "问"}]},
    "not an object": '["a list", "not an object"]',
    "unknown format": {"prompt": "p", "chosen": "c", "rejected": "r"},
}


@pytest.mark.parametrize("case", list(REJECTS))
def test_each_reject_reason_is_reported_with_its_file_and_line(tmp_path, case):
    reason = case.split(" (")[0]
    path = write_lines(tmp_path / "data.jsonl", GOOD, "", REJECTS[case], {"text": "后面的记录照常读取"})
    lines = []
    conversations, report = read_all(path, on_reject=lines.append)
    assert [c.messages for c in conversations] == [[U("你好"), A("你好！")], [A("后面的记录照常读取")]]
    assert len(report.lines) == 1
    assert report.lines[0].startswith(f"{path}:3: {reason}")
    assert report.lines[0] == f"{path}:3: {reason}" or report.lines[0].startswith(f"{path}:3: {reason}: ")
    assert report.counts == {reason: 1}
    assert lines == report.lines


def test_unknown_role_in_messages_is_rejected():
    with pytest.raises(Rejection) as e:
        record_to_messages({"messages": [U("问"), {"role": "tool", "content": "x"}]})
    assert e.value.reason == "unknown role"


def test_empty_text_is_rejected_as_empty_content():
    with pytest.raises(Rejection) as e:
        record_to_messages({"text": " \n "})
    assert e.value.reason == "empty content"


def test_multiturn_without_bare_assistant_at_the_end_reads_as_alpaca():
    record = {"instruction": "Human:你好\nAssistant:嗨", "output": "x"}
    assert detect_format(record) == "alpaca"


def test_skip_policy_counts_every_reason_and_summarizes(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl",
        GOOD,
        "{broken",
        {"conversations": [{"from": "alien", "value": "x"}]},
        "{also broken",
        GOOD,
        {"messages": [U("问")]},
        "{broken again",
    )
    seen = []
    conversations, report = read_all(path, on_reject=seen.append)
    assert len(conversations) == 2
    assert report.counts == {"malformed JSON": 3, "unknown role": 1, "no assistant turn": 1}
    assert report.total == 5
    assert report.summary() == "rejected 5 records (malformed JSON: 3, unknown role: 1, no assistant turn: 1)"
    assert [line.split(": ")[0] for line in seen] == [f"{path}:{n}" for n in (2, 3, 4, 6, 7)]
    assert seen == report.lines


def test_report_without_lines_still_counts(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", "{broken", GOOD)
    report = RejectReport(keep_lines=False)
    assert len(list(read_conversations(path, report=report))) == 1
    assert report.counts == {"malformed JSON": 1} and report.lines == []


def test_strict_policy_raises_the_first_bad_line_exactly(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", GOOD, {"messages": [U("问")]}, "{broken")
    skipped = []
    list(read_conversations(path, on_reject=skipped.append))
    kept = []
    with pytest.raises(DataError) as e:
        for conversation in read_conversations(path, policy="strict"):
            kept.append(conversation)
    assert str(e.value) == skipped[0]
    assert str(e.value).startswith(f"{path}:2: no assistant turn")
    assert len(kept) == 1


# ---------------------------------------------------------------------------------------------
# `datasets` datasets


def test_datasets_dataset_is_read_row_by_row():
    from datasets import Dataset

    ds = Dataset.from_list([
        {"instruction": "问1", "input": "", "output": "答1"},
        {"instruction": "问2", "input": "补充", "output": ""},
        {"instruction": "问3", "input": "", "output": "答3"},
    ])
    conversations, report = read_all(ds)
    assert [(c.id, c.messages) for c in conversations] == [
        ("dataset-1", [U("问1"), A("答1")]),
        ("dataset-3", [U("问3"), A("答3")]),
    ]
    assert report.lines == ["dataset:2: empty content: message 1 (assistant)"]


def test_dataset_rows_with_null_columns_are_detected_by_the_keys_they_use():
    # `datasets.load_dataset("json", ...)` on a mixed file gives every row every column, None where absent.
    from datasets import Dataset

    ds = Dataset.from_list([
        {"instruction": "问", "output": "答", "text": None},
        {"instruction": None, "output": None, "text": "纯文本"},
    ])
    conversations, report = read_all(ds)
    assert report.lines == []
    assert [c.messages for c in conversations] == [[U("问"), A("答")], [A("纯文本")]]


def test_saved_dataset_folder_is_loaded_by_load_conversations(tmp_path):
    from datasets import Dataset

    from belle.dataset import load_conversations

    folder = tmp_path / "saved"
    Dataset.from_list([
        {"id": "x1", "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "嗨"}]},
        {"id": "x2", "conversations": [{"from": "human", "value": "只有问题"}]},
    ]).save_to_disk(str(folder))
    table = load_conversations(str(folder))
    rows = list(table)
    assert [r["id"] for r in rows] == ["x1", ""]  # a rejected record is identified by its location
    assert rows[0]["messages"] == [U("你好"), A("嗨")] and rows[0]["reject"] == ""
    assert rows[1]["reject"] == "no assistant turn"
    assert rows[1]["location"].startswith("dataset:2: no assistant turn")


# ---------------------------------------------------------------------------------------------
# Ids


def test_record_id_is_kept_and_ints_become_strings(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", {"id": "abc", **GOOD}, {"id": 42, **GOOD}, GOOD)
    assert [c.id for c in read_conversations(path)] == ["abc", "42", "train-3"]


def test_record_id_zero_is_kept(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", {"id": 0, **GOOD})
    assert [c.id for c in read_conversations(path)] == ["0"]


def test_derived_id_uses_the_line_of_the_record_in_a_json_array(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([GOOD, GOOD], ensure_ascii=False, indent=2), encoding="utf-8")
    assert [c.id for c in read_conversations(path)] == ["alpaca-2", "alpaca-6"]


# ---------------------------------------------------------------------------------------------
# Writers


def test_to_belle_writes_human_assistant_and_system_speakers():
    conversation = Conversation("c1", [S("系统"), U("问"), A("答")])
    assert to_belle(conversation) == {
        "id": "c1",
        "conversations": [{"from": "system", "value": "系统"}, {"from": "human", "value": "问"}, {"from": "assistant", "value": "答"}],
    }


def test_to_messages_copies_the_messages():
    conversation = Conversation("c1", [U("问"), A("答")])
    out = to_messages(conversation)
    assert out == {"id": "c1", "messages": [U("问"), A("答")]}
    out["messages"][0]["content"] = "changed"
    assert conversation.messages[0]["content"] == "问"


@pytest.mark.parametrize("writer", [to_belle, to_messages])
def test_written_records_read_back_to_the_same_conversations(tmp_path, writer):
    source = write_lines(
        tmp_path / "in.jsonl",
        {"id": "a", "system": "系统提示", "history": [["早", "早上好"]], "instruction": "问", "input": "补充", "output": "答"},
        {"id": "m", "instruction": "Human:你好\nAssistant:嗨\nHuman:再见\nAssistant:", "output": "拜拜"},
        {"id": "t", "text": "文本"},
    )
    original = list(read_conversations(source))
    out = write_lines(tmp_path / "out.jsonl", *[writer(c) for c in original if c.messages[0]["role"] != "assistant"])
    back = list(read_conversations(out))
    assert [(c.id, c.messages) for c in back] == [(c.id, c.messages) for c in original[:2]]


# ---------------------------------------------------------------------------------------------
# Sample data shipped in data/samples


@pytest.mark.parametrize(
    "name, count",
    [("belle_conversations.jsonl", 24), ("alpaca.json", 16), ("multiturn_chat.jsonl", 10), ("messages.jsonl", 12), ("pretrain.jsonl", 12)],
)
def test_sample_files_read_without_rejections(name, count):
    conversations, report = read_all(SAMPLES / name)
    assert report.lines == []
    assert len(conversations) == count


# ---------------------------------------------------------------------------------------------
# Streaming


def test_read_conversations_streams_a_large_file(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    # The last line is bad: with policy strict, reading it would raise, so getting the first
    # records without an error proves they came before the end of the file was read.
    path.write_text('{"instruction": "问", "output": "答"}\n' * 200_000 + "{broken\n", encoding="utf-8")
    size = len(path.read_text(encoding="utf-8"))
    text_read = count_text_read(monkeypatch, path)
    conversations = read_conversations(path, policy="strict")
    assert isinstance(conversations, types.GeneratorType)
    first = list(itertools.islice(conversations, 10))
    assert [c.id for c in first] == [f"big-{n}" for n in range(1, 11)]
    assert 0 < text_read() < size / 10, f"{text_read()} of {size} characters read for 10 records: the file is not streamed"
    conversations.close()


def test_unknown_forced_format_is_a_clear_error(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", {"text": "x"})
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        list(read_conversations(path, format="xml"))
