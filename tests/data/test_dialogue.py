"""`belle data chat` end to end against a scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import subprocess

import pytest

from belle.testing.openai_stub import serve_stub
from tests.helpers import read_jsonl, run_module

SEEDS = [
    {"id": "topic-english", "topic": "学习英语"},
    {"id": "sleep", "question": "怎样才能早睡早起？"},
    {"id": "books", "question": "推荐几本适合初学者的历史书。"},
    {"id": "who", "question": "你是谁？"},
    {"id": "photo", "question": "帮我看看这张照片拍得怎么样。"},
    {"id": "sleep-again", "question": "怎样才能早睡早起呢？"},
]


def responder(request: dict) -> str:
    messages = request["messages"]
    last = messages[-1]["content"]
    if "继续扮演" in last:
        return "用户：还有别的办法吗？"
    if "扮演" in last:
        topic = last.split("「")[1].split("」")[0]
        return f"用户：我想把{topic}这件事坚持下去，应该怎么开始？"
    if last == "你是谁？":
        return "我是ChatGPT，一个由OpenAI训练的大型语言模型。"
    return f"关于“{last}”，可以先定一个小目标，每天坚持一点。"


def run(*args: str) -> subprocess.CompletedProcess:
    return run_module("belle", "data", "chat", *args, timeout=300, OPENAI_API_KEY="sk-test")


@pytest.mark.slow
def test_dialogues_alternate_roles_pass_the_filters_and_resume(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in SEEDS), encoding="utf-8")
    output = tmp_path / "dialogues.jsonl"
    with serve_stub(responder) as stub:
        args = ["--base-url", stub.url, "--model", "scripted", "--seeds", str(seeds), "--output", str(output),
                "--rounds", "2", "--concurrency", "1", "--cache", str(tmp_path / "cache.sqlite")]
        first = run(*args)
        assert first.returncode == 0, first.stderr
        calls = stub.calls
        records = read_jsonl(output)
        assert [r["id"] for r in records] == ["topic-english", "sleep", "books"]
        for record in records:
            assert [turn["from"] for turn in record["conversations"]] == ["human", "assistant"] * 2
            assert record["conversations"][2]["value"] == "还有别的办法吗？"  # the speaker label is stripped
        assert records[0]["conversations"][0]["value"] == "我想把学习英语这件事坚持下去，应该怎么开始？"
        assert records[0]["seed"] == "学习英语"
        assert records[1]["conversations"][1]["value"] == "关于“怎样才能早睡早起？”，可以先定一个小目标，每天坚持一点。"
        stats = json.loads(output.with_name("dialogues.jsonl.stats.json").read_text(encoding="utf-8"))
        assert stats["kept"] == 3 and stats["units"] == 6
        assert stats["discarded"] == {"gpt_identity": 1, "blacklist": 1, "duplicate": 1}
        # every assistant turn sees the whole history
        assistant_requests = [r for r in stub.requests if "扮演" not in r["messages"][-1]["content"]]
        assert max(len(r["messages"]) for r in assistant_requests) == 3

        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert stub.calls == calls
        assert len(output.read_text(encoding="utf-8").splitlines()) == 3


def test_a_bad_seed_line_is_named(tmp_path, belle_main, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"topic": "旅行"}\n{"topic": "做饭", "question": "怎么煮饭？"}\n', encoding="utf-8")
    result = belle_main("data", "chat", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--seeds", str(seeds),
                        "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2
    assert f"{seeds}:2" in result.stderr and "topic" in result.stderr
