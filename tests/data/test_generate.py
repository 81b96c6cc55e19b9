"""`belle data generate` end to end: the CLI in a subprocess, the real openai client, and a scripted
OpenAI-compatible server on 127.0.0.1 that can inject faults."""

from __future__ import annotations

import json
import os
from collections import Counter
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from belle.testing.openai_stub import Fault, StubReply, serve_stub
from tests.helpers import read_jsonl

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-belle-test-SECRET-7d1f"

SEEDS = [
    {"id": "s0", "name": "weekend_plan", "instruction": "帮我安排一个轻松的周末计划。", "category": "brainstorming",
     "instances": [{"input": "", "output": "周六上午睡个懒觉，下午去公园散步；周日和朋友吃饭、看电影。"}], "is_classification": False},
    {"id": "s1", "name": "translate_word", "instruction": "把这个英文单词翻译成中文。", "category": "rewrite",
     "instances": [{"input": "library", "output": "图书馆"}], "is_classification": False},
    {"id": "s2", "name": "sum_numbers", "instruction": "计算一到十的所有整数之和。", "category": "math",
     "instances": [{"input": "", "output": "1 + 2 + … + 10 = 55。"}], "is_classification": False},
    {"id": "s3", "name": "sentiment", "instruction": "判断这句话表达的情绪。", "category": "classification",
     "instances": [{"input": "今天终于考完试了，太开心了！", "output": "开心、兴奋。"}], "is_classification": True},
]


@pytest.fixture
def seeds_file(tmp_path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(seed, ensure_ascii=False) + "\n" for seed in SEEDS), encoding="utf-8")
    return path


def command(stub_url: str, output: Path, seeds: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "belle", "data", "generate", "--base-url", stub_url, "--model", "scripted",
            "--output", str(output), "--seeds", str(seeds), "--cache", str(cache), "--concurrency", "1", *extra]


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def stats_of(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".stats.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_filters_keep_clean_tasks_and_count_every_discard(tmp_path, seeds_file, scripted):
    tasks = scripted.TASKS
    first = [
        tasks[0], tasks[1],
        ("brainstorming", "列出五种在家里就能做的减压方法！", "", "散步、冥想。"),  # near-duplicate of tasks[0]
        ("generation", "根据这张图片写一段描述。", "", "图片里有一只猫。"),  # blacklist
        ("generation", "请GPT模型写一句关于春天的谚语。", "", "一年之计在于春。"),  # kept, without the address
        ("chat", "你好", "", "你好！"),  # instruction too short
        ("rewrite", "重复下面这句话。", "今天天气很好。", "今天天气很好。"),  # input equals output
        ("brainstorming", "帮我安排一个轻松愉快的周末计划吧。", "", "去爬山。"),  # near-duplicate of seed s0
        tasks[2],  # the last item of a reply cut by the length limit
    ]
    second = [tasks[3], ("generation", "写一句关于春天的谚语。", "", "春雨贵如油。"), tasks[4]]  # a repeat of a kept one

    def responder(request: dict):
        prompt = request["messages"][-1]["content"]
        if responder.calls == 0:
            responder.calls += 1
            return StubReply(scripted.numbered_reply(prompt, first), finish_reason="length")
        return scripted.numbered_reply(prompt, second)

    responder.calls = 0
    output = tmp_path / "out" / "tasks.jsonl"
    with serve_stub(responder) as stub:
        result = run(command(stub.url, output, seeds_file, tmp_path / "cache.sqlite", "--num", "50", "--max-requests", "2"))
    assert result.returncode == 1, result.stderr  # --num not reached within --max-requests
    records = read_jsonl(output)
    assert [r["instruction"] for r in records] == [tasks[0][1], tasks[1][1], "写一句关于春天的谚语。", tasks[3][1], tasks[4][1]]
    assert [r["id"] for r in records] == ["si-0-0", "si-0-1", "si-0-4", "si-1-0", "si-1-2"]
    assert records[0] == {
        "id": "si-0-0", "instruction": tasks[0][1], "input": "", "output": tasks[0][3], "category": "brainstorming",
        "most_similar_instruction": records[0]["most_similar_instruction"], "similarity": records[0]["similarity"],
    }
    assert records[0]["most_similar_instruction"] in {seed["instruction"] for seed in SEEDS}
    assert records[3]["input"] == tasks[3][2] and records[3]["category"] == "extract"
    stats = stats_of(output)
    assert stats["kept"] == 5 and stats["units"] == 2
    assert stats["discarded"] == {
        "duplicate": 3, "blacklist": 1, "instruction_too_short": 1, "input_equals_output": 1, "truncated": 1,
    }
    assert "spent --max-requests 2" in stats["stopped"]
    summary = output.with_name(output.name + ".summary.md").read_text(encoding="utf-8")
    assert "kept: 5 tasks of 50" in summary and "duplicate 3" in summary


@pytest.mark.slow
def test_faults_are_retried_then_counted_and_a_rerun_retries_the_failed_request(tmp_path, seeds_file, scripted):
    faults = [Fault(429, retry_after=0), Fault(500), Fault(malformed=True),  # request 0: all 3 attempts fail
              Fault(hang=5)]  # request 1: times out once, then succeeds
    replies = iter(range(100))

    def responder(request: dict):
        n = next(replies)
        return scripted.numbered_reply(request["messages"][-1]["content"], scripted.TASKS[3 * n: 3 * n + 3])

    output = tmp_path / "tasks.jsonl"
    args = command("", output, seeds_file, tmp_path / "cache.sqlite", "--num", "5", "--max-retries", "2", "--timeout", "1.5")
    with serve_stub(responder, faults=faults) as stub:
        args[args.index("--base-url") + 1] = stub.url
        first = run(args)
        stats = stats_of(output)
        assert first.returncode == 0, first.stderr
        assert stats["failed"] == {"malformed": 1}
        assert stats["this_run"]["faults"] == {"429": 1, "500": 1, "malformed": 1, "timeout": 1}
        assert stats["this_run"]["retries"] == 3 and stats["this_run"]["failures"] == 1
        assert len(read_jsonl(output)) == 5
        assert {r["id"].split("-")[1] for r in read_jsonl(output)} == {"1", "2"}  # request 0 failed

        second = run([*args[:-6], "--num", "8", *args[-4:]])
        assert second.returncode == 0, second.stderr
        ids = [r["id"] for r in read_jsonl(output)]
        assert len(ids) == len(set(ids)) == 8
        assert any(i.startswith("si-0-") for i in ids)  # the failed request was tried again


@pytest.mark.slow
def test_a_killed_run_resumes_with_nothing_lost_or_doubled(tmp_path, seeds_file, scripted):
    responder = scripted.new_tasks_per_prompt(4)

    output = tmp_path / "tasks.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    with serve_stub(responder, latency=0.4) as stub:
        args = command(stub.url, output, seeds_file, tmp_path / "cache.sqlite", "--num", "20")
        process = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not output.exists() or len(output.read_bytes().splitlines()) < 6):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        written_before = len(read_jsonl(output))
        assert 6 <= written_before < 20
        resumed = run(args)
        assert resumed.returncode == 0, resumed.stderr
    records = read_jsonl(output)
    assert len(records) == 20
    assert sorted(r["instruction"] for r in records) == sorted(task[1] for task in scripted.TASKS[:20])
    assert len({r["id"] for r in records}) == 20
    assert stats_of(output)["kept"] == 20


