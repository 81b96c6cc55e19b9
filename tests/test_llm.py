"""belle.llm through real HTTP: the real `openai` client against the scripted stub server."""

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import time
import urllib.request

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from belle.llm import (LLMClient, LLMError, LLMFatalError, LLMOptions, Usage, default_cache_path, fan_out, redact_url,
                       url_secrets)
from belle.testing.openai_stub import Fault, StubReply, serve_stub

KEY_ENV = "BELLE_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-123"
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}  # seconds: keep retries quick


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def make_options(stub, tmp_path, **overrides) -> LLMOptions:
    settings = dict(model="stub-model", base_url=stub.url, api_key_env=KEY_ENV, cache=str(tmp_path / "llm.sqlite"))
    return LLMOptions(**{**settings, **overrides})


def ask_all(options: LLMOptions, prompts: list[str], **params) -> tuple[list, Usage]:
    """Ask every prompt at once through one new client; returns (replies or LLMErrors, usage)."""

    async def go():
        async with LLMClient(options, **FAST) as llm:
            replies = await asyncio.gather(*(llm.ask(p, **params) for p in prompts), return_exceptions=True)
            return replies, llm.usage

    return asyncio.run(go())


def test_reply_round_trips_with_token_counts(tmp_path):
    with serve_stub(StubReply("北京是中国的首都。", finish_reason="length")) as stub:
        (reply,), usage = ask_all(make_options(stub, tmp_path, price_input=2.0, price_output=10.0), ["中国的首都是哪里？"],
                                  temperature=0.7, max_tokens=64)
    assert reply.text == "北京是中国的首都。"
    assert reply.finish_reason == "length"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.cached) == (9, 9, False)  # the stub counts characters
    sent = stub.requests[0]
    assert sent["_path"] == "/v1/chat/completions"
    assert sent["model"] == "stub-model"
    assert sent["messages"] == [{"role": "user", "content": "中国的首都是哪里？"}]
    assert (sent["temperature"], sent["max_tokens"]) == (0.7, 64)
    assert (usage.requests, usage.calls, usage.cached, usage.retries, usage.failures) == (1, 1, 0, 0, 0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 9)
    assert usage.cost_usd == pytest.approx((9 * 2.0 + 9 * 10.0) / 1e6)
    assert usage.summary() == "1 requests (0 from the cache), 1 calls, 0 retries, 0 failures, 9 + 9 tokens, $0.00"


def test_faults_are_retried_and_counted(tmp_path):
    faults = [Fault(429, retry_after=0), Fault(500), Fault(hang=1.5), Fault(malformed=True),
              Fault(malformed=True, body=json.dumps({"id": "x", "object": "chat.completion"}))]
    with serve_stub("好的", faults=faults) as stub:
        (reply,), usage = ask_all(make_options(stub, tmp_path, timeout=0.5, max_retries=5), ["你好"])
    assert reply.text == "好的"
    assert stub.calls == 6
    assert usage.faults == {"429": 1, "500": 1, "timeout": 1, "malformed": 2}
    assert (usage.requests, usage.calls, usage.retries, usage.failures) == (1, 6, 5, 0)
    assert "5 retries (429: 1, 500: 1, malformed: 2, timeout: 1)" in usage.summary()


def test_retry_after_is_obeyed(tmp_path, monkeypatch):
    waits, real_sleep = [], asyncio.sleep

    def recorded_sleep(delay, *args, **kwargs):
        waits.append(delay)
        return real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr("belle.llm.asyncio.sleep", recorded_sleep)
    with serve_stub("好的", faults=[Fault(429, retry_after=0.4)]) as stub:
        (reply,), usage = ask_all(make_options(stub, tmp_path), ["你好"])
    assert reply.text == "好的" and usage.retries == 1
    assert waits == [0.4]  # the server's Retry-After, where the backoff alone would wait at most 0.05 s


def test_gives_up_after_max_retries_and_caches_nothing(tmp_path):
    with serve_stub("好的", faults=[Fault(503)] * 3) as stub:
        options = make_options(stub, tmp_path, max_retries=2)
        (error,), usage = ask_all(options, ["你好"])
        assert isinstance(error, LLMError) and not isinstance(error, LLMFatalError)
        assert (error.kind, error.status) == ("server_error", 503)
        assert "after 3 attempts" in str(error)
        assert (usage.requests, usage.calls, usage.retries, usage.failures) == (0, 3, 2, 1)
        assert usage.faults == {"503": 3}
        (reply,), _ = ask_all(options, ["你好"])  # the failure was not cached: this one calls again
    assert reply.text == "好的" and not reply.cached and stub.calls == 4


