"""Eval sets: BELLE's real file and our sample set read; ids are stable; bad records name file:line:field."""

import json
from collections import Counter

import pytest

from belle.eval.evalset import CLASSES, OTHERS, EvalItem, class_key, default_eval_set_path, derived_id, read_eval_set
from belle.records import DataError
from tests.conftest import BELLE_DATA
from tests.helpers import write_jsonl

BELLE_EVAL_SET = BELLE_DATA / "eval_set.json"
needs_belle = pytest.mark.skipif(not BELLE_EVAL_SET.exists(), reason="BELLE's eval set is not in ../shared/belle-data")


@pytest.mark.parametrize(
    "name, key",
    [("open QA", "open qa"), ("open qa", "open qa"), ("closed\xa0QA", "closed qa"), ("  Closed \u3000 QA\t", "closed qa"),
     ("ＭＡＴＨ", "math"), ("code", "code")],
)
def test_class_key(name, key):
    assert class_key(name) == key


def test_classes_and_others():
    assert len(CLASSES) == 10 and set(OTHERS) <= set(CLASSES)
    assert all(class_key(c) == c for c in CLASSES)


@needs_belle
def test_belle_eval_set_reads_with_unique_stable_ids():
    items = read_eval_set(BELLE_EVAL_SET)
    assert len(items) == 1000
    assert len({item.id for item in items}) == 1000  # BELLE's set has no repeated question
    assert {item.klass for item in items} == set(CLASSES)  # "closed\xa0qa" became "closed qa"
    assert sum(1 for item in items if not item.std_answer) == 369  # the README's count
    assert all(len(item.turns) == 1 for item in items)
    assert read_eval_set(BELLE_EVAL_SET) == items  # the same ids on every read


def test_derived_ids_do_not_depend_on_line_order(tmp_path):
    records = [{"question": f"问题{i}", "std_answer": "", "class": "open qa"} for i in range(5)]
    forward = read_eval_set(write_jsonl(tmp_path / "a.jsonl", records))
    backward = read_eval_set(write_jsonl(tmp_path / "b.jsonl", records[::-1]))
    assert {i.turns: i.id for i in forward} == {i.turns: i.id for i in backward}
    assert forward[0].id == derived_id("open qa", ("问题0",))
    assert forward[0].id.startswith("open_qa-") and len(forward[0].id) == len("open_qa-") + 10


def test_json_array_and_ids_given_or_numbered(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([
        {"question": "同一个问题", "class": "math", "std_answer": "1"},
        {"question": "同一个问题", "class": "math", "std_answer": "1"},
        {"question": "同一个问题", "class": "math"},
        {"question": "同一个问题", "class": "code"},  # another class: another id
        {"question": "有编号", "class": "code", "id": 7},
    ], ensure_ascii=False), encoding="utf-8")
    items = read_eval_set(path)
    base = derived_id("math", ("同一个问题",))
    assert [i.id for i in items[:3]] == [base, f"{base}-2", f"{base}-3"]
    assert items[3].id == derived_id("code", ("同一个问题",)) != base
    assert items[4].id == "7"
    assert items[2].std_answer == ""


def test_multi_turn_item(tmp_path):
    path = write_jsonl(tmp_path / "mt.jsonl", [{"question": ["第一问", "第二问"], "std_answer": "  ", "class": "Open QA"}])
    [item] = read_eval_set(path)
    assert item == EvalItem(id=derived_id("open qa", ("第一问", "第二问")), turns=("第一问", "第二问"), std_answer="", klass="open qa")


@pytest.mark.parametrize(
    "record, field, problem",
    [
        ({"std_answer": "", "class": "math"}, "question", "missing"),
        ({"question": "  ", "class": "math"}, "question", "empty"),
        ({"question": [], "class": "math"}, "question", "empty list"),
        ({"question": ["好", ""], "class": "math"}, "question", "turn 1 is empty"),
        ({"question": ["好", 3], "class": "math"}, "question", "turn 1 is not a string"),
        ({"question": 5, "class": "math"}, "question", "string or a list"),
        ({"question": "好", "class": "math", "std_answer": ["a"]}, "std_answer", "must be a string"),
        ({"question": "好"}, "class", "missing"),
        ({"question": "好", "class": " \xa0"}, "class", "empty"),
        ({"question": "好", "class": 3}, "class", "must be a string"),
        ({"question": "好", "class": "math", "id": ""}, "id", "empty"),
        ({"question": "好", "class": "math", "id": True}, "id", "must be a string"),
        (["not", "an", "object"], "record", "not a JSON object"),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, record, field, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "好问题", "class": "math"}, record])
    with pytest.raises(DataError) as e:
        read_eval_set(path)
    assert f"{path}:2: {field}: " in str(e.value) and problem in str(e.value)


def test_every_problem_is_listed_once_and_malformed_json_too(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"question": "甲", "class": "math", "id": "a"},
        "{not json",
        {"question": "乙", "class": "math", "id": "a"},
        {"class": "math"},
    ])
    with pytest.raises(DataError) as e:
        read_eval_set(path)
    message = str(e.value)
    assert message.startswith("3 bad eval record(s)")
    assert f"{path}:2: malformed JSON" in message
    assert f"{path}:3: id: duplicate 'a' (first on line 1)" in message
    assert f"{path}:4: question: missing" in message


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no eval items"):
        read_eval_set(path)


def test_our_sample_set():
    path = default_eval_set_path()
    assert path.name == "eval_set_zh.jsonl"
    items = read_eval_set(path)
    assert len(items) >= 60
    counts = Counter(item.klass for item in items)
    assert set(counts) == set(CLASSES) and min(counts.values()) >= 6
    assert len({item.id for item in items}) == len(items)
    multi = [item for item in items if len(item.turns) > 1]
    assert len(multi) >= 3 and all(2 <= len(item.turns) <= 3 for item in multi)
    # classes that have one right answer carry a reference
    needs_reference = {"math", "code", "classification", "closed qa", "extract", "summarization", "rewrite"}
    assert all(item.std_answer for item in items if item.klass in needs_reference)
    # BELLE's format: every record has exactly these keys, with BELLE's spelling of the classes
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"id", "question", "std_answer", "class"} and record["class"] in CLASSES
