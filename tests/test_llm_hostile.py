"""belle.llm against a hostile or broken endpoint: a reply dripped a byte at a time, a huge reply,
a nonsense `Retry-After`, secrets in the base URL. Each ends in a counted fault, a clear error or
a reply, within the timeout, and no secret is printed, logged or cached."""

import asyncio
import json
import logging
import socket
import sqlite3
import time

import pytest

from belle.llm import HTTP_LOGGERS, LLMClient, LLMError, LLMFatalError, LLMOptions, _retry_after
from belle.testing.openai_stub import Fault, StubReply, serve_stub

KEY_ENV = "BELLE_TEST_HOSTILE_KEY"
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}  # seconds
PASSWORD = "pw-HOSTILE-5ecret"
QUERY_KEY = "qk-HOSTILE-5ecret"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-hostile-test")


def options(base_url: str, tmp_path, **overrides) -> LLMOptions:
    settings = dict(model="stub-model", base_url=base_url, api_key_env=KEY_ENV, cache=str(tmp_path / "llm.sqlite"))
    return LLMOptions(**{**settings, **overrides})


def ask(llm_options: LLMOptions, prompt: str = "你好"):
    """(reply or LLMError, usage, seconds taken) of one request through a new client."""

    async def go():
        async with LLMClient(llm_options, **FAST) as llm:
            start = time.monotonic()
            try:
                result = await llm.ask(prompt)
            except LLMError as error:
                result = error
            return result, llm.usage, time.monotonic() - start

    return asyncio.run(go())


def cached_rows(tmp_path) -> list[tuple]:
    return sqlite3.connect(tmp_path / "llm.sqlite").execute("SELECT key, request FROM replies").fetchall()


def test_a_reply_dripped_a_byte_at_a_time_times_out_as_a_whole(tmp_path):
    # each byte comes 0.05 s after the last, far within a 0.5 s read timeout; the ~300-byte reply takes 15 s
    with serve_stub("好的", faults=[Fault(drip=0.05)]) as stub:
        reply, usage, seconds = ask(options(stub.url, tmp_path, timeout=0.5, max_retries=2))
    assert reply.text == "好的" and stub.calls == 2
    assert usage.faults == {"timeout": 1} and usage.retries == 1
    assert seconds < 3


def test_a_drip_on_every_attempt_fails_as_a_timeout(tmp_path):
    with serve_stub(Fault(drip=0.05)) as stub:
        error, usage, seconds = ask(options(stub.url, tmp_path, timeout=0.3, max_retries=1))
    assert isinstance(error, LLMError) and error.kind == "timeout"
    assert "no whole reply within 0.3 s (after 2 attempts)" in str(error)
    assert usage.faults == {"timeout": 2} and stub.calls == 2 and seconds < 3
    assert cached_rows(tmp_path) == []


@pytest.mark.parametrize("length_header", [True, False], ids=["content-length", "until-close"])
def test_a_reply_over_the_size_cap_is_a_fault_and_never_cached(tmp_path, length_header):
    huge = json.dumps({"choices": [{"message": {"role": "assistant", "content": "大" * 5_000}, "finish_reason": "stop"}]})
    with serve_stub("好的", faults=[Fault(status=200, body=huge, length_header=length_header)] * 2) as stub:
        error, usage, _ = ask(options(stub.url, tmp_path, max_reply_bytes=10_000, max_retries=1))
        assert isinstance(error, LLMError) and error.kind == "malformed"
        assert "over 10,000 bytes (max_reply_bytes)" in str(error)
        assert usage.faults == {"too_large": 2} and usage.failures == 1
        assert cached_rows(tmp_path) == []
        reply, usage, _ = ask(options(stub.url, tmp_path, max_reply_bytes=10_000))  # a small reply passes
    assert (reply.text, reply.cached, usage.faults) == ("好的", False, {})
    assert len(cached_rows(tmp_path)) == 1


def test_the_default_size_cap_takes_a_long_reply(tmp_path):
    with serve_stub(StubReply("长" * 200_000)) as stub:  # 600 kB of UTF-8
        reply, usage, _ = ask(options(stub.url, tmp_path))
    assert len(reply.text) == 200_000 and usage.faults == {}


def test_invalid_size_cap_and_timeout_are_reported():
    problems = LLMOptions(model="m", max_reply_bytes=0, timeout=float("nan")).problems()
    assert any("max_reply_bytes" in p for p in problems) and any("timeout" in p for p in problems)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-3", "1e400", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", ""])
