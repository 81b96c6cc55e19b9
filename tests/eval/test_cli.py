"""`belle eval` end to end, as a user runs it: the tiny model answers, a judge server scores,
the report is written; `run` does all three; reports of several runs side by side; two runs compared pairwise."""

import json

import pytest

from belle.eval.cli import spread_over_classes
from belle.eval.evalset import CLASSES, EvalItem, default_eval_set_path, read_eval_set
from belle.testing.openai_stub import serve_stub
from tests.helpers import read_jsonl, write_jsonl


def judge_by_class(request: dict) -> str:
    """0.9 for math and code, 0.5 for the rest; no score at all for summarization."""
    system = request["messages"][0]["content"]
    if "摘要任务" in system:
        return "这个回答无法评判。"
    return "理由：还行。\n得分: 0.9" if "数学老师" in system or "资深程序员" in system else "得分: 0.5"


@pytest.mark.slow
def test_generate_score_report_through_the_cli(belle_cli, tiny_model_dir, tmp_path):
    answers = tmp_path / "answers.jsonl"
    generated = belle_cli("eval", "generate", "--model", str(tiny_model_dir), "--output", str(answers),
                          "--limit", "12", "--max-new-tokens", "8", "--batch-size", "4")
    assert generated.returncode == 0, generated.stderr
    records = read_jsonl(answers)
    assert len(records) == 12 and {r["class"] for r in records} == set(CLASSES)  # --limit spreads over classes
    again = belle_cli("eval", "generate", "--model", str(tiny_model_dir), "--output", str(answers), "--limit", "12")
    assert again.returncode == 0 and "all 12 items are already answered" in again.stdout

    run_dir = tmp_path / "run"
    with serve_stub(judge_by_class) as stub:
        scored = belle_cli("eval", "score", "--answers", str(answers), "--output", str(run_dir), "--judge-model", "judge",
                           "--judge-base-url", stub.url, "--judge-cache", "off")
        assert scored.returncode == 0, scored.stderr
        assert stub.calls == 12
    assert "judged 12 answers now" in scored.stdout and "Score_w/o_others" in scored.stdout

    reported = belle_cli("eval", "report", str(run_dir), "--bootstrap", "200")
    assert reported.returncode == 0, reported.stderr
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["runs"][0]
    summarization = [r for r in records if r["class"] == "summarization"]
    assert report["parse_failures"] == len(summarization) and report["classes"]["summarization"]["n"] == 0
    assert report["classes"]["math"]["mean"] == pytest.approx(0.9)
    assert report["classes"]["open qa"]["mean"] == pytest.approx(0.5)
    assert report["model"] == tiny_model_dir.name and report["judge"] == "judge"
    # summarization has no scored item, so it is in neither average; 7 classes at 0.5 and 2 at 0.9
    assert report["score"] == pytest.approx((7 * 0.5 + 2 * 0.9) / 9)
    assert report["score_wo_others"] == pytest.approx(0.5)
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert "| **Score_w/o_others** |" in (run_dir / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_run_does_all_three_and_reports_compare_runs(belle_cli, tiny_model_dir, tmp_path):
    with serve_stub("得分: 0.7") as stub:
        for name, judge_format in (("first", "delimited"), ("second", "belle-page")):
            done = belle_cli("eval", "run", "--model", str(tiny_model_dir), "--name", name, "--output", str(tmp_path / name),
                             "--limit", "10", "--max-new-tokens", "4", "--judge-model", "judge",
                             "--judge-base-url", stub.url, "--judge-cache", str(tmp_path / "cache.sqlite"),
                             "--judge-format", judge_format)
            assert done.returncode == 0, done.stderr
            assert {p.name for p in (tmp_path / name).iterdir()} >= {
                "answers.jsonl", "judgments.jsonl", "run.json", "report.json", "report.md", "report.png"}
    both = belle_cli("eval", "report", str(tmp_path / "first"), str(tmp_path / "second"), "--output", str(tmp_path / "cmp"))
    assert both.returncode == 0, both.stderr
    runs = json.loads((tmp_path / "cmp" / "report.json").read_text(encoding="utf-8"))["runs"]
    assert [r["name"] for r in runs] == ["first", "second"] and [r["model"] for r in runs] == ["first", "second"]
    assert "| class | first | second |" in both.stdout
    assert [r["judge_format"] for r in runs] == ["delimited", "belle-page"]
    assert "Not comparable: these runs were judged with different judge message formats" in both.stdout
    assert "| judge format | delimited | belle-page |" in both.stdout
    assert len([r for r in stub.requests if len(r["messages"]) == 1 and r["max_tokens"] == 3000]) == 10

    with serve_stub("两个回答差不多。\n[[C]]") as stub:
        pair = belle_cli("eval", "pairwise", str(tmp_path / "first" / "answers.jsonl"),
                         str(tmp_path / "second" / "answers.jsonl"), "--output", str(tmp_path / "pair"),
                         "--judge-model", "judge", "--judge-base-url", stub.url, "--judge-cache", "off")
        assert pair.returncode == 0, pair.stderr
        assert stub.calls == 20  # ten items, both orders
    overall = json.loads((tmp_path / "pair" / "pairwise.json").read_text(encoding="utf-8"))["overall"]
    assert (overall["n"], overall["ties"], overall["win_rate_a"]) == (10, 10, 0.5)


def test_bad_input_is_a_clear_error(belle_main, tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"question": "1+1?", "class": "math"}\n{"question": 3, "class": "math"}\n', encoding="utf-8")
    result = belle_main("eval", "generate", "--api-model", "m", "--api-base", "http://127.0.0.1:9/v1",
                       "--eval-set", str(bad), "--output", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2 and f"{bad}:2: question: must be a string or a list" in result.stderr
    neither = belle_main("eval", "generate", "--output", str(tmp_path / "a.jsonl"))
    assert neither.returncode == 2 and "either --model DIR" in neither.stderr
    missing = belle_main("eval", "report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such run folder" in missing.stderr


def test_spread_over_classes_covers_every_class_first():
    items = read_eval_set(default_eval_set_path())
    chosen = spread_over_classes(items, 10)
    assert len(chosen) == 10 and {item.klass for item in chosen} == set(CLASSES)
    assert chosen == [item for item in items if item in chosen]  # file order kept
    few = [EvalItem("a", ("q",), "", "math"), EvalItem("b", ("q2",), "", "math"), EvalItem("c", ("q3",), "", "code")]
    assert [item.id for item in spread_over_classes(few, 2)] == ["a", "c"]


def test_score_with_belles_page_format_through_the_cli(belle_main, tmp_path):
    prompts = write_jsonl(tmp_path / "eval_prompt.json", [
        {"class": "closed\u00a0QA", "prompt": "依据材料评分，请按照\"得分:\"这样的形式输出分数。"},
        {"class": "generation", "prompt": "评价生成。"}])
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"id": "c1", "class": "closed\u00a0qa", "question": "材料：天是蓝的。天是什么颜色？", "std_answer": "蓝色",
         "answer": "蓝色。", "model": "m"},
        {"id": "g1", "class": "generation", "question": "写一句诗", "std_answer": "", "answer": "春眠不觉晓", "model": "m"}])
    run = tmp_path / "run"
    argv = ["eval", "score", "--answers", answers, "--prompts", prompts, "--output", run, "--judge-model", "gpt-3.5-turbo",
            "--judge-cache", "off", "--judge-concurrency", "1"]
    with serve_stub("得分: 0.8\n理由：正确。") as stub:
        done = belle_main(*argv, "--judge-base-url", stub.url, "--judge-format", "belle-page")
        assert done.returncode == 0, done.stderr
        bodies = [{k: v for k, v in r.items() if not k.startswith("_")} for r in stub.requests]
        refused = belle_main(*argv, "--judge-base-url", stub.url)  # the default format into the same folder
        assert stub.calls == 2
    assert bodies == [
        {"model": "gpt-3.5-turbo", "temperature": 0.0, "max_tokens": 3000, "messages": [{"role": "user", "content":
         "依据材料评分，请按照\"得分:\"这样的形式输出分数。 材料：天是蓝的。天是什么颜色？ 标准回答:蓝色  模型回答：' 蓝色。'。"
         "请针对模型回答给出得分，顺便给出理由："}]},
        {"model": "gpt-3.5-turbo", "temperature": 0.0, "max_tokens": 3000, "messages": [{"role": "user", "content":
         "评价生成。 写一句诗  模型回答： '春眠不觉晓'。请针对模型回答给出得分，顺便给出理由："}]},
    ]
    assert "Score 0.800" in done.stdout
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["judge_format"] == "belle-page"
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "judge_format 'belle-page' -> 'delimited'" in refused.stderr and "Traceback" not in refused.stderr
    bad = belle_main(*argv, "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-format", "belle")
    assert bad.returncode == 2 and "invalid choice: 'belle'" in bad.stderr
