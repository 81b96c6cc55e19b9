"""`belle serve` through the real `openai` client: chat and completions, streamed and whole, usage,
stop strings, API keys, limits, bad requests, concurrency, and disconnects that end generation."""

import threading
import time

import httpx
import openai
import pytest

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
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
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
