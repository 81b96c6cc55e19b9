"""`belle serve` through the real `openai` client: chat and completions, streamed and whole, usage,
stop strings, API keys, limits, bad requests, concurrency, and disconnects that end generation; `n`,
seeds, logprobs and echo, and lm-evaluation-harness's own request and parsing code."""

import math
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from belle.chat.server import create_app
from tests.chat.conftest import start_cli

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "max_tokens": 32}
QUESTION = [{"role": "user", "content": "你好，请介绍一下北京的历史和美食。"}]
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """Default limits, no API key."""
    with start_cli("serve", "--model", f"tiny={tiny_model_dir}", ready="/health") as running:
        yield running.url


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir):
    """An API key from the environment, one generation at a time and no queue, short prompts only."""
    args = ("serve", "--model", f"tiny={tiny_model_dir}", "--max-concurrent", "1", "--max-queue", "0",
            "--max-input-tokens", "64", "--max-tokens", "1900")
    with start_cli(*args, ready="/health", env={"BELLE_API_KEY": KEY}) as running:
        yield running.url


def client(url, key="unused"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["models"] == ["tiny"]


def test_chat_whole_and_streamed_agree(server):
    whole = client(server).chat.completions.create(model="tiny", messages=QUESTION, **GREEDY)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 32
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 32

    chunks = list(client(server).chat.completions.create(
        model="tiny", messages=QUESTION, stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # Chinese streamed piece by piece, no character broken
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_sse_ends_with_done(server):
    body = {"model": "tiny", "messages": QUESTION, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_completions_match_chat_on_the_rendered_prompt(server):
    chat = client(server).chat.completions.create(model="tiny", messages=QUESTION, **GREEDY)
    prompt = f"Human: \n{QUESTION[0]['content']}\n\nAssistant: \n"
    whole = client(server).completions.create(model="tiny", prompt=prompt, **GREEDY)
    assert whole.choices[0].text == chat.choices[0].message.content
    assert whole.usage.prompt_tokens == chat.usage.prompt_tokens
    streamed = client(server).completions.create(model="tiny", prompt=prompt, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(server, stream):
    full = client(server).chat.completions.create(model="tiny", messages=QUESTION, **GREEDY).choices[0].message.content
    cut = next(i for i in range(5, len(full) - 2) if "\ufffd" not in full[i : i + 2] and full.find(full[i : i + 2]) == i)
    kwargs = {"model": "tiny", "messages": QUESTION, "stop": [full[cut : cut + 2], "不会出现的停止词"], **GREEDY}
    if stream:
        chunks = list(client(server).chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        reply = client(server).chat.completions.create(**kwargs)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert reply.usage.completion_tokens < 32
    assert (text, finish) == (full[:cut], "stop")


BAD_REQUESTS = [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "last message"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "only text"),
    ({"n": 33}, "--max-concurrent"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "constrained decoding"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "context"),
    ({"stop": [""] * 2}, "stop"),
]


@pytest.mark.parametrize("change, mentions", BAD_REQUESTS)
def test_bad_requests_get_400_with_an_openai_error(server, change, mentions):
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 4, **change}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert mentions in error["message"] + str(error["param"])


def test_malformed_json_and_unknown_model(server):
    response = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).chat.completions.create(model="gpt-4", messages=QUESTION)
    assert caught.value.body["code"] == "model_not_found"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"  # nothing crashed


def test_eight_concurrent_streams_all_complete(server):
    results = {}

    def ask(i):
        chunks = client(server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"第{i}个问题"}], stream=True,
            stream_options={"include_usage": True}, temperature=0.7, max_tokens=64, extra_body={"min_tokens": 64})
        chunks = list(chunks)
        results[i] = (chunks[-1].usage.completion_tokens, [c.choices[0].finish_reason for c in chunks if c.choices][-1])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {i: (64, "length") for i in range(8)}


def wait_until_idle(url, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health").json()["running"] == 0:
            return True
        time.sleep(0.05)
    return False


LONG = {"max_tokens": 1900, "extra_body": {"min_tokens": 1900}, "temperature": 0}


def test_a_client_that_disconnects_ends_its_generation(server):
    stream = client(server).chat.completions.create(model="tiny", messages=QUESTION, stream=True, **LONG)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert httpx.get(f"{server}/health").json()["running"] == 1
    stream.close()
    assert wait_until_idle(server, timeout=1)  # the 1,900 tokens would take about 3 s more


def test_a_client_that_gives_up_on_a_whole_reply_ends_its_generation(server):
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 1900, "min_tokens": 1900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    assert wait_until_idle(server, timeout=1)


def test_api_key(strict_server):
    with pytest.raises(openai.AuthenticationError):
        client(strict_server).models.list()
    with pytest.raises(openai.AuthenticationError):
        client(strict_server, key="sk-wrong").chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
    reply = client(strict_server, key=KEY).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
    assert reply.usage.completion_tokens <= 4
    assert httpx.get(f"{strict_server}/health").status_code == 200  # health needs no key


def test_the_key_is_not_needed_without_one(server):
    assert client(server, key="anything").models.list().data


def test_limits(strict_server):
    api = client(strict_server, key=KEY)
    with pytest.raises(openai.BadRequestError, match="at most 1900"):
        api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=1901)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "很长的问题" * 40}], max_tokens=4)
    assert caught.value.body["code"] == "context_length_exceeded"