@pytest.mark.slow
def test_a_reply_cut_short_by_num_is_reported_and_finished_by_a_larger_num(tmp_path, seeds_file, scripted):
    responder = scripted.new_tasks_per_prompt(4)
    output = tmp_path / "tasks.jsonl"
    with serve_stub(responder) as stub:
        first = run(command(stub.url, output, seeds_file, tmp_path / "cache.sqlite", "--num", "2"))
        assert first.returncode == 0, first.stderr
        assert stats_of(output)["partial_request"] == 0 and stats_of(output)["units"] == 0
        summary = output.with_name(output.name + ".summary.md").read_text(encoding="utf-8")
        assert "request 0 was used in part" in summary
        second = run(command(stub.url, output, seeds_file, tmp_path / "cache.sqlite", "--num", "4"))
        assert second.returncode == 0, second.stderr
    assert [r["id"] for r in read_jsonl(output)] == ["si-0-0", "si-0-1", "si-0-2", "si-0-3"]
    stats = stats_of(output)
    assert stats["partial_request"] is None and stats["units"] == 1 and stats["kept"] == 4


@pytest.mark.slow
def test_the_cache_makes_a_rerun_call_nothing_and_keys_reach_no_file(tmp_path, seeds_file, scripted):
    responder = scripted.new_tasks_per_prompt(6)

    output = tmp_path / "tasks.jsonl"
    with serve_stub(responder) as stub:
        args = command(stub.url, output, seeds_file, tmp_path / "cache.sqlite", "--num", "10")
        first = run(args)
        assert first.returncode == 0, first.stderr
        calls, before = stub.calls, output.read_text(encoding="utf-8")
        for path in tmp_path.glob("tasks.jsonl*"):
            path.unlink()
        second = run(args)
        assert second.returncode == 0, second.stderr
        assert stub.calls == calls
        assert output.read_text(encoding="utf-8") == before
        assert stats_of(output)["this_run"]["cached"] == stats_of(output)["this_run"]["requests"] > 0
        assert all(r["_headers"].get("authorization") == f"Bearer {KEY}" for r in stub.requests)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for result in (first, second):
        assert KEY not in result.stdout + result.stderr


def test_bad_seed_file_is_a_clear_error(tmp_path, belle_main, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"id": "x", "name": "n", "instances": [{"input": "", "output": "好"}]}\n', encoding="utf-8")
    result = belle_main("data", "generate", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                        "--output", str(tmp_path / "o.jsonl"), "--seeds", str(bad), "--num", "3")
    assert result.returncode == 2
    assert f"{bad}:1" in result.stderr and "instruction" in result.stderr


def test_a_task_with_no_lsh_candidate_is_kept_without_a_most_similar_one(monkeypatch, tmp_path):
    """Beyond the index's exact limit, LSH may find no earlier text at all: the task is new."""
    import functools

    from belle.data import generate as module
    from belle.data.selfinstruct import Task

    monkeypatch.setattr(module, "NearDuplicateIndex", functools.partial(module.NearDuplicateIndex, exact_limit=0))
    seeds = [Task(s["instruction"], s["instances"][0]["input"], s["instances"][0]["output"]) for s in SEEDS]
    job = module._Job(seeds, [], {}, tmp_path / "o.jsonl", 10, 3, 20, 0.7, 0)
    discarded = Counter()
    new = job.screen(Task("用Python写一个函数，统计字符串中每个字母出现的次数。", "", "from collections import Counter"), discarded)
    assert new["most_similar_instruction"] is None and new["similarity"] == 0.0
    assert job.screen(Task("帮我安排一个轻松愉快的周末计划吧。", "", "去爬山。"), discarded) is None
    assert discarded == {"duplicate": 1}