def test_a_nonsense_retry_after_means_the_normal_backoff(tmp_path, value):
    with serve_stub("好的", faults=[Fault(429, retry_after=value)]) as stub:
        reply, usage, seconds = ask(options(stub.url, tmp_path))
    assert reply.text == "好的" and usage.retries == 1 and usage.faults == {"429": 1}
    assert seconds < 2  # the backoff waits at most 0.05 s; an obeyed "inf" would wait a minute


def test_retry_after_parsing():
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "1500"}) == 1.5
    assert _retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3.0
    for value in ("nan", "NaN", "inf", "-1", "", "soon", "1e400", "Mon, 99 Foo 2015 07:28:00 GMT"):
        assert _retry_after({"retry-after": value}) is None, value
        assert _retry_after({"retry-after-ms": value}) is None, value
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < _retry_after({"retry-after": future}) <= 30


def with_secrets(url: str) -> str:
    """`url` (http://127.0.0.1:PORT/v1) with a user:password."""
    return url.replace("http://", f"http://alice:{PASSWORD}@")


def assert_no_secret(tmp_path, caplog, capsys, *texts: str) -> None:
    logged = caplog.text + " ".join(repr(r.args) + str(r.msg) for r in caplog.records)
    out, err = capsys.readouterr()
    files = b"".join(f.read_bytes() for f in tmp_path.glob("llm.sqlite*"))
    for secret in (PASSWORD, QUERY_KEY):
        assert secret not in logged + out + err + " ".join(texts)
        assert secret.encode() not in files


def log_everything(caplog) -> None:
    """Capture every record, the HTTP libraries' too (`belle.cli.setup_logging`, run by earlier
    tests, raises their level to WARNING)."""
    caplog.set_level(logging.DEBUG)
    for name in HTTP_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)


def test_a_password_in_the_base_url_is_in_no_log_error_or_cache_row(tmp_path, caplog, capsys):
    log_everything(caplog)
    echo = json.dumps({"error": {"message": f"upstream http://alice:{PASSWORD}@10.0.0.1/v1 failed", "type": "server_error"}})
    with serve_stub("好的", faults=[Fault(500, body=echo)]) as stub:
        reply, usage, _ = ask(options(with_secrets(stub.url), tmp_path))
    assert reply.text == "好的" and usage.retries == 1
    assert stub.requests[0]["_path"] == "/v1/chat/completions"
    (_, request), = cached_rows(tmp_path)
    assert json.loads(request)["base_url"] == with_secrets(stub.url).replace(f"alice:{PASSWORD}", "***")
    assert any("***@127.0.0.1" in r.getMessage() for r in caplog.records)  # httpx's request line, redacted
    assert any("***@10.0.0.1" in r.getMessage() for r in caplog.records)  # the 500's echo, redacted
    assert_no_secret(tmp_path, caplog, capsys)


def test_the_cache_key_still_tells_two_passwords_apart(tmp_path):
    with serve_stub(["一", "二"]) as stub:
        first, _, _ = ask(options(stub.url.replace("http://", "http://a:pw-one@"), tmp_path))
        second, _, _ = ask(options(stub.url.replace("http://", "http://a:pw-two@"), tmp_path))
    assert (first.text, second.text, second.cached) == ("一", "二", False)


def test_an_api_key_in_the_query_echoed_by_a_404_is_redacted(tmp_path, caplog, capsys):
    log_everything(caplog)
    with serve_stub("好的") as stub:  # openai appends the path after the query: the stub answers 404 and quotes it
        error, _, _ = ask(options(f"{stub.url}?api-key={QUERY_KEY}", tmp_path))
    assert isinstance(error, LLMFatalError) and error.kind == "not_found"
    assert "api-key=***" in str(error)
    assert_no_secret(tmp_path, caplog, capsys, str(error))


def test_no_key_and_no_connection_name_the_url_without_its_secrets(tmp_path, caplog, capsys, monkeypatch):
    log_everything(caplog)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused, _, _ = ask(options(f"http://alice:{PASSWORD}@127.0.0.1:{port}/v1?token={QUERY_KEY}", tmp_path, max_retries=0))
    assert isinstance(refused, LLMError) and refused.kind == "connection"
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LLMFatalError) as no_key:
        LLMClient(options(f"https://alice:{PASSWORD}@api.example.com/v1?api-key={QUERY_KEY}", tmp_path))
    assert "https://***@api.example.com/v1?api-key=***" in str(no_key.value)
    assert_no_secret(tmp_path, caplog, capsys, str(refused), str(no_key.value))
