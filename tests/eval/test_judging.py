"""Judge prompts for every class (BELLE's and ours), the judge's messages, and reading scores."""

import json
from pathlib import Path

import pytest

from belle.conversation import DataError
from belle.eval.evalset import CLASSES, EvalItem, read_eval_set
from belle.eval.judging import (
    NO_REFERENCE,
    OUTPUT_RULE,
    ParsedScore,
    default_judge_prompts_path,
    judge_messages,
    missing_prompts,
    parse_score,
    read_judge_prompts,
)
from tests.conftest import BELLE_DATA

BELLE_EVAL_SET = BELLE_DATA / "eval_set.json"
BELLE_PROMPTS = BELLE_DATA / "eval_prompt.json"
needs_belle = pytest.mark.skipif(
    not (BELLE_EVAL_SET.exists() and BELLE_PROMPTS.exists()), reason="BELLE's eval files are not in ../shared/belle-data"
)


@needs_belle
@pytest.mark.parametrize("prompts_path", [BELLE_PROMPTS, default_judge_prompts_path()], ids=["belle", "ours"])
def test_every_belle_class_finds_a_prompt(prompts_path):
    items = read_eval_set(BELLE_EVAL_SET)
    prompts = read_judge_prompts(prompts_path)
    assert missing_prompts(items, prompts) == []
    for item in items:  # "open qa" -> "open QA", "closed\xa0qa" -> "closed\xa0QA"
        judge_messages(item, "回答", prompts)


@needs_belle
def test_belle_prompt_keys_are_canonical():
    prompts = read_judge_prompts(BELLE_PROMPTS)
    assert set(prompts) == set(CLASSES) | {"translation"}


def test_our_prompts():
    prompts = read_judge_prompts(default_judge_prompts_path())
    assert set(prompts) == set(CLASSES) | {"translation"}
    assert all("得分" in p and "0" in p and "1" in p for p in prompts.values())
    assert "最终结果" in prompts["math"] and "材料" in prompts["closed qa"]


def test_missing_prompts_lists_each_class_once():
    items = [EvalItem("a", ("q",), "", "math"), EvalItem("b", ("q",), "", "poetry"), EvalItem("c", ("q",), "", "poetry")]
    assert missing_prompts(items, {"Math": "p"}) == ["poetry"]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"prompt": "p"}, "class: missing"),
        ({"class": "math"}, "prompt: missing"),
        ({"class": "math", "prompt": " "}, "prompt: empty"),
        ({"class": 1, "prompt": "p"}, "class: must be a string"),
        ({"class": "MATH", "prompt": "p"}, "class: duplicate 'math' (first on line 1)"),
        ("[1, 2", "malformed JSON"),
        ("3", "record: not a JSON object"),
    ],
)
def test_bad_prompt_file_names_file_line_and_field(tmp_path, record, expected):
    path = write_lines(tmp_path / "prompts.jsonl", [{"class": "math", "prompt": "p"}, record])
    with pytest.raises(DataError) as e:
        read_judge_prompts(path)
    assert f"{path}:2: {expected}" in str(e.value)


def test_empty_prompt_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no judge prompts"):
        read_judge_prompts(write_lines(tmp_path / "p.jsonl", []))


PROMPTS = {"closed\xa0QA": "只依据材料评判。", "open QA": "评判事实是否准确。"}


def test_judge_messages_with_reference():
    item = EvalItem("x", ("材料：天是蓝的。问题：天是什么颜色？",), "蓝色", "closed qa")
    system, user = judge_messages(item, "  蓝色的。\n", PROMPTS)
    assert system == {"role": "system", "content": f"只依据材料评判。\n\n{OUTPUT_RULE}"}
    assert user["role"] == "user"
    text = user["content"]
    assert "【问题 开始】\n材料：天是蓝的。问题：天是什么颜色？\n【问题 结束】" in text
    assert "【标准答案 开始】\n蓝色\n【标准答案 结束】" in text
    assert "【模型回答 开始】\n蓝色的。\n【模型回答 结束】" in text
    assert text.index("【问题") < text.index("【标准答案") < text.index("【模型回答")
    assert NO_REFERENCE not in text and "得分: x" in text.splitlines()[-1]


