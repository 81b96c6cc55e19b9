"""Data for rm, grpo/rloo and kto: every accepted shape becomes the same messages, every bad record is
a counted reject with its file:line (or stops a strict read), and random records never raise."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belle.records import DataError, Rejection
from belle.train.preference import kto_examples, load_kto_examples, load_preference_pairs, preference_pair
from belle.train.prompts import load_prompts, prompt_row
from tests.helpers import write_jsonl

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
BELLE_EVAL_SET = Path(__file__).resolve().parents[3] / "shared" / "belle-data" / "eval_set.json"


def belle_text(*turns: str) -> str:
    """BELLE's template: `Human: \\n...\\n\\nAssistant: \\n...` for turns user, assistant, user, ..."""
    names = ["Human", "Assistant"]
    return "\n\n".join(f"{names[i % 2]}: \n{turn}" for i, turn in enumerate(turns))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------------------------
# Preference pairs: BELLE's RM format (implicit prompt)


def test_belle_rm_record_splits_at_the_last_answer():
    record = {"chosen": belle_text("你好", "你好！", "讲个笑话", "好的，从前有座山……"), "rejected": belle_text("你好", "你好！", "讲个笑话", "不讲。")}
    pair = preference_pair(record)
    assert pair == {
        "prompt": [user("你好"), assistant("你好！"), user("讲个笑话")],
        "chosen": [assistant("好的，从前有座山……")],
        "rejected": [assistant("不讲。")],
    }


def test_message_lists_without_a_prompt_split_like_belle_texts():
    prompt = [{"role": "system", "content": "你是助手。"}, user("1+1=?")]
    pair = preference_pair({"chosen": prompt + [assistant("2")], "rejected": prompt + [assistant("3")]})
    assert pair == {"prompt": prompt, "chosen": [assistant("2")], "rejected": [assistant("3")]}


def test_belle_rm_record_with_differing_prefixes_is_rejected_at_its_line(tmp_path):
    path = write_jsonl(tmp_path / "rm.jsonl", [
        {"chosen": belle_text("问题一", "好回答"), "rejected": belle_text("问题一", "坏回答")},
        {"chosen": belle_text("问题一", "好回答"), "rejected": belle_text("问题二", "坏回答")},
    ])
    pairs, report = load_preference_pairs(path)
    assert len(pairs) == 1
    assert report.lines == [f"{path}:2: prompt mismatch: chosen and rejected differ before the last answer"]
    with pytest.raises(DataError, match=f"^{path}:2: prompt mismatch"):
        load_preference_pairs(path, policy="strict")


@pytest.mark.parametrize(
    "record, reason, detail",
    [
        ({"chosen": "好", "rejected": "坏"}, "missing field", "'prompt' (without one, 'chosen' must be a whole conversation"),
        ({"chosen": belle_text("问", "答")}, "missing field", "'rejected' is not a non-empty string or list of messages"),
        ({"chosen": belle_text("问", "答"), "rejected": "Human: \n问\n\nAssistant: \n"}, "roles out of order", "'rejected' must end with the assistant's answer"),
        ({"chosen": "Human: \n\n\nAssistant: \n答", "rejected": belle_text("问", "答")}, "empty content", "message 0 (user)"),
        ({"chosen": [user("问")], "rejected": [user("问")]}, "no assistant turn", ""),
        ({"prompt": "问", "chosen": ["答"], "rejected": "坏"}, "missing field", "'chosen' is not a non-empty string"),
        ([1, 2], "not an object", "got list"),
    ],
)
def test_unusable_implicit_pairs_name_the_reason(record, reason, detail):
    with pytest.raises(Rejection) as caught:
        preference_pair(record)
    assert caught.value.reason == reason and caught.value.detail.startswith(detail)


def test_explicit_prompt_may_be_a_single_user_message():
    pair = preference_pair({"prompt": [user("问")], "chosen": "好", "rejected": "坏"})
    assert pair["prompt"] == [user("问")]


# ---------------------------------------------------------------------------------------------
# Prompts for grpo / rloo


