"""`belle serve` against hostile requests: bodies too large (declared or chunked), requests without
the key, broken encodings, absurd numbers, lone surrogates, empty and enormous prompts, unknown
routes, and field names made to forge log lines. Each gets a 4xx with OpenAI's error body, before
the server spends time on it, and the server goes on serving."""

import asyncio
import http.client
import json
import logging
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from belle.chat import serve
from belle.chat.protocol import APIError
from belle.chat.server import Admission, create_app, loggable
from tests.chat.conftest import start_cli

KEY = "sk-hostile-0123456789"
LIMIT = 32 * 1024  # --max-request-bytes of the real server below
QUESTION = [{"role": "user", "content": "你好"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def app(tiny_engine):
    """The app in-process, default limits (4 MB bodies), no key; a 500 is returned, not raised."""
    with TestClient(create_app({"tiny": tiny_engine}), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_app(tiny_engine):
    with TestClient(create_app({"tiny": tiny_engine}, api_key=KEY), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """`belle serve` under uvicorn, with a key and a 32 KiB body limit."""
    args = ("serve", "--model", f"tiny={tiny_model_dir}", "--max-request-bytes", str(LIMIT))
    with start_cli(*args, ready="/health", env={"BELLE_API_KEY": KEY}) as running:
        yield running


def assert_openai_error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def chat(content='"hi"', **fields):
    """A chat request body as bytes; `content` and field values are raw JSON text."""
    extra = "".join(f', "{name}": {value}' for name, value in fields.items())
    return f'{{"model": "tiny", "max_tokens": 2, "messages": [{{"role": "user", "content": {content}}}]{extra}}}'.encode()


def completion(prompt='"hi"', **fields):
    extra = "".join(f', "{name}": {value}' for name, value in fields.items())
    return f'{{"model": "tiny", "max_tokens": 2, "prompt": {prompt}{extra}}}'.encode()


HOSTILE = [
    # (name, path, raw body, status, what the message mentions)
    ("lone surrogate in a message", "/v1/chat/completions", chat(r'"a\ud800b"'), 400, "surrogate"),
    ("lone surrogate in a content part", "/v1/chat/completions",
     chat(r'[{"type": "text", "text": "\udfff"}]'), 400, "surrogate"),
    ("lone surrogate in the prompt", "/v1/completions", completion(r'"\ud800"'), 400, "surrogate"),
    ("lone surrogate in a stop string", "/v1/completions", completion(stop=r'["\ud800"]'), 400, "surrogate"),
    ("lone surrogate as a dict key", "/v1/chat/completions", chat(logit_bias=r'{"\ud800": "x"}'), 400, "logit_bias"),
    ("surrogate encoded as UTF-8 bytes", "/v1/chat/completions", chat('"ok"').replace(b"ok", b"\xed\xa0\x80"), 400, "surrogate"),
    ("invalid UTF-8", "/v1/chat/completions", chat('"ok"').replace(b"ok", b"\xff\xfe"), 400, "UTF-8"),
    ("empty prompt", "/v1/completions", completion('""'), 400, "empty"),
    ("empty prompt list", "/v1/completions", completion("[]"), 400, "empty"),
    ("prompt list of one empty string", "/v1/completions", completion('[""]'), 400, "empty"),
    ("max_tokens 10**400", "/v1/chat/completions", chat(max_tokens="1" + "0" * 400), 400, "max_tokens"),
    ("top_k 10**400", "/v1/chat/completions", chat(top_k="1" + "0" * 400), 400, "top_k"),
    ("an integer of 5,000 digits", "/v1/chat/completions", chat(top_k="1" * 5000), 400, "JSON"),
    ("temperature NaN", "/v1/chat/completions", chat(temperature="NaN"), 400, "temperature"),
    ("repetition_penalty Infinity", "/v1/chat/completions", chat(repetition_penalty="Infinity"), 400, "repetition_penalty"),
    ("invalid JSON", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("JSON nested 100,000 deep", "/v1/chat/completions", b"[" * 100_000, 400, "nested"),
    ("a JSON array instead of an object", "/v1/chat/completions", b"[]", 400, "JSON object"),
]


@pytest.mark.parametrize("name, path, body, status, mentions", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_bodies_get_an_openai_error(app, name, path, body, status, mentions):
    error = assert_openai_error(app.post(path, content=body, headers=JSON), status)
    assert error["type"] == "invalid_request_error"
    assert mentions in error["message"] + str(error["param"])
    assert app.get("/health").json()["status"] == "ok"


def test_unknown_routes_and_methods_get_an_openai_error(app):
    error = assert_openai_error(app.post("/v1/embeddings", json={}), 404)
    assert "/v1/embeddings" in error["message"]
    response = app.get("/v1/chat/completions")
    error = assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST" and "POST" in error["message"]


def test_a_form_body_gets_an_openai_error(app):
    response = app.post("/v1/chat/completions", content=b"model=tiny", headers={"content-type": "application/x-www-form-urlencoded"})
    assert "Content-Type: application/json" in assert_openai_error(response, 400)["message"]


def test_the_key_is_checked_before_the_body_is_parsed(keyed_app):
    error = assert_openai_error(keyed_app.post("/v1/chat/completions", content=b"{not json", headers=JSON), 401)
    assert error["code"] == "invalid_api_key"
    assert_openai_error(keyed_app.post("/v1/embeddings", content=b"{}", headers=JSON), 401)
    assert keyed_app.get("/health").status_code == 200
    good = keyed_app.post("/v1/chat/completions", content=b"{not json", headers={**JSON, "authorization": f"Bearer {KEY}"})
    assert "not valid JSON" in assert_openai_error(good, 400)["message"]


def spy_on(monkeypatch, engine, method):
    """Record the length of every text `engine.method` is asked to encode."""
    seen = []
    real = getattr(engine, method)

    def spy(value):
        seen.append(len(value) if isinstance(value, str) else sum(len(m["content"]) for m in value))
        return real(value)

    monkeypatch.setattr(engine, method, spy)
    return seen


@pytest.mark.parametrize("route, method", [("/v1/completions", "encode_text"), ("/v1/chat/completions", "encode_chat")])
def test_a_huge_prompt_is_refused_without_tokenizing_it(app, tiny_engine, monkeypatch, route, method):
    seen = spy_on(monkeypatch, tiny_engine, method)
    huge = json.dumps("北京 " * 300_000, ensure_ascii=False)  # 900,000 characters, 2.1 MB: under the body limit
    body = completion(huge) if method == "encode_text" else chat(huge)
    error = assert_openai_error(app.post(route, content=body, headers=JSON), 400)
    assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
    assert seen == []


def test_more_messages_than_tokens_are_refused_without_tokenizing(app, tiny_engine, monkeypatch):
    seen = spy_on(monkeypatch, tiny_engine, "encode_chat")
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 1024 + [{"role": "user", "content": "a"}]
    error = assert_openai_error(app.post("/v1/chat/completions", json={"model": "tiny", "messages": turns}), 400)
    assert error["code"] == "context_length_exceeded" and "2049 messages" in error["message"]
    assert seen == []


def test_a_prompt_just_over_the_limit_gets_the_exact_count(app, tiny_engine):
    prompt = "北京 " * 3000
    error = assert_openai_error(app.post("/v1/completions", content=completion(json.dumps(prompt)), headers=JSON), 400)
    tokens = len(tiny_engine.encode_text(prompt))
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert f"the prompt has {tokens} tokens" in error["message"]


def test_request_text_cannot_forge_log_lines(app, caplog):
    caplog.set_level(logging.INFO)
    body = chat(**{"x\\nERROR forged line\\u001b[31m\\u2028": 1})
    assert app.post("/v1/chat/completions", content=body, headers=JSON).status_code == 200
    logged = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0] and "\x1b" not in logged[0] and "\u2028" not in logged[0]
    assert r"x\nERROR forged line\x1b[31m\u2028" in logged[0]


def test_a_fault_is_logged_on_escaped_lines(app, tiny_engine, monkeypatch, caplog):
    def broken(text):
        raise RuntimeError(f"cannot encode {text}")

    monkeypatch.setattr(tiny_engine, "encode_text", broken)
    error = assert_openai_error(app.post("/v1/completions", content=completion('"a\\nERROR forged"'), headers=JSON), 500)
    assert error["type"] == "server_error"
    assert "\nERROR forged" not in caplog.text and r"a\nERROR forged" in caplog.text


def test_loggable():
    assert loggable("plain 中文 text") == "plain 中文 text"
    assert loggable("a\nb\r\x1b[2J\x00\u2028\ud800\t") == r"a\nb\r\x1b[2J\x00\u2028\ud800\t"
    assert loggable("x" * 1000, limit=10) == "x" * 10 + "... (990 more characters)"


# Through uvicorn: the limit must hold before the body is read, whatever the client declares.


def raw_connection(server, timeout=20):
    parts = urlsplit(server.url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


@pytest.mark.slow
def test_a_huge_declared_body_is_refused_before_it_is_read(server):
    connection = raw_connection(server)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in {**JSON, "Authorization": f"Bearer {KEY}", "Content-Length": str(10**12)}.items():
        connection.putheader(name, value)
    connection.endheaders()  # and not one byte of the terabyte
    response = connection.getresponse()
    assert response.status == 413
    error = json.loads(response.read())["error"]
    assert f"{LIMIT} bytes" in error["message"] and "--max-request-bytes" in error["message"]


@pytest.mark.slow
def test_the_key_is_checked_before_the_size(server):
    connection = raw_connection(server)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Length", str(10**12))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 401 and json.loads(response.read())["error"]["code"] == "invalid_api_key"


@pytest.mark.slow
def test_a_chunked_body_is_cut_at_the_limit(server):
    connection = raw_connection(server)
    connection.putrequest("POST", "/v1/chat/completions")
    for name, value in {**JSON, "Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    piece = b"[" * 4096
    for _ in range(LIMIT // len(piece) + 2):  # past the limit, and then the client just waits
        connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    try:
        response = connection.getresponse()
    except socket.timeout:
        pytest.fail("the server waited for the rest of a body already over its limit")
    assert response.status == 413
    assert "--max-request-bytes" in json.loads(response.read())["error"]["message"]


def api(server, key=KEY):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.mark.slow
def test_openai_client_still_works_and_gets_our_errors(server):
    reply = api(server).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens <= 4 and reply.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError, match="prompt: must not be empty") as caught:
        api(server).completions.create(model="tiny", prompt="", max_tokens=4)
    assert caught.value.body["param"] == "prompt"
    with pytest.raises(openai.APIStatusError) as caught:
        api(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "长" * LIMIT}])
    assert caught.value.status_code == 413 and "--max-request-bytes" in caught.value.message


@pytest.mark.slow
def test_the_server_log_gets_no_forged_lines(server):
    body = chat(**{"x\\nINFO forged: by a client": 1})
    httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={**JSON, "authorization": f"Bearer {KEY}"}, timeout=60)
    log = server.log.read_text(encoding="utf-8")
    assert r"x\nINFO forged" in log
    assert not any(line.startswith("INFO forged") for line in log.splitlines())


def test_serve_help_and_a_bad_limit(capsys, tiny_model_dir):
    with pytest.raises(SystemExit):
        serve.main(["--help"])
    assert "--max-request-bytes" in capsys.readouterr().out
    assert serve.main(["--model", str(tiny_model_dir), "--max-request-bytes", "0"]) == 2
    assert "--max-request-bytes" in capsys.readouterr().err


# Prompts in every shape lm-evaluation-harness sends, and what is wrong with them, in plain words.

BAD_PROMPTS = [
    ({"x": 1}, "prompt: must be a string, a list of strings, a list of token ids, or a list of lists of token ids, not an object"),
    ([1, "a"], "prompt: item 1 is a string after an integer"),
    ([[1, 2], [3, None]], "prompt: item 1, position 1 is null, not a token id"),
    ([[]], "prompt: item 0 is an empty list of token ids"),
]


@pytest.mark.parametrize("prompt, message", BAD_PROMPTS)
def test_a_bad_prompt_gets_a_plain_message(app, prompt, message):
    error = assert_openai_error(app.post("/v1/completions", json={"model": "tiny", "prompt": prompt}), 400)
    assert error["message"].startswith(message) and error["param"] == "prompt"
    assert "Input should" not in error["message"] and "prompt.str" not in error["message"]


@pytest.mark.parametrize("prompt, param, token", [
    ([5, 10**6], "prompt.1", 10**6),
    ([[5, 6], [7, -1]], "prompt.1.1", -1),
    ([[5], [2**70]], "prompt.1.0", 2**70),
])
def test_a_token_id_outside_the_vocabulary_is_named_by_its_index(app, tiny_engine, prompt, param, token):
    error = assert_openai_error(app.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 1}), 400)
    assert error["param"] == param
    assert error["message"] == f"{param}: token id {token} is not in the vocabulary (ids 0 to {len(tiny_engine.tokenizer) - 1})"


def test_too_many_token_ids_are_refused_with_the_count(app):
    error = assert_openai_error(app.post("/v1/completions", json={"model": "tiny", "prompt": [[5] * 2048]}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt.0" and "2048 tokens" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "n": 33}, "n"),
    ({"prompt": ["hi"] * 17, "n": 2}, "prompt"),
    ({"prompt": [[5]] * 33}, "prompt"),
])
def test_a_request_with_more_choices_than_slots_is_refused(app, body, param):
    error = assert_openai_error(app.post("/v1/completions", json={"model": "tiny", "max_tokens": 1, **body}), 400)
    assert error["param"] == param and "at most 32 at once (--max-concurrent)" in error["message"]


@pytest.mark.parametrize("route, body, mentions", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "only with echo"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 2}, "top_logprobs: needs"),
    ("/v1/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": QUESTION, "seed": 2**63}, "seed"),
    ("/v1/chat/completions", {"messages": QUESTION, "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {}}},
     "constrained decoding"),
])
def test_bad_sampling_fields_are_refused_by_name(app, route, body, mentions):
    error = assert_openai_error(app.post(route, json={"model": "tiny", **body}), 400)
    assert mentions in error["message"] + str(error["param"])


