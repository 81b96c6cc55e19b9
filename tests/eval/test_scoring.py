"""Scoring answers through a real OpenAI-compatible judge server: formats, failures, samples,
resuming after kill -9, and a finished run that asks nothing."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from belle.cli import UsageError
from belle.eval.answers import read_answers
from belle.eval.evalset import CLASSES
from belle.eval.judging import default_judge_prompts_path, read_judge_prompts
from belle.eval.report import build_report, read_judgments
from belle.eval.scoring import judge_params, score_answers
from belle.llm import LLMOptions
from belle.testing.openai_stub import Fault, serve_stub
from tests.conftest import REPO

PROMPTS = read_judge_prompts(default_judge_prompts_path())


def write_answers(path: Path, answers: dict[str, tuple[str, str]]) -> Path:
    """answers: id -> (class, answer text); questions are made up from the id."""
    with path.open("w", encoding="utf-8") as f:
        for item_id, (klass, answer) in answers.items():
            record = {"id": item_id, "class": klass, "question": f"问题 {item_id}", "std_answer": "", "answer": answer,
                      "model": "m"}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def answer_in(request: dict) -> str:
    """The model answer inside a judge request (between the answer markers)."""
    user = request["messages"][-1]["content"]
    return re.search(r"【模型回答 开始】\n(.*)\n【模型回答 结束】", user, re.S)[1]


def scripted_judge(request: dict) -> str:
    """Replies with whatever judge reply the answer text asks for: answers are `reply:<text>`."""
    return answer_in(request).removeprefix("reply:")


def options(stub, tmp_path, **overrides) -> LLMOptions:
    return LLMOptions(**{"model": "judge", "base_url": stub.url, "cache": str(tmp_path / "cache.sqlite"),
                         "concurrency": 4, **overrides})


def test_scores_in_many_formats_and_failures_counted_not_zeroed(tmp_path):
    replies = {
        "a": ("open qa", "回答准确。\n得分: 0.8"),
        "b": ("math", "计算正确\n得分：1"),
        "c": ("code", "分数: 6/10"),
        "d": ("rewrite", "Score: 0.5"),
        "e": ("rewrite", "理由：改写得不错。\n8/10"),
        "f": ("closed qa", "我无法判断这个回答。"),  # no score: a parse failure
        "g": ("closed qa", "得分: 0.4"),
    }
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {k: (c, f"reply:{r}") for k, (c, r) in replies.items()}))
    with serve_stub(scripted_judge) as stub:
        result = score_answers(answered, PROMPTS, options(stub, tmp_path), tmp_path / "run", show_progress=False)
    assert (result.judged, result.skipped, result.parse_failures, result.failed) == (7, 0, 1, {})
    judged = {r["id"]: r for r in read_judgments(tmp_path / "run" / "judgments.jsonl")}
    assert {k: r["score"] for k, r in judged.items()} == {"a": 0.8, "b": 1.0, "c": 0.6, "d": 0.5, "e": 0.8, "f": None, "g": 0.4}
    assert judged["f"]["raw"] == "我无法判断这个回答。"
    assert judged["a"]["reason"] == "回答准确。"
    report = build_report(tmp_path / "run", bootstrap=0)
    assert report.classes["closed qa"].mean == 0.4 and report.classes["closed qa"].parse_failures == 1
    assert report.parse_failures == 1
    expected = {"open qa": 0.8, "math": 1.0, "code": 0.6, "rewrite": 0.65, "closed qa": 0.4}
    assert report.score == pytest.approx(sum(expected.values()) / 5)
    assert report.score_wo_others == pytest.approx((0.8 + 0.65 + 0.4) / 3)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["judge"] == "judge" and info["model"] == "m" and info["temperature"] == 0.0


def test_every_class_gets_its_own_prompt_and_no_reference_form(tmp_path):
    answers = {f"i{n}": (klass, "reply:得分: 1") for n, klass in enumerate(CLASSES)}
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", answers))
    with serve_stub(scripted_judge) as stub:
        score_answers(answered, PROMPTS, options(stub, tmp_path), tmp_path / "run", show_progress=False)
        systems = {answer_in(r): r["messages"][0]["content"] for r in stub.requests}
        seen = {r["messages"][0]["content"] for r in stub.requests}
    assert len(seen) == len(CLASSES)  # one distinct class prompt each
    for request_system in systems.values():
        assert "得分: x" in request_system
    assert all("本题没有标准答案" in r["messages"][1]["content"] for r in stub.requests)


def test_samples_are_separate_requests_and_averaged(tmp_path):
    scores = iter(["得分: 0.2", "得分: 0.6", "没有分数", "得分: 1"] * 2)
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("math", "x"), "b": ("code", "y")}))
    with serve_stub(lambda request: next(scores)) as stub:
        result = score_answers(answered, PROMPTS, options(stub, tmp_path, concurrency=1), tmp_path / "run",
                               samples=3, show_progress=False)
        assert stub.calls == 6
        assert {r["temperature"] for r in stub.requests} == {0.7}  # several samples: the judge must vary
    records = read_judgments(tmp_path / "run" / "judgments.jsonl")
    assert sorted((r["id"], r["sample"]) for r in records) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert result.parse_failures == 1
    report = build_report(tmp_path / "run", bootstrap=0)
    by_item = {r["id"]: [x["score"] for x in records if x["id"] == r["id"] and x["score"] is not None] for r in records}
    for klass, item in (("math", "a"), ("code", "b")):
        assert report.classes[klass].mean == pytest.approx(sum(by_item[item]) / len(by_item[item]))
    assert report.failed_samples == 1 and report.parse_failures == 0


def test_a_finished_run_asks_nothing_and_more_samples_ask_only_the_new_ones(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {f"i{n}": ("math", "x") for n in range(5)}))
    with serve_stub("得分: 0.5") as stub:
        opts = options(stub, tmp_path, cache="off")  # no cache either: nothing may be asked again
        score_answers(answered, PROMPTS, opts, tmp_path / "run", temperature=0.7, show_progress=False)
        assert stub.calls == 5
        again = score_answers(answered, PROMPTS, opts, tmp_path / "run", temperature=0.7, show_progress=False)
        assert stub.calls == 5 and (again.judged, again.skipped, again.usage) == (0, 5, None)
        more = score_answers(answered, PROMPTS, opts, tmp_path / "run", samples=2, temperature=0.7, show_progress=False)
        assert stub.calls == 10 and more.judged == 5
    records = read_judgments(tmp_path / "run" / "judgments.jsonl")
    assert sorted((r["id"], r["sample"]) for r in records) == sorted((f"i{n}", s) for n in range(5) for s in (0, 1))


def test_other_settings_or_changed_answers_are_refused(tmp_path):
    answers_path = write_answers(tmp_path / "answers.jsonl", {"a": ("math", "x")})
    with serve_stub("得分: 0.5") as stub:
        score_answers(read_answers(answers_path), PROMPTS, options(stub, tmp_path), tmp_path / "run", show_progress=False)
        with pytest.raises(UsageError, match="other settings.*judge 'judge' -> 'other'"):
            score_answers(read_answers(answers_path), PROMPTS, options(stub, tmp_path, model="other"), tmp_path / "run")
        with pytest.raises(UsageError, match="temperature"):
            score_answers(read_answers(answers_path), PROMPTS, options(stub, tmp_path), tmp_path / "run", samples=2)
        write_answers(answers_path, {"a": ("math", "a new answer")})
        with pytest.raises(UsageError, match="changed since"):
            score_answers(read_answers(answers_path), PROMPTS, options(stub, tmp_path), tmp_path / "run")
        assert stub.calls == 1


def test_missing_prompt_is_refused_before_any_call(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("poetry", "x")}))
    with serve_stub("得分: 1") as stub:
        with pytest.raises(UsageError, match="no judge prompt for class.*'poetry'"):
            score_answers(answered, PROMPTS, options(stub, tmp_path), tmp_path / "run")
        assert stub.calls == 0


def test_a_failing_item_is_left_for_the_next_run(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {f"i{n}": ("math", "x") for n in range(4)}))
    with serve_stub("得分: 0.9", faults=[Fault(500)]) as stub:
        first = score_answers(answered, PROMPTS, options(stub, tmp_path, max_retries=0, concurrency=1),
                              tmp_path / "run", show_progress=False)
        assert first.judged == 3 and list(first.failed) == ["i0"] and "500" in first.failed["i0"]
        second = score_answers(answered, PROMPTS, options(stub, tmp_path, max_retries=0), tmp_path / "run",
                               show_progress=False)
        assert (second.judged, second.skipped) == (1, 3)
    assert len(read_judgments(tmp_path / "run" / "judgments.jsonl")) == 4


def test_judge_params_defaults():
    assert judge_params(1, None, 100) == {"temperature": 0.0, "max_tokens": 100}
    assert judge_params(3, None, 100)["temperature"] == 0.7
    assert judge_params(3, 0.2, 100)["temperature"] == 0.2


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_and_doubles_nothing(tmp_path):
    n = 40
    answers = write_answers(tmp_path / "answers.jsonl", {f"i{k:02d}": (CLASSES[k % 10], f"a{k}") for k in range(n)})
    run_dir = tmp_path / "run"
    judgments = run_dir / "judgments.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    with serve_stub("理由。\n得分: 0.7", latency=0.1) as stub:
        command = [sys.executable, "-m", "belle", "eval", "score", "--answers", str(answers), "--output", str(run_dir),
                   "--judge-model", "judge", "--judge-base-url", stub.url, "--judge-concurrency", "2",
                   "--judge-cache", str(tmp_path / "cache.sqlite")]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if judgments.exists() and judgments.read_text(encoding="utf-8").count("\n") >= 8:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        written = judgments.read_text(encoding="utf-8").count("\n")
        assert 8 <= written < n, "the run must be killed part-way"
        calls_before = stub.calls
        finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        # answers judged (or in flight and cached) before the kill are not asked again
        assert stub.calls - calls_before <= n - written
        assert f"{written} had all 1 sample(s) already" in finished.stdout
    records = read_judgments(judgments)
    assert sorted(r["id"] for r in records) == sorted(f"i{k:02d}" for k in range(n))
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"judged 0 answers now, {n} had all 1 sample(s) already" in again.stdout


def test_a_completion_judge_gets_one_text(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("math", "x")}))
    with serve_stub("得分: 0.3") as stub:
        score_answers(answered, PROMPTS, options(stub, tmp_path, api="completion"), tmp_path / "run", show_progress=False)
        (request,) = stub.requests
    assert request["_path"] == "/v1/completions"
    assert request["prompt"].startswith(PROMPTS["math"]) and "【模型回答 开始】\nx\n" in request["prompt"]
    assert read_judgments(tmp_path / "run" / "judgments.jsonl")[0]["score"] == 0.3


def test_belle_page_format_sends_one_message_at_temperature_0_and_3000_tokens(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("math", " 2 "), "b": ("rewrite", "x")}))
    reply = "得分：0.9\n理由：正确，可以给1分但略简略。"
    with serve_stub(reply) as stub:
        score_answers(answered, PROMPTS, options(stub, tmp_path, concurrency=1), tmp_path / "run",
                      judge_format="belle-page", show_progress=False)
        math, rewrite = stub.requests
    assert math["messages"] == [{"role": "user", "content": f"{PROMPTS['math']} 问题 a 标准回答:  模型回答：'  2 '。"
                                                            "请针对模型回答给出得分，顺便给出理由："}]
    assert rewrite["messages"][0]["content"] == f"{PROMPTS['rewrite']} 问题 b  模型回答： 'x'。请针对模型回答给出得分，顺便给出理由："
    assert (math["temperature"], math["max_tokens"]) == (0.0, 3000)
    info = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert (info["judge_format"], info["max_tokens"], info["temperature"]) == ("belle-page", 3000, 0.0)
    records = read_judgments(tmp_path / "run" / "judgments.jsonl")
    assert [r["score"] for r in records] == [0.9, 0.9]  # the first score of the reply, not the reason's "1分"
    assert build_report(tmp_path / "run", bootstrap=0).judge_format == "belle-page"


def test_the_judge_format_is_pinned_and_an_old_run_json_means_delimited(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("math", "x")}))
    run = tmp_path / "run"
    run.mkdir()
    with serve_stub("得分: 0.5") as stub:
        old = {"judge": "judge", "judge_base_url": stub.url, "prompts_sha1": "", "temperature": 0.0, "max_tokens": 1024}
        (run / "run.json").write_text(json.dumps(old), encoding="utf-8")  # written before formats
        opts = options(stub, tmp_path)
        score_answers(answered, PROMPTS, opts, run, show_progress=False)  # delimited: the same settings
        assert json.loads((run / "run.json").read_text(encoding="utf-8"))["judge_format"] == "delimited"
        with pytest.raises(UsageError, match="judge_format 'delimited' -> 'belle-page'.*max_tokens 1024 -> 3000"
                                             ".*--max-tokens follows --judge-format"):
            score_answers(answered, PROMPTS, opts, run, judge_format="belle-page")
        with pytest.raises(UsageError, match="--judge-format must be one of delimited, belle-page, not 'belle'"):
            score_answers(answered, PROMPTS, opts, tmp_path / "other", judge_format="belle")
        assert stub.calls == 1


def test_judge_params_follow_the_format():
    assert judge_params(1, None, None) == {"temperature": 0.0, "max_tokens": 1024}
    assert judge_params(1, None, None, "belle-page") == {"temperature": 0.0, "max_tokens": 3000}
    assert judge_params(3, None, None, "belle-page") == {"temperature": 0.7, "max_tokens": 3000}
    assert judge_params(1, 0.3, 500, "belle-page") == {"temperature": 0.3, "max_tokens": 500}


def test_a_completion_judge_gets_the_belle_page_text_as_it_is(tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", {"a": ("generation", "诗")}))
    with serve_stub("得分: 0.3") as stub:
        score_answers(answered, PROMPTS, options(stub, tmp_path, api="completion"), tmp_path / "run",
                      judge_format="belle-page", show_progress=False)
        (request,) = stub.requests
    assert request["prompt"] == f"{PROMPTS['generation']} 问题 a  模型回答： '诗'。请针对模型回答给出得分，顺便给出理由："
