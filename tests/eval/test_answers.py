"""Answering an eval set: with the tiny model in left-padded batches, through an OpenAI-compatible
endpoint, multi-turn items turn by turn, resuming by id; reading answers files back."""

import json
from dataclasses import replace

import pytest

from belle.eval.answers import EVAL_DECODING, answer_locally, answer_remotely, pending_items, read_answers
from belle.eval.evalset import EvalItem, default_eval_set_path, read_eval_set
from belle.generation import Engine, GenerationParams
from belle.llm import LLMOptions
from belle.records import DataError
from belle.testing.openai_stub import Fault, serve_stub
from tests.helpers import read_jsonl

SHORT = replace(EVAL_DECODING, max_new_tokens=8)
ITEMS = [
    EvalItem("one", ("你好",), "你好！", "open qa"),
    EvalItem("two", ("写一首关于秋天的短诗，四句即可。",), "", "generation"),
    EvalItem("multi", ("我想学做饭。", "先学哪道菜？", "需要什么调料？"), "", "brainstorming"),
    EvalItem("calc", ("12 乘以 12 等于多少？",), "144", "math"),
]


@pytest.mark.slow
def test_local_answers_every_item_and_multi_turn_turn_by_turn(tiny_engine, tmp_path):
    out = tmp_path / "answers.jsonl"
    run = answer_locally(tiny_engine, ITEMS, out, SHORT, batch_size=3)
    assert (run.answered, run.skipped) == (4, {})
    records = {r["id"]: r for r in read_jsonl(out)}
    assert set(records) == {"one", "two", "multi", "calc"}
    multi = records["multi"]
    assert multi["question"] == list(ITEMS[2].turns) and len(multi["turn_answers"]) == 3
    assert multi["answer"] == multi["turn_answers"][-1]
    assert "turn_answers" not in records["one"] and records["calc"]["std_answer"] == "144"
    assert all(r["model"] == tiny_engine.name and r["completion_tokens"] >= 1 for r in records.values())
    # the three turns' prompts are counted, each longer than the one before
    assert multi["prompt_tokens"] > 3 * len(tiny_engine.encode_chat([{"role": "user", "content": "我想学做饭。"}]))
    back = {a.item.id: a for a in read_answers(out)}
    assert back["multi"].item == ITEMS[2] and back["one"].answer == records["one"]["answer"]


@pytest.mark.slow
def test_batched_greedy_answers_equal_one_at_a_time(tiny_engine, tmp_path):
    greedy = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=6)
    answer_locally(tiny_engine, ITEMS, tmp_path / "batched.jsonl", greedy, batch_size=4)
    answer_locally(tiny_engine, ITEMS, tmp_path / "single.jsonl", greedy, batch_size=1)
    batched = {r["id"]: r["answer"] for r in read_jsonl(tmp_path / "batched.jsonl")}
    single = {r["id"]: r["answer"] for r in read_jsonl(tmp_path / "single.jsonl")}
    assert batched == single


@pytest.mark.slow
def test_resume_answers_only_what_is_missing(tiny_engine, tmp_path):
    out = tmp_path / "answers.jsonl"
    answer_locally(tiny_engine, ITEMS[:2], out, SHORT)
    with out.open("a", encoding="utf-8") as f:
        f.write('{"id": "multi", "answ')  # a line torn by kill -9
    pending, already = pending_items(ITEMS, out)
    assert [item.id for item in pending] == ["multi", "calc"] and already == 2
    answer_locally(tiny_engine, pending, out, SHORT)
    assert sorted(r["id"] for r in read_jsonl(out)) == ["calc", "multi", "one", "two"]


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_skipped_and_named(tiny_engine, tmp_path):
    small = Engine(tiny_engine.model, tiny_engine.tokenizer, tiny_engine.template, "small", 40, tiny_engine.eos_token_ids)
    long_item = EvalItem("long", ("很长的问题" * 30,), "", "open qa")
    run = answer_locally(small, [ITEMS[0], long_item], tmp_path / "a.jsonl", SHORT)
    assert run.answered == 1 and list(run.skipped) == ["long"] and "context" in run.skipped["long"]


def test_remote_answers_carry_history_and_decoding(tmp_path):
    def responder(request):
        return f"第{sum(m['role'] == 'user' for m in request['messages'])}轮回答"

    with serve_stub(responder) as stub:
        opts = LLMOptions(model="served", base_url=stub.url, cache="off", concurrency=2)
        run = answer_remotely(opts, ITEMS, tmp_path / "a.jsonl", EVAL_DECODING, system="你是助手。")
        requests = stub.requests
    assert run.answered == 4 and stub.calls == 6  # three single-turn items, one of three turns
    records = {r["id"]: r for r in read_jsonl(tmp_path / "a.jsonl")}
    assert records["multi"]["turn_answers"] == ["第1轮回答", "第2轮回答", "第3轮回答"]
    assert records["one"]["model"] == "served"
    last = max((r for r in requests), key=lambda r: len(r["messages"]))
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last["messages"][2]["content"] == "第1轮回答"
    assert (last["temperature"], last["top_p"], last["top_k"], last["max_tokens"]) == (0.001, 0.85, 30, 1024)


def test_remote_failure_skips_the_item_and_a_rerun_answers_it(tmp_path):
    out = tmp_path / "a.jsonl"
    with serve_stub("答", faults=[Fault(500)]) as stub:
        opts = LLMOptions(model="served", base_url=stub.url, cache="off", concurrency=1, max_retries=0)
        first = answer_remotely(opts, ITEMS[:2], out, SHORT)
        assert first.answered == 1 and len(first.skipped) == 1
        pending, _ = pending_items(ITEMS[:2], out)
        second = answer_remotely(opts, pending, out, SHORT)
    assert second.answered == 1 and sorted(r["id"] for r in read_jsonl(out)) == ["one", "two"]


def test_read_answers_names_file_line_and_field(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        '{"id": "a", "class": "math", "question": "1+1?", "answer": "2"}\n'
        '{"id": "b", "class": "math", "question": "2+2?"}\n'
        '{"id": "c", "class": "math", "question": "3+3?", "answer": 6}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_answers(path)
    message = str(error.value)
    assert f"{path}:2: answer: missing" in message and f"{path}:3: answer: must be a string" in message


def test_answers_without_ids_get_the_eval_sets_ids(tmp_path):
    items = read_eval_set(default_eval_set_path())
    path = tmp_path / "answers.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for item in items[:5]:
            f.write(json.dumps({"question": list(item.turns) if len(item.turns) > 1 else item.turns[0],
                                "class": item.klass, "std_answer": item.std_answer, "answer": "x"}, ensure_ascii=False) + "\n")
    from belle.eval.evalset import derived_id

    assert [a.item.id for a in read_answers(path)] == [derived_id(i.klass, i.turns) for i in items[:5]]