def test_one_model_and_an_unknown_one(app):
    listed = app.get("/v1/models").json()["data"][0]
    assert app.get("/v1/models/tiny").json() == listed
    assert abs(listed["created"] - time.time()) < 3600
    error = assert_openai_error(app.get("/v1/models/gpt-4"), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model") and "tiny" in error["message"]


ORIGIN = "https://app.example.com"
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}


@pytest.fixture(scope="module")
def cors_app(tiny_engine):
    app = create_app({"tiny": tiny_engine}, api_key=KEY, cors_origins=[ORIGIN])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_cors_preflight_needs_no_key_but_the_request_does(cors_app):
    preflight = cors_app.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = cors_app.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION}, headers={"origin": ORIGIN})
    assert assert_openai_error(refused, 401)["code"] == "invalid_api_key"
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # so the page can read why
    answered = cors_app.get("/v1/models", headers={"origin": ORIGIN, "authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == ORIGIN


def test_cors_is_off_by_default_and_other_origins_get_no_grant(app, cors_app):
    assert_openai_error(app.options("/v1/chat/completions", headers=PREFLIGHT), 405)
    assert "access-control-allow-origin" not in app.get("/v1/models", headers={"origin": ORIGIN}).headers
    other = cors_app.options("/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_serve_refuses_a_cors_origin_that_is_not_one(capsys, tiny_model_dir):
    assert serve.main(["--model", str(tiny_model_dir), "--cors-origin", "app.example.com"]) == 2
    assert "--cors-origin must be * or an origin" in capsys.readouterr().err


def test_admission_takes_all_of_a_request_s_slots_at_once_first_come_first_served():
    async def scenario():
        admission = Admission(max_running=4, max_waiting=2)
        await admission.enter(3)
        big = asyncio.create_task(admission.enter(4))  # waits for all four
        await asyncio.sleep(0)
        small = asyncio.create_task(admission.enter(1))  # would fit now, but waits its turn behind `big`
        await asyncio.sleep(0)
        assert (admission.running, admission.waiting) == (3, 2)
        with pytest.raises(APIError) as caught:
            await admission.enter(1)
        assert caught.value.status == 429
        admission.leave(3)
        await big
        assert (admission.running, admission.waiting, small.done()) == (4, 1, False)
        admission.leave(4)
        await small
        assert (admission.running, admission.waiting) == (1, 0)
        waiting = asyncio.create_task(admission.enter(4))
        await asyncio.sleep(0)
        waiting.cancel()  # a client that leaves the line gives its place up
        with pytest.raises(asyncio.CancelledError):
            await waiting
        admission.leave(1)
        assert (admission.running, admission.waiting) == (0, 0)

    asyncio.run(scenario())