@pytest.mark.parametrize(
    "record, prompt, reference, klass",
    [
        ({"prompt": "1+1等于几？"}, [user("1+1等于几？")], "", ""),
        ({"prompt": "1+1等于几？", "answer": 2}, [user("1+1等于几？")], "2", ""),
        ({"prompt": [{"role": "system", "content": "你是数学老师。"}, user("2+2=?")], "reference": "4"},
         [{"role": "system", "content": "你是数学老师。"}, user("2+2=?")], "4", ""),
        ({"prompt": belle_text("你好", "你好！", "再见") + "\n\nAssistant: \n", "output": "再见！"},
         [user("你好"), assistant("你好！"), user("再见")], "再见！", ""),
        ({"question": "写一首诗。", "std_answer": "", "class": "generation"}, [user("写一首诗。")], "", "generation"),
        ({"instruction": "题目：3 + 4 = ?", "input": "", "output": "3 + 4 = 7\n答案：7"}, [user("题目：3 + 4 = ?")], "3 + 4 = 7\n答案：7", ""),
        ({"instruction": "翻译", "input": "你好"}, [user("翻译\n你好")], "", ""),
        ({"instruction": "Human: 你好\nAssistant: 你好！\nHuman: 1+1?\nAssistant:", "input": "", "output": "2"},
         [user("你好"), assistant("你好！"), user("1+1?")], "2", ""),
        ({"text": "Human: \n讲个故事\n\nAssistant: \n"}, [user("讲个故事")], "", ""),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}], "class": "open qa"},
         [user("a"), assistant("b"), user("c")], "d", "open qa"),
        ({"messages": [{"role": "system", "content": "s"}, user("q")], "answer": "42"}, [{"role": "system", "content": "s"}, user("q")], "42", ""),
    ],
)
def test_each_prompt_shape_becomes_messages_ending_with_a_user_turn(record, prompt, reference, klass):
    assert prompt_row(record) == {"prompt": prompt, "reference": reference, "class": klass}


@pytest.mark.parametrize(
    "record, reason, detail",
    [
        ({"prompt": ""}, "missing field", "'prompt' is not a non-empty string"),
        ({"question": 7}, "missing field", "'question' is not a non-empty string"),
        ({"prompt": [user("q"), assistant("a")]}, "roles out of order", "the prompt must end with a user turn"),
        ({"prompt": "q", "reference": ["a"]}, "missing field", "'reference' is not a string"),
        ({"prompt": "q", "class": {"x": 1}}, "missing field", "'class' is not a string"),
        ({"text": "一段预训练文本"}, "unknown format", "'text' is plain text"),
        ({"messages": [{"role": "system", "content": "s"}]}, "no user turn", ""),
        ({"id": 3}, "unknown format", "no known keys"),
        ("just a string", "not an object", "got str"),
    ],
)
def test_unusable_prompts_name_the_reason(record, reason, detail):
    with pytest.raises(Rejection) as caught:
        prompt_row(record)
    assert caught.value.reason == reason and caught.value.detail.startswith(detail)


def test_prompt_rejects_are_counted_with_file_and_line_or_stop_a_strict_read(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "q1"}, {"prompt": ""}, "{broken", {"instruction": "q3", "output": "a"}])
    prompts, report = load_prompts(path)
    assert prompts.column_names == ["prompt", "reference", "class"]
    assert [row["reference"] for row in prompts] == ["", "a"]
    assert report.total == 2 and report.lines[0] == f"{path}:2: missing field: 'prompt' is not a non-empty string or list of messages"
    assert report.lines[1].startswith(f"{path}:3: malformed JSON")
    with pytest.raises(DataError, match=f"^{path}:2: missing field"):
        load_prompts(path, policy="strict")


def test_no_usable_prompt_still_gives_the_columns(tmp_path):
    prompts, report = load_prompts(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": ""}]))
    assert len(prompts) == 0 and prompts.column_names == ["prompt", "reference", "class"] and report.total == 1


def test_prompts_read_from_an_in_memory_dataset_with_absent_columns():
    from datasets import Dataset

    source = Dataset.from_list([{"prompt": "q", "class": None, "answer": None}, {"prompt": "p", "class": "math", "answer": "1"}])
    prompts, report = load_prompts(source)
    assert report.total == 0 and list(prompts) == [
        {"prompt": [user("q")], "reference": "", "class": ""},
        {"prompt": [user("p")], "reference": "1", "class": "math"},
    ]


@pytest.mark.skipif(not BELLE_EVAL_SET.exists(), reason="BELLE's eval set is not in ../shared/belle-data")
def test_belle_eval_set_reads_as_prompts_with_answers_and_classes():
    prompts, report = load_prompts(BELLE_EVAL_SET, policy="strict")
    assert report.total == 0 and len(prompts) == 1000
    assert sum(1 for r in prompts if r["reference"]) == 631 and "math" in set(prompts["class"])


# ---------------------------------------------------------------------------------------------
# KTO


def test_kto_records_and_pairs_become_labelled_examples(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "q", "completion": "good", "label": True},
        {"prompt": "q", "completion": [assistant("bad")], "label": False},
        {"chosen": belle_text("问", "好"), "rejected": belle_text("问", "坏")},
        {"prompt": "q", "completion": "x", "label": "true"},
        {"prompt": "q", "completion": "", "label": True},
        {"completion": "x", "label": True},
    ])
    examples, report = load_kto_examples(path)
    assert list(examples) == [
        {"prompt": [user("q")], "completion": [assistant("good")], "label": True},
        {"prompt": [user("q")], "completion": [assistant("bad")], "label": False},
        {"prompt": [user("问")], "completion": [assistant("好")], "label": True},
        {"prompt": [user("问")], "completion": [assistant("坏")], "label": False},
    ]
    assert report.lines == [
        f"{path}:4: missing field: 'label' is not true or false (got 'true')",
        f"{path}:5: missing field: 'completion' is not a non-empty string",
        f"{path}:6: missing field: 'prompt'",
    ]
    with pytest.raises(DataError, match=f"^{path}:4: missing field: 'label'"):
        load_kto_examples(path, policy="strict")