def test_bad_request_is_not_retried(tmp_path):
    with serve_stub("好的", faults=[Fault(400)]) as stub:
        (error,), usage = ask_all(make_options(stub, tmp_path), ["你好"])
    assert isinstance(error, LLMError) and not isinstance(error, LLMFatalError)
    assert error.kind == "bad_request"
    assert stub.calls == 1 and usage.retries == 0 and usage.failures == 1


@pytest.mark.parametrize("status, kind", [(401, "auth"), (403, "auth"), (404, "not_found")])
def test_refused_key_or_unknown_model_is_fatal_at_once(tmp_path, status, kind):
    with serve_stub("好的", faults=[Fault(status)]) as stub:
        (error,), usage = ask_all(make_options(stub, tmp_path), ["你好"])
    assert isinstance(error, LLMFatalError)
    assert (error.kind, error.status) == (kind, status)
    assert stub.calls == 1 and usage.retries == 0
    if kind == "auth":
        assert KEY_ENV in str(error)


def test_cache_makes_a_rerun_call_nothing(tmp_path):
    with serve_stub(["一", "二", "三", "四"]) as stub:
        options = make_options(stub, tmp_path)

        async def first_run():
            async with LLMClient(options, **FAST) as llm:
                a = await llm.ask("问题", temperature=1.0)
                again = await llm.ask("问题", temperature=1.0)
                return a, again, llm.usage

        a, again, usage = asyncio.run(first_run())
        assert (a.text, a.cached) == ("一", False)
        assert (again.text, again.cached) == ("一", True)
        assert again.prompt_tokens == a.prompt_tokens and again.completion_tokens == a.completion_tokens
        assert stub.calls == 1 and (usage.requests, usage.cached, usage.calls) == (2, 1, 1)

        (b,), usage = ask_all(options, ["问题"], temperature=1.0)  # a new client on the same file
        assert (b.text, b.cached) == ("一", True) and stub.calls == 1
        assert (usage.calls, usage.prompt_tokens, usage.cost_usd) == (0, 0, None)

        async def variants():
            async with LLMClient(options, **FAST) as llm:
                return [await llm.ask("问题", variant=v, temperature=1.0) for v in (0, 1, 2, 1)]

        texts = [(r.text, r.cached) for r in asyncio.run(variants())]
        assert texts == [("一", True), ("二", False), ("三", False), ("二", True)]
        (c,), _ = ask_all(options, ["问题"], temperature=0.5)  # other parameters: another entry
        assert (c.text, c.cached) == ("四", False) and stub.calls == 4

        (d,), usage = ask_all(make_options(stub, tmp_path, cache="off"), ["问题"], temperature=1.0)
        assert not d.cached and usage.calls == 1 and stub.calls == 5


def test_two_clients_share_one_cache_file(tmp_path):
    with serve_stub(lambda request: request["messages"][0]["content"] + "!") as stub:
        options = make_options(stub, tmp_path)

        async def go():
            async with LLMClient(options, **FAST) as one, LLMClient(options, **FAST) as two:
                await asyncio.gather(one.ask("甲"), two.ask("乙"))
                return await one.ask("乙"), await two.ask("甲")

        from_two, from_one = asyncio.run(go())
    assert (from_two.text, from_two.cached, from_one.text, from_one.cached) == ("乙!", True, "甲!", True)
    assert stub.calls == 2


