"""`belle data stats`, `dedup` and `filter` through the CLI, on files written here."""

from __future__ import annotations

import json

import pytest

from belle.records import resume_records
from tests.helpers import write_jsonl


def alpaca(instruction: str, output: str, **extra) -> dict:
    return {"instruction": instruction, "input": "", "output": output, **extra}


@pytest.mark.slow
def test_stats_counts_turns_lengths_categories_and_languages(tmp_path, belle_cli, tiny_model_dir):
    data = write_jsonl(tmp_path / "mixed.jsonl", [
        alpaca("介绍一下长城。", "长城是中国古代的军事防御工程。", category="open qa"),
        alpaca("Name three primary colors.", "Red, yellow and blue.", category="open qa"),
        alpaca("把这句话翻译成英文：你好", "Hello", category="rewrite"),
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "assistant", "value": "你好！"},
                           {"from": "human", "value": "今天星期几？"}, {"from": "assistant", "value": "今天星期三。"}]},
        {"broken": True},
    ])
    result = belle_cli("data", "stats", str(data), "--output", str(tmp_path / "report" / "stats.json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "report" / "stats.json").read_text(encoding="utf-8"))
    assert figures["records"] == 4 and figures["rejected"] == {"unknown format": 1}
    assert figures["turns"] == {"1": 3, "2": 1}
    assert figures["categories"] == {"open qa": 2, "rewrite": 1, "none": 1}
    assert figures["languages"]["prompt"] == {"zh": 3, "en": 1}
    assert figures["languages"]["answer"] == {"zh": 2, "en": 2}
    assert figures["length_unit"] == "characters"
    assert figures["length"]["max"] == len("Name three primary colors.\nRed, yellow and blue.")
    assert (tmp_path / "report" / "stats.png").read_bytes()[:4] == b"\x89PNG"
    assert "records:    4 (1 unreadable)" in result.stdout

    tokens = belle_cli("data", "stats", str(data), "--model", str(tiny_model_dir), "--output", str(tmp_path / "t.json"))
    assert tokens.returncode == 0, tokens.stderr
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["length_unit"] == "tokens"


@pytest.mark.slow
def test_dedup_removes_exact_and_chinese_near_duplicates_keeping_the_first(tmp_path, belle_cli):
    records = [
        alpaca("请介绍一下北京的四合院。", "四合院是……", id="a"),
        alpaca("请介绍一下北京的四合院", "另一个回答", id="b"),  # exact once punctuation is set aside
        alpaca("写一首关于大海的现代诗。", "大海……", id="c"),
        alpaca("请介绍一下北京的传统四合院！", "第三个回答", id="d"),  # near duplicate of a
        alpaca("解释什么是复利。", "复利是……", id="e"),
        {"conversations": [{"from": "human", "value": "写一首关于大海的现代诗"}, {"from": "assistant", "value": "海浪……"}],
         "id": "f"},  # another format, exact duplicate of c
    ]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "dedup.jsonl"
    result = belle_cli("data", "dedup", "--input", str(data), "--output", str(out))
    assert result.returncode == 0, result.stderr
    kept = resume_records(out)
    assert [r["id"] for r in kept] == ["a", "c", "e"]
    assert kept[0] == records[0]  # written unchanged
    removed = resume_records(out.with_name("dedup.jsonl.removed.jsonl"))
    assert [(r["location"].rsplit(":", 1)[1], r["reason"], r["duplicate_of"].rsplit(":", 1)[1]) for r in removed] == [
        ("2", "exact duplicate", "1"), ("4", "near duplicate", "1"), ("6", "exact duplicate", "3"),
    ]
    assert "removed 3" in result.stdout

    exact = belle_cli("data", "dedup", "--input", str(data), "--output", str(out), "--exact-only")
    assert exact.returncode == 0, exact.stderr
    assert [r["id"] for r in resume_records(out)] == ["a", "c", "d", "e"]


@pytest.mark.slow
def test_filter_applies_each_rule_and_lists_the_removed(tmp_path, belle_cli):
    records = [
        alpaca("介绍一下太阳系有哪些行星。", "太阳系有八大行星：水星、金星、地球、火星、木星、土星、天王星和海王星。", id="keep"),
        alpaca("描述这张图片里的风景。", "图片里有山和湖。", id="image"),
        alpaca("你是谁开发的？", "我是ChatGPT，由OpenAI开发的人工智能语言模型。", id="identity"),
        alpaca("为什么天空是蓝色的？", "Because air molecules scatter blue light more than red light.", id="english-answer"),
        alpaca("把“谢谢”翻译成英文。", "Thank you.", id="translation"),
        alpaca("What is the capital of France?", "Paris.", id="english"),
        alpaca("随便说点什么。", "嗯", id="short"),
    ]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    out = tmp_path / "clean.jsonl"
    result = belle_cli("data", "filter", "--input", str(data), "--output", str(out), "--language", "zh",
                       "--min-chars", "2")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in resume_records(out)] == ["keep", "translation"]
    reasons = {r["location"].rsplit(":", 1)[1]: r["reason"] for r in resume_records(out.with_name("clean.jsonl.removed.jsonl"))}
    assert reasons == {"2": "blacklist", "3": "gpt identity", "4": "chinese prompt, english answer",
                       "6": "language not zh", "7": "answer too short"}

    lenient = belle_cli("data", "filter", "--input", str(data), "--output", str(out),
                        "--no-blacklist", "--no-gpt-identity", "--no-zh-en-mismatch", "--min-chars", "0")
    assert lenient.returncode == 0, lenient.stderr
    assert len(resume_records(out)) == len(records)