def test_busy_server_answers_429_then_recovers(strict_server):
    api = client(strict_server, key=KEY)
    stream = api.chat.completions.create(model="tiny", messages=QUESTION, stream=True, **LONG)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
    assert caught.value.body["code"] == "rate_limit_exceeded"
    stream.close()
    assert wait_until_idle(strict_server)
    assert api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4).choices[0].message.content is not None


@pytest.mark.parametrize(
    "args, message",
    [(["--model", "/no/such/folder"], "not a model folder"),
     (["--model", "MODEL", "--max-concurrent", "0"], "--max-concurrent"),
     (["--model", "a=MODEL", "--model", "a=MODEL"], "same name")],
)
def test_serve_refuses_bad_arguments(tiny_model_dir, belle_main, args, message):
    result = belle_main("serve", *[arg.replace("MODEL", str(tiny_model_dir)) for arg in args])
    assert result.returncode == 2 and message in result.stderr


def test_omitted_fields_take_the_model_s_generation_config(server, tiny_engine):
    assert tiny_engine.default_params.temperature == 0  # the tiny model's generation_config does not sample
    omitted = client(server).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24)
    greedy = client(server).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24, temperature=0,
                                                    extra_body={"repetition_penalty": 1.0})
    assert omitted.choices[0].message.content == greedy.choices[0].message.content


def test_n_samples_and_seeds(server):
    def ask(seed, n=3):
        reply = client(server).completions.create(model="tiny", prompt=["你好", "北京"], n=n, seed=seed, max_tokens=12,
                                                  temperature=1.0, extra_body={"min_tokens": 12})
        return [c.text for c in sorted(reply.choices, key=lambda c: c.index)], reply

    texts, reply = ask(7)
    assert [c.index for c in reply.choices] == list(range(6)) and reply.usage.completion_tokens == 72
    assert texts == ask(7)[0]  # same seed, same samples
    assert len(set(texts[:3])) > 1  # sample j draws with seed + j
    assert ask(8, n=1)[0][0] == texts[1]  # ... so sample 1 of seed 7 is sample 0 of seed 8
    chat = [client(server).chat.completions.create(model="tiny", messages=QUESTION, n=2, seed=5, max_tokens=8, temperature=1.0)
            for _ in range(2)]
    assert [c.message.content for c in chat[0].choices] == [c.message.content for c in chat[1].choices]