def test_key_reaches_the_server_and_nowhere_else(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "x"}})
    with serve_stub("好的", faults=[Fault(500, body=echo)] * 2 + [Fault(401, body=echo)]) as stub:
        options = make_options(stub, tmp_path, max_retries=1)

        async def go():
            async with LLMClient(options, **FAST) as llm:
                failed = await asyncio.gather(llm.ask("一"), return_exceptions=True)
                fatal = await asyncio.gather(llm.ask("二"), return_exceptions=True)
                reply = await llm.ask("三", temperature=0.1)
                return failed + fatal, reply, llm.usage

        errors, reply, usage = asyncio.run(go())
    assert reply.text == "好的"
    assert [type(e) for e in errors] == [LLMError, LLMFatalError]
    assert all(r["_headers"]["authorization"] == f"Bearer {SECRET}" for r in stub.requests)
    assert SECRET not in " ".join(str(e) for e in errors)
    assert SECRET not in json.dumps(usage.to_dict()) + usage.summary()
    files = list(tmp_path.glob("llm.sqlite*"))
    assert files and all(SECRET.encode() not in f.read_bytes() for f in files)
    rows = sqlite3.connect(tmp_path / "llm.sqlite").execute("SELECT request FROM replies").fetchall()
    assert len(rows) == 1 and json.loads(rows[0][0])["params"] == {"temperature": 0.1}
    logged = caplog.text + " ".join(repr(r.args) for r in caplog.records)
    assert caplog.records and SECRET not in logged


def test_missing_key_is_a_clear_error_unless_the_endpoint_is_local(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LLMFatalError, match=KEY_ENV):
        LLMClient(LLMOptions(model="m", base_url="https://api.example.com/v1", api_key_env=KEY_ENV, cache="off"))
    with serve_stub("好的") as stub:
        (reply,), _ = ask_all(make_options(stub, tmp_path), ["你好"])
    assert reply.text == "好的" and stub.requests[0]["_headers"]["authorization"] == "Bearer EMPTY"


def test_concurrency_is_bounded(tmp_path):
    with serve_stub("好的", latency=0.2) as stub:
        replies, usage = ask_all(make_options(stub, tmp_path, concurrency=3), [f"问题{i}" for i in range(12)])
    assert all(r.text == "好的" for r in replies) and usage.calls == 12 and stub.calls == 12
    assert stub.max_in_flight == 3  # the bound is reached and never passed


def test_rpm_spaces_request_starts(tmp_path):
    arrivals = []

    def respond(request):
        arrivals.append(time.monotonic())
        return "好的"

    with serve_stub(respond) as stub:
        _, usage = ask_all(make_options(stub, tmp_path, concurrency=4, rpm=600), [f"问题{i}" for i in range(4)])
    assert usage.calls == 4 and stub.calls == 4
    gaps = [b - a for a, b in zip(sorted(arrivals), sorted(arrivals)[1:])]
    assert all(gap >= 0.08 for gap in gaps), gaps  # 60 / 600 = 0.1 s apart, less the HTTP jitter


def test_completion_api(tmp_path):
    with serve_stub("续写的文本") as stub:
        (reply,), usage = ask_all(make_options(stub, tmp_path, api="completion"), ["从前有座山，"], max_tokens=16)
    assert reply.text == "续写的文本" and reply.completion_tokens == 5 and reply.prompt_tokens == 6
    sent = stub.requests[0]
    assert sent["_path"] == "/v1/completions" and sent["prompt"] == "从前有座山，" and "messages" not in sent


def test_chat_with_a_conversation_and_complete_share_no_cache_entry(tmp_path):
    with serve_stub(["对话", "补全"]) as stub:
        options = make_options(stub, tmp_path)

        async def go():
            async with LLMClient(options, **FAST) as llm:
                messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"}]
                return await llm.chat(messages), await llm.complete("你好")

        chat, completion = asyncio.run(go())
    assert (chat.text, completion.text) == ("对话", "补全")
    assert stub.requests[0]["messages"][0]["role"] == "system"


def test_invalid_options_are_reported_together(tmp_path):
    with pytest.raises(ValueError) as error:
        LLMClient(LLMOptions(model="m", concurrency=0, rpm=-1, timeout=0, cache="off", api="stream"))
    for name in ("concurrency", "rpm", "timeout", "api"):
        assert name in str(error.value)


def test_default_cache_path_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "belle" / "llm.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path().parts[-3:] == (".cache", "belle", "llm.sqlite")


