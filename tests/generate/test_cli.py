"""`belle generate`: batch inference over every input format on the tiny model, resumed after a real
kill -9 with nothing lost or doubled; through an OpenAI-compatible server; bad input as exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from belle.testing.openai_stub import Fault, serve_stub
from tests.helpers import cli_env, read_jsonl, write_jsonl

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT_FIELDS = {"reply", "finish_reason", "prompt_tokens", "completion_tokens", "model"}


def prompts(n: int) -> list[dict]:
    """`n` prompts cycling through every kind: BELLE's infer file, raw text, conversations in three formats."""
    kinds = [
        lambda i: {"text": f"第{i}个问题：北京有哪些名胜古迹？" + "请详细说明。" * (i % 4)},
        lambda i: {"id": f"raw-{i}", "prompt": f"北京是{i}"},
        lambda i: {"id": f"msg-{i}", "messages": [{"role": "user", "content": f"一{i}"}, {"role": "assistant", "content": "二"},
                                                  {"role": "user", "content": "三"}]},
        lambda i: {"id": f"belle-{i}", "conversations": [{"from": "human", "value": f"四{i}"}, {"from": "gpt", "value": "参考答案"}]},
        lambda i: {"id": f"alpaca-{i}", "instruction": f"写一首诗{i}", "input": "关于春天"},
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def start_generate(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "belle", "generate", *map(str, args)], cwd=REPO_ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_in(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_generate_answers_every_format_and_resumes_after_kill_9(tiny_model_dir, tiny_engine, tmp_path):
    records = prompts(60)
    source = write_jsonl(tmp_path / "prompts.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ("--model", tiny_model_dir, "--input", source, "--output", out, "--device", "cpu",
            "--batch-size", "2", "--max-new-tokens", "24", "--temperature", "0")

    first = start_generate(*args)
    deadline = time.monotonic() + 300
    while lines_in(out) < 6 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    written = lines_in(out)
    assert 6 <= written < len(records), f"the kill should land mid-run, after {written} lines"

    second = start_generate(*args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    assert f"answering {len(records) - written} prompts ({written} already in" in stdout, stdout  # a torn line is asked again

    done = read_jsonl(out)
    ids = [str(record["id"]) for record in done]
    assert len(ids) == len(set(ids)) == len(records), "every prompt answered exactly once"
    by_id = {str(record["id"]): record for record in done}
    for line, record in enumerate(records, start=1):
        answered = by_id[str(record.get("id", line))]
        assert {k: answered[k] for k in record} == record  # the input's fields are kept as they were
        assert RESULT_FIELDS <= set(answered) and answered["model"] == tiny_model_dir.name
        assert answered["finish_reason"] in ("stop", "length") and 1 <= answered["completion_tokens"] <= 24

    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    expected_prompt = {  # which prompt each kind became: templated, raw, history before the last assistant turn
        "1": tiny_engine.encode_chat(user(records[0]["text"])),
        "raw-1": tiny_engine.encode_text("北京是1"),
        "msg-2": tiny_engine.encode_chat(records[2]["messages"]),
        "belle-3": tiny_engine.encode_chat(user("四3")),
        "alpaca-4": tiny_engine.encode_chat(user("写一首诗4\n关于春天")),
    }
    for item_id, ids in expected_prompt.items():
        assert by_id[item_id]["prompt_tokens"] == len(ids), item_id

    stats = json.loads((tmp_path / "out.jsonl.stats.json").read_text(encoding="utf-8"))
    assert (stats["replies"], stats["this_run"]["replies"]) == (len(records), len(records) - written)
    assert (tmp_path / "out.jsonl.summary.md").is_file()

    again = start_generate(*args)
    stdout, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "already answered" in stdout
    assert lines_in(out) == len(records)


def test_through_a_server_chat_and_raw_prompts_take_their_routes(belle_main, tmp_path):
    """Chat items go to /chat/completions as messages, raw ones to /completions; with no decoding flag
    only max_tokens is sent (the server's defaults apply); a re-run asks nothing."""
    source = write_jsonl(tmp_path / "p.jsonl", [{"text": "你好"}, {"id": "r", "prompt": "北京是"},
                                                {"id": "m", "messages": [{"role": "user", "content": "一"}]}])
    out = tmp_path / "out.jsonl"
    with serve_stub("好的。") as stub:
        result = belle_main("generate", "--model", "served", "--api-base", stub.url, "--input", source,
                            "--output", out, "--cache", "off", "--system", "简短")
        assert result.returncode == 0, result.stderr
        routes = {request["_path"]: request for request in stub.requests}
        assert set(routes) == {"/v1/chat/completions", "/v1/completions"} and stub.calls == 3
        raw = routes["/v1/completions"]
        assert raw["prompt"] == "北京是" and raw["model"] == "served"
        sampling = {k for k in raw if k not in ("_path", "_headers", "model", "prompt", "stream")}
        assert sampling == {"max_tokens"}
        chats = [r for r in stub.requests if r["_path"] == "/v1/chat/completions"]
        assert sorted(r["messages"][-1]["content"] for r in chats) == ["一", "你好"]
        assert all(r["messages"][0] == {"role": "system", "content": "简短"} for r in chats)

        rerun = belle_main("generate", "--model", "served", "--api-base", stub.url, "--input", source,
                           "--output", out, "--cache", "off")
        assert rerun.returncode == 0 and "already answered" in rerun.stdout and stub.calls == 3

        flags = tmp_path / "flags.jsonl"
        belle_main("generate", "--model", "served", "--api-base", stub.url, "--input", write_jsonl(tmp_path / "one.jsonl", [{"text": "x"}]),
                   "--output", flags, "--cache", "off", "--temperature", "0.7", "--seed", "3", "--max-new-tokens", "9")
        sent = stub.requests[-1]
        assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.7, 3, 9) and "top_p" not in sent
    done = {record["id"]: record for record in read_jsonl(out)}
    assert set(done) == {1, "r", "m"} and all(r["reply"] == "好的。" and r["model"] == "served" for r in done.values())
    assert done["r"]["completion_tokens"] == 3 and done["r"]["finish_reason"] == "stop"


def test_a_refused_key_is_a_usage_error_that_says_a_rerun_resumes(belle_main, tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"text": "你好"}])
    with serve_stub("好", faults=[Fault(401)]) as stub:
        result = belle_main("generate", "--model", "m", "--api-base", stub.url, "--input", source,
                            "--output", tmp_path / "o.jsonl", "--cache", "off")
    assert result.returncode == 2 and "a re-run resumes" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("lines, expected", [
    (['{"text": "  "}'], ":1: text: empty"),
    (['{"text": "ok"}', '{"question": "not a prompt"}'], ":2: record: no known format"),
    (['{"id": "a", "text": "x"}', '{"id": "a", "prompt": "y"}'], ":2: id: duplicate 'a' (first on line 1"),
    (['{"text": "x"}', '{"id": 1, "prompt": "y"}'], ":2: id: duplicate '1' (first on line 1"),
    (['{"prompt": 5}'], ":1: prompt: must be a string"),
    (['{"messages": [{"role": "assistant", "content": "hi"}]}'], ":1: roles out of order"),
    (['{"conversations": [{"from": "alien", "value": "x"}]}'], ":1: unknown role: conversations[0].from"),
    (['{"text": "x"', '{"text": "y"}'], ":1: malformed JSON"),
    (['[1]'], ":1: record: not a JSON object"),
    (['{"id": [1], "text": "x"}'], ":1: id: must be a string or an integer"),
])
def test_bad_input_names_file_line_and_field(belle_main, tmp_path, lines, expected):
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = belle_main("generate", "--model", tmp_path / "no-model", "--input", source, "--output", tmp_path / "o.jsonl")
    assert result.returncode == 2, result.stderr
    assert f"{source}{expected}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_usage_errors(belle_main, tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"text": "x"}])
    run = lambda *extra: belle_main("generate", "--model", tmp_path / "m", "--input", source, *extra)  # noqa: E731
    same = run("--output", source)
    assert same.returncode == 2 and "is the input file" in same.stderr
    assert source.read_text(encoding="utf-8") == '{"text": "x"}\n'
    bad = run("--output", tmp_path / "o.jsonl", "--temperature", "-1", "--top-p", "2")
    assert bad.returncode == 2 and "temperature must be" in bad.stderr and "top_p must be" in bad.stderr
    zero = run("--output", tmp_path / "o.jsonl", "--batch-size", "0")
    assert zero.returncode == 2 and "--batch-size" in zero.stderr
    missing = belle_main("generate", "--model", tmp_path / "m", "--input", tmp_path / "none.jsonl", "--output", tmp_path / "o.jsonl")
    assert missing.returncode == 2 and "none.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    no_model = run("--output", tmp_path / "o.jsonl")
    assert no_model.returncode == 2 and "not a model folder" in no_model.stderr
    empty = belle_main("generate", "--model", "m", "--input", write_jsonl(tmp_path / "e.jsonl", []), "--output", tmp_path / "o.jsonl")
    assert empty.returncode == 2 and "no prompts" in empty.stderr
