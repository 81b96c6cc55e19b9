"""The Arrow pipeline: same samples as direct encoding, in one process or several, cached, counted."""

import json

import pytest

from belle.dataset import load_conversations, rejected_lines, tokenize_dataset
from belle.records import DataError
from belle.templates import get_template
from belle.tokenization import encode_batch

BELLE = get_template("belle")


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = []
    for i in range(40):
        turns = [{"from": "human", "value": f"问题{i}：" + "为什么" * (i % 7)}, {"from": "gpt", "value": f"回答{i}。" + "因为" * (i % 11)}]
        lines.append(json.dumps({"id": f"c{i}", "conversations": turns}, ensure_ascii=False))
    lines[5] = "{not json"
    lines[9] = json.dumps({"conversations": [{"from": "human", "value": "没有回答"}]}, ensure_ascii=False)
    lines.append(json.dumps({"instruction": "只是一个指令", "input": "", "output": "好的。"}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pipeline_matches_direct_encoding_and_counts_everything(data_file, tokenizer):
    conversations = load_conversations(data_file)
    samples, stats = tokenize_dataset(conversations, tokenizer, BELLE, max_length=60, overlong="drop")
    assert stats.records == 41
    assert stats.rejected == {"malformed JSON": 1, "no assistant turn": 1}
    kept = [c for c in conversations if not c["reject"]]
    direct = encode_batch([c["messages"] for c in kept], tokenizer, BELLE, 60, "drop")
    assert stats.dropped == ({"longer than max_length": sum(1 for e in direct if e.drop)} if any(e.drop for e in direct) else {})
    assert [s["input_ids"] for s in samples] == [e.input_ids for e in direct if not e.drop]
    assert [s["id"] for s in samples][:2] == ["c0", "c1"]
    assert stats.samples == len(samples) == stats.records - 2 - sum(stats.dropped.values())
    assert stats.tokens == sum(len(s["input_ids"]) for s in samples)
    assert stats.trained_tokens == sum(1 for s in samples for label in s["labels"] if label != -100)
    assert rejected_lines(conversations) == [f"{data_file}:6: malformed JSON: Expecting property name enclosed in double quotes",
                                             f"{data_file}:10: no assistant turn"]


@pytest.mark.parametrize("num_proc", [2, 16])
def test_several_processes_give_the_same_rows_as_one(data_file, tokenizer, num_proc):
    """Processes beyond the CPUs, or beyond one per packing window, would each pack their own few
    samples into half-empty rows (pt.yaml's num_proc 16 on a small corpus: one row per sample)."""
    one, one_stats = tokenize_dataset(load_conversations(data_file), tokenizer, BELLE, max_length=80, pack=True)
    many, many_stats = tokenize_dataset(load_conversations(data_file), tokenizer, BELLE, max_length=80, pack=True,
                                        num_proc=num_proc)
    rows = lambda ds: sorted((r["ids"], r["input_ids"], r["position_ids"]) for r in ds)
    assert rows(one) == rows(many) and one_stats.rows == many_stats.rows


def test_packing_stats_and_rows(data_file, tokenizer):
    samples, stats = tokenize_dataset(load_conversations(data_file), tokenizer, BELLE, max_length=128, pack=True)
    assert stats.rows == len(samples) and stats.max_length == 128
    assert all(len(r["input_ids"]) <= 128 for r in samples)
    assert sorted(i for r in samples for i in r["ids"]) == sorted([f"c{i}" for i in range(40) if i not in (5, 9)] + ["mixed-41"])
    assert stats.packing_efficiency == pytest.approx(stats.tokens / (stats.rows * 128))
    assert stats.packing_efficiency > 0.8


def test_a_rerun_reuses_the_arrow_cache_and_a_changed_file_does_not(data_file, tokenizer):
    first = load_conversations(data_file)
    again = load_conversations(data_file)
    assert first.cache_files == again.cache_files
    encoded_first, _ = tokenize_dataset(first, tokenizer, BELLE, max_length=60)
    encoded_again, _ = tokenize_dataset(again, tokenizer, BELLE, max_length=60)
    assert encoded_first.cache_files == encoded_again.cache_files
    data_file.write_text(data_file.read_text(encoding="utf-8") + json.dumps({"instruction": "新的", "output": "记录"}, ensure_ascii=False) + "\n", encoding="utf-8")
    changed = load_conversations(data_file)
    assert len(changed) == len(first) + 1


def test_strict_policy_raises_the_first_bad_line(data_file):
    with pytest.raises(DataError, match=r"mixed.jsonl:6: malformed JSON"):
        load_conversations(data_file, policy="strict")


def test_datasets_dataset_is_a_source(tokenizer):
    from datasets import Dataset

    source = Dataset.from_list([{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}]}] * 3)
    samples, stats = tokenize_dataset(load_conversations(source), tokenizer, BELLE)
    assert stats.samples == 3 and samples[0]["id"] == "dataset-1"


def test_packing_without_max_length_is_refused(data_file, tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(load_conversations(data_file), tokenizer, BELLE, pack=True)


@pytest.mark.parametrize("pack", [False, True])
def test_an_empty_file_is_an_empty_dataset_with_the_usual_columns(tmp_path, tokenizer, pack):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    conversations = load_conversations(empty)
    assert len(conversations) == 0 and conversations.column_names == ["id", "messages", "reject", "location"]
    samples, stats = tokenize_dataset(conversations, tokenizer, BELLE, max_length=64, pack=pack)
    assert len(samples) == 0 and stats.records == 0 and stats.samples == 0
    assert "input_ids" in samples.column_names and rejected_lines(conversations) == []


@pytest.mark.parametrize("pack", [False, True])
def test_a_file_where_every_record_is_rejected_counts_each_reason(tmp_path, tokenizer, pack):
    path = tmp_path / "questions.jsonl"
    path.write_text("{bad\n" + json.dumps({"conversations": [{"from": "human", "value": "没有回答"}]}, ensure_ascii=False) + "\n", encoding="utf-8")
    samples, stats = tokenize_dataset(load_conversations(path), tokenizer, BELLE, max_length=64, pack=pack)
    assert len(samples) == 0 and stats.samples == 0 and stats.records == 2
    assert stats.rejected == {"malformed JSON": 1, "no assistant turn": 1}