@pytest.mark.slow
def test_stub_runs_alone_and_streams():
    proc = subprocess.Popen([sys.executable, "-m", "belle.testing.openai_stub", "--reply", "嗯"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
            assert json.load(response)["data"][0]["id"]
        streamed = urllib.request.Request(f"{url}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                          data=json.dumps({"model": "m", "messages": [], "stream": True}).encode())
        with urllib.request.urlopen(streamed, timeout=10) as response:
            events = [line for line in response.read().decode().splitlines() if line]
        assert json.loads(events[0][len("data: "):])["choices"][0]["delta"]["content"] == "嗯"
        assert json.loads(events[1][len("data: "):])["choices"][0]["finish_reason"] == "stop"
        assert events[2:] == ["data: [DONE]"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("url, shown", [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://alice:s3cret@api.example.com/v1", "https://***@api.example.com/v1"),
    ("https://sk-only@api.example.com:8443/v1", "https://***@api.example.com:8443/v1"),
    ("http://u:p@[::1]:8000/v1", "http://***@[::1]:8000/v1"),
    ("https://x.openai.azure.com/v1?api-key=abc123&api-version=2024-06-01",
     "https://x.openai.azure.com/v1?api-key=***&api-version=2024-06-01"),
    ("https://h/v1?access_token=t&sig=s&Password=p&model=m", "https://h/v1?access_token=***&sig=***&Password=***&model=m"),
    ("https://h/v1#key=abc", "https://h/v1#***"),
    ("http://h:port/v1", "<unparsable URL>"),
    (None, None),
    ("", ""),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@settings(max_examples=100, deadline=None)
@given(user=st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?#[]% 中", min_size=1, max_size=12),
       password=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=8, max_size=20),
       value=st.text(st.characters(codec="utf-8"), min_size=8, max_size=20))
def test_redacted_url_holds_no_secret_as_written_or_decoded(user, password, value):
    url = f"https://{quote(user, safe='')}:{quote(password, safe='')}@h.example/v1?api-key={quote(value, safe='')}&model=m"
    shown = redact_url(url)
    assert shown == "https://***@h.example/v1?api-key=***&model=m"
    assert {password, value, quote(password, safe=""), quote(value, safe="")} <= set(url_secrets(url))


# ---------------------------------------------------------------------------------------------
# fan_out: the loop of every resumable job, with coroutines standing in for the client


def test_fan_out_bounds_concurrency_and_settles_every_unit_with_its_outcome():
    in_flight, most, settled, progress = 0, 0, [], []

    async def ask(n: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001 * (n % 3))
        in_flight -= 1
        if n == 4:
            raise LLMError("failed for good", "server_error")
        return n * 10

    asyncio.run(fan_out(range(10), ask, lambda n, outcome: settled.append((n, outcome)), concurrency=3,
                        progress=lambda: progress.append(len(settled))))
    assert most == 3
    assert sorted(n for n, _ in settled) == list(range(10)) and progress == list(range(1, 11))
    outcomes = dict(settled)
    assert isinstance(outcomes.pop(4), LLMError) and outcomes == {n: n * 10 for n in range(10) if n != 4}


def test_fan_out_reads_a_callable_concurrency_before_each_start():
    started, limit = [], [1]

    async def ask(n: int) -> int:
        started.append(n)
        await asyncio.sleep(0)
        return n

    def settle(n: int, outcome: int) -> None:
        limit[0] = 2  # the job wants more in flight once it has seen a reply
        assert len(started) - n <= limit[0]

    asyncio.run(fan_out(range(6), ask, settle, concurrency=lambda: limit[0]))
    assert started == list(range(6))


def test_fan_out_stops_starting_and_cancels_once_enough():
    started, settled, cancelled = [], [], []

    async def ask(n: int) -> int:
        started.append(n)
        try:
            await asyncio.sleep(0 if n < 3 else 10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    asyncio.run(fan_out(range(100), ask, lambda n, _: settled.append(n), concurrency=4,
                        enough=lambda: len(settled) >= 2))
    assert len(settled) == 2 and len(started) < 10  # no new unit once two were settled
    assert cancelled and all(n >= 3 for n in cancelled)  # the slow ones in flight were cancelled, not awaited


def test_fan_out_fatal_error_cancels_the_rest_and_propagates():
    settled, cancelled = [], []

    async def ask(n: int) -> int:
        if n == 1:
            await asyncio.sleep(0.01)
            raise LLMFatalError("the endpoint refused the key", "auth", 401)
        try:
            await asyncio.sleep(0 if n == 0 else 10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def go():
        with pytest.raises(LLMFatalError, match="refused"):
            await fan_out(range(50), ask, lambda n, _: settled.append(n), concurrency=5)
        return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    leftover = asyncio.run(go())
    assert leftover == []  # every unit in flight was cancelled and awaited before the error came out
    assert settled == [0] and sorted(cancelled) == [2, 3, 4, 5]  # 5 started when 0 was settled
