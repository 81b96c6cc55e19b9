"""A GGUF file through the front ends, as a user runs them: `belle serve` (in its own process),
`belle chat --cli` and `belle eval generate` (in this one) with `--model FILE.gguf`; the replies are
those of the transformers engine."""

import io
import sys
from dataclasses import replace

import pytest

from belle.generation import SamplingOptions
from tests.helpers import read_jsonl

HELLO = [{"role": "user", "content": "你好，请介绍一下你自己。"}]


@pytest.mark.slow
def test_serve_streams_chat_with_stop_and_scores_prompts(tiny_gguf_f32, tiny_engine, start_cli):
    import openai

    params = replace(tiny_engine.default_params, max_new_tokens=16)
    expected = tiny_engine.generate(tiny_engine.encode_chat(HELLO), params).text
    stop = expected[len(expected) // 2]
    prompt = "BELLE 是一个中文对话模型, trained on 1.5M samples."
    scored = tiny_engine.prompt_logprobs([tiny_engine.encode_text(prompt)], top=1)[0]
    with start_cli("serve", "--model", f"tiny={tiny_gguf_f32}", ready="/health") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, stop=[stop], stream=True))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text == expected[: expected.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"

        completion = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, echo=True, logprobs=1, temperature=0)
        logprobs = completion.choices[0].logprobs
        assert completion.choices[0].text.startswith(prompt)
        assert logprobs.token_logprobs[0] is None and len(logprobs.token_logprobs) == len(scored) + 1
        assert logprobs.token_logprobs[1 : len(scored)] == pytest.approx([e.logprob for e in scored[1:]], abs=1e-3)


@pytest.mark.slow
def test_terminal_chat_answers_as_transformers_does(tiny_gguf_f32, tiny_engine, belle_main, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(HELLO[0]["content"] + "\n/exit\n"))
    result = belle_main("chat", "--cli", "--model", tiny_gguf_f32, "--temperature", "0", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    expected = tiny_engine.chat(HELLO, SamplingOptions(temperature=0, max_new_tokens=12).params()).text()
    assert "Assistant: " + expected in result.stdout


@pytest.mark.slow
def test_eval_generate_writes_the_answers(belle_main, tiny_gguf_f32, tmp_path):
    answers = tmp_path / "answers.jsonl"
    result = belle_main("eval", "generate", "--model", tiny_gguf_f32, "--output", answers, "--limit", "3",
                        "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    records = read_jsonl(answers)
    assert len(records) == 3 and all(isinstance(r["answer"], str) for r in records)
    assert {r["model"] for r in records} == {tiny_gguf_f32.name} and any(r["answer"] for r in records)