def test_judge_messages_without_reference_and_multi_turn():
    item = EvalItem("y", ("推荐一本书", "换一本科幻的", "为什么推荐它？"), "", "open qa")
    _, user = judge_messages(item, "《三体》……", PROMPTS)
    text = user["content"]
    assert f"【标准答案 开始】\n{NO_REFERENCE}\n【标准答案 结束】" in text
    assert "第1轮用户：推荐一本书\n第2轮用户：换一本科幻的\n第3轮用户：为什么推荐它？" in text
    assert "3 轮" in text and "第3轮的回答" in text


def test_judge_messages_unknown_class():
    with pytest.raises(KeyError, match="poetry"):
        judge_messages(EvalItem("z", ("q",), "", "poetry"), "a", PROMPTS)


@pytest.mark.parametrize(
    "reply, score",
    [
        ("得分: 0.8", 0.8),
        ("得分：0.8", 0.8),
        ("得分：０．８", 0.8),  # full-width digits
        ("分数: 0.6", 0.6),
        ("评分为 0.5", 0.5),
        ("Score: 0.8", 0.8),
        ("SCORE is 0.9", 0.9),
        ("score=0.8", 0.8),
        ("得分: 0.8/1", 0.8),
        ("0.8/1", 0.8),
        ("Score: 8/10", 0.8),
        ("4/5", 0.8),
        ("rating: 4 out of 5", 0.8),
        ("得分: 80/100", 0.8),
        ("80分", 0.8),
        ("得分: 80分/100", 0.8),
        ("得分：1分", 1.0),
        ("得分: 0", 0.0),
        ("得分: 7", 0.7),  # 1 < x <= 10: a ten-point scale
        ("得分: 85", 0.85),  # 10 < x <= 100: a hundred-point scale
        ("得分: 80%", 0.8),
        ("**得分**: 0.7", 0.7),
        ("### 得分：**0.9**", 0.9),
        ("得分（0-1）：0.6", 0.6),
        ("得分: [[0.4]]", 0.4),
        ("[[8]]", 0.8),
        ("理由：步骤正确。\n得分: 1", 1.0),
        ("回答基本正确。\n\n0.75", 0.75),
        ("我给 0.9 分。", 0.9),
        ("综合来看打8分", 0.8),
        ("标准答案是 42，模型答了 41。\n得分: 0.2", 0.2),  # numbers in the reasoning are not the score
        ("初步得分: 0.6\n复查后修正，最终得分: 0.8", 0.8),  # the last label wins
        ("得分: 0.6，不过考虑到格式，我最终给 0.5 分", 0.5),
    ],
)
def test_parse_score(reply, score):
    parsed = parse_score(reply)
    assert parsed.score == pytest.approx(score)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "这个回答很好。",
        "I cannot score this answer.",
        "无法评分：模型回答为空。",
        "得分: N/A",
        "Score: 15/10",  # out of range
        "得分: 15/10",
        "得分: 250",
        "得分: -0.5",
        "得分: 0/0",
        "得分: 120%",
        "模型回答列出了 3 个要点。",  # a number, but no score
        "得分: 0.8\n更正，最终得分: 11/10",  # the last label decides, and it is out of range
    ],
)
def test_parse_score_failures_are_none_not_zero(reply):
    parsed = parse_score(reply)
    assert parsed.score is None
    assert parsed == ParsedScore(None, reply.strip())  # the whole reply is kept to read later


def test_parse_score_reason():
    assert parse_score("理由：结果正确，步骤清楚。\n得分: 1") == ParsedScore(1.0, "结果正确，步骤清楚。")
    assert parse_score("得分: 0.8") == ParsedScore(0.8, "")
    assert parse_score("得分: 0.3\n原因：漏掉了一个要点。") == ParsedScore(0.3, "漏掉了一个要点。")
    assert parse_score("回答正确，得分：1").reason == "回答正确，得分：1"  # reason and score share the line