def test_streamed_n_and_logprobs_agree_with_the_whole_reply(server):
    kwargs = {"model": "tiny", "messages": QUESTION, "n": 2, "seed": 1, "temperature": 1.0, "max_tokens": 10,
              "logprobs": True, "top_logprobs": 3}
    whole = client(server).chat.completions.create(**kwargs)
    chunks = list(client(server).chat.completions.create(stream=True, **kwargs))
    for choice in whole.choices:
        parts = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert "".join(p.delta.content or "" for p in parts) == choice.message.content
        streamed = [entry for p in parts if p.logprobs for entry in p.logprobs.content]
        assert [e.model_dump() for e in streamed] == [e.model_dump() for e in choice.logprobs.content]
        for entry in choice.logprobs.content:
            assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_greedy_tokens_are_the_most_likely(server):
    reply = client(server).completions.create(model="tiny", prompt="北京", max_tokens=8, temperature=0, logprobs=2,
                                              extra_body={"repetition_penalty": 1.0})
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 8
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert logprob == max(top.values()) and top[token] == logprob
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(8)]


@pytest.fixture(scope="module")
def app(tiny_engine):
    with TestClient(create_app({"tiny": tiny_engine})) as test_client:
        yield test_client


def lm_eval_loglikelihood(app, contexts, continuations):
    """What lm-eval's `local-completions` sends for log-likelihood requests and how it reads the reply:
    its own `_create_payload` and `parse_logprobs`."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    inputs = [c + x for c, x in zip(contexts, continuations)]
    lm = SimpleNamespace(model="tiny", _max_gen_toks=256)
    payload = LocalCompletionsAPI._create_payload(lm, inputs, generate=False, seed=1234)
    response = app.post("/v1/completions", json=payload)
    assert response.status_code == 200, response.text
    return LocalCompletionsAPI.parse_logprobs(response.json(), tokens=inputs, ctxlens=[len(c) for c in contexts])


def scores(engine, ids):
    """Each token's log-probability given those before it, straight from the model."""
    import torch

    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))], logprobs.argmax(-1).tolist()


def test_lm_eval_log_likelihood_requests(app, tiny_engine):
    context = tiny_engine.encode_text("Human: \n北京有什么好吃的？\n\nAssistant: \n")
    greedy = list(context)
    for _ in range(4):
        greedy.append(scores(tiny_engine, greedy + [0])[1][len(greedy) - 1])
    likely = greedy[len(context):]
    unlikely = [scores(tiny_engine, context + [0])[1][len(context) - 1] + 1, *likely[1:]]
    (greedy_sum, is_greedy), (other_sum, other_greedy) = lm_eval_loglikelihood(app, [context, context], [likely, unlikely])
    assert is_greedy and not other_greedy
    assert math.isclose(greedy_sum, sum(scores(tiny_engine, greedy)[0][len(context) - 1:]), abs_tol=1e-3)
    assert math.isclose(other_sum, sum(scores(tiny_engine, context + unlikely)[0][len(context) - 1:]), abs_tol=1e-3)
    assert other_sum < greedy_sum


def test_echo_with_no_new_tokens_scores_the_prompt_only(app, tiny_engine):
    ids = tiny_engine.encode_text("北京的烤鸭")
    body = app.post("/v1/completions", json={"model": "tiny", "prompt": [ids, ids[:2]], "echo": True, "max_tokens": 0,
                                            "logprobs": 0}).json()
    first, second = body["choices"]
    assert first["text"] == tiny_engine.tokenizer.decode(ids) and first["finish_reason"] == "length"
    assert first["logprobs"]["token_logprobs"][0] is None
    assert first["logprobs"]["token_logprobs"][1:] == pytest.approx(scores(tiny_engine, ids)[0], abs=1e-4)
    assert first["logprobs"]["tokens"] == [tiny_engine.tokenizer.decode([i]) for i in ids]
    assert len(second["logprobs"]["tokens"]) == 2
    assert body["usage"] == {"prompt_tokens": len(ids) + 2, "completion_tokens": 0, "total_tokens": len(ids) + 2}
    text = app.post("/v1/completions", json={"model": "tiny", "prompt": "北京", "echo": True, "max_tokens": 3,
                                            "temperature": 0}).json()["choices"][0]["text"]
    assert text.startswith("北京") and len(text) > 2