def test_kto_label_must_be_a_boolean_not_a_number():
    with pytest.raises(Rejection, match="label"):
        kto_examples({"prompt": "q", "completion": "a", "label": 1})


# ---------------------------------------------------------------------------------------------
# Sample files


@pytest.mark.parametrize(
    "name, reader, count",
    [
        ("rm_pairs.jsonl", load_preference_pairs, 24),
        ("rm_pairs.jsonl", load_kto_examples, 48),
        ("dpo.jsonl", load_kto_examples, 16),
        ("math_prompts.jsonl", load_prompts, 24),
        ("kto.jsonl", load_kto_examples, 24),
    ],
)
def test_sample_files_load_without_rejects(name, reader, count):
    rows, report = reader(SAMPLES / name, policy="strict")
    assert report.total == 0 and len(rows) == count


def test_sample_math_prompts_keep_the_worked_answer_as_reference():
    prompts, _ = load_prompts(SAMPLES / "math_prompts.jsonl")
    assert all(row["reference"].splitlines()[-1].startswith("答案：") for row in prompts)


def test_sample_math_references_state_the_final_answer_the_reward_reads():
    from belle.train.rewards import final_answer

    prompts, _ = load_prompts(SAMPLES / "math_prompts.jsonl")
    assert [final_answer(r) for r in prompts["reference"]] == [r.rsplit("答案：", 1)[1] for r in prompts["reference"]]


def test_sample_kto_file_has_both_labels():
    examples, _ = load_kto_examples(SAMPLES / "kto.jsonl")
    assert sorted(set(examples["label"])) == [False, True]


# ---------------------------------------------------------------------------------------------
# Random records: a row or a counted reject, never an exception

KEYS = ["prompt", "question", "chosen", "rejected", "completion", "label", "instruction", "input", "output",
        "conversations", "messages", "text", "reference", "answer", "std_answer", "class", "system", "history"]
TEXTS = st.sampled_from(["", " ", "问", "Human: \n问\n\nAssistant: \n答", "Human: \n问\n\nAssistant: \n",
                         "Human:\nAssistant:", "\nAssistant: 答", "Human: a\nHuman: b\nAssistant:"]) | st.text(max_size=12)
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | TEXTS
TURNS = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | SCALARS,
    "content": SCALARS,
    "from": st.sampled_from(["human", "gpt", "bot", "x"]) | SCALARS,
    "value": SCALARS,
})
VALUES = st.recursive(SCALARS | st.lists(TURNS, max_size=4), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=8)
VALID = [
    {"prompt": "问", "chosen": "好", "rejected": "坏", "reference": "1"},
    {"chosen": belle_text("问", "好"), "rejected": belle_text("问", "坏")},
    {"prompt": [user("问")], "completion": "答", "label": True, "class": "math"},
    {"instruction": "题目", "input": "", "output": "答案：3"},
    {"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]},
    {"messages": [{"role": "system", "content": "s"}, user("问")], "answer": "2"},
    {"text": "Human: \n问\n\nAssistant: \n"},
]


@st.composite
def mutated(draw):
    """A valid record of some shape with a few fields dropped or replaced by random values."""
    record = dict(draw(st.sampled_from(VALID)))
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=2, unique=True)):
        del record[key]
    record.update(draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2)))
    return record


RECORDS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5) | SCALARS | st.sampled_from(VALID) | mutated()


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(RECORDS, min_size=1, max_size=6))
def test_random_records_are_rows_or_counted_rejects(records):
    with tempfile.TemporaryDirectory() as folder:
        path = write_jsonl(Path(folder) / "random.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
        pairs, pair_report = load_preference_pairs(path)
        prompts, prompt_report = load_prompts(path)
        examples, kto_report = load_kto_examples(path)
    assert len(pairs) + pair_report.total == len(records)
    assert len(prompts) + prompt_report.total == len(records)
    assert len(examples) + kto_report.total >= len(records) and kto_report.total <= len(records)
    for report in (pair_report, prompt_report, kto_report):
        assert all(line.startswith(f"{path}:") for line in report.lines)
    for row in prompts:
        assert row["prompt"][-1]["role"] == "user" and isinstance(row["reference"], str) and isinstance(row["class"], str)
    for row in examples:
        assert isinstance(row["label"], bool) and row["completion"][0]["role"] == "assistant"
