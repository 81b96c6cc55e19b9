"""The two `ChatBackend`s in process: `LocalBackend` over a fake engine, `RemoteBackend` against the
scripted OpenAI stub (listing, streaming, retries before the first byte and none after, batch
completion with skips, a fatal error, no key for a remote server)."""

import pytest

from belle.chat.backends import BackendError, LocalBackend, RemoteBackend, ReplyCut, chat_options
from belle.generation import Completion, GenerationParams, PromptTooLong
from belle.llm import LLMFatalError, LLMOptions
from belle.testing.openai_stub import Fault, serve_stub
from tests.helpers import FakeStream

PARAMS = GenerationParams(temperature=0.5, top_p=0.9, top_k=20, repetition_penalty=1.1, max_new_tokens=16, stop=("。",))
TOO_LONG = "太长" * 50


class FakeEngine:
    """Counts a prompt as its characters; replies "答N" to the N-th conversation of a batch."""

    name, context_length = "fake", 64

    def __init__(self):
        self.streams, self.batches = [], []

    def encode_chat(self, messages):
        return [0] * sum(len(m["content"]) for m in messages)

    def fit_chat(self, messages, max_new_tokens):
        ids = self.encode_chat(messages)
        if len(ids) + max_new_tokens > self.context_length:
            raise PromptTooLong(len(ids), self.context_length, max_new_tokens)
        return ids, 0

    def generate_batch(self, prompts, params):
        self.batches.append(prompts)
        return [Completion(f"答{i}", "stop", len(ids), 2) for i, ids in enumerate(prompts)]

    def chat(self, messages, params):
        self.streams.append(FakeStream("你好"))
        return self.streams[-1]


def user(text):
    return [{"role": "user", "content": text}]


def test_local_backend_batches_what_fits_and_says_why_the_rest_does_not():
    engine = FakeEngine()
    backend = LocalBackend({"fake": engine})
    assert backend.names == ["fake"] and backend.context_length == 64
    outcomes = backend.complete("fake", [user("一"), user(TOO_LONG), user("三")], PARAMS)
    assert outcomes[0] == Completion("答0", "stop", 1, 2) and outcomes[2] == Completion("答1", "stop", 1, 2)
    assert "exceed the model's 64-token context" in outcomes[1]
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 2
    assert backend.prompt_tokens("fake", user("一二三")) == 3


def test_local_backend_stream_cancels_the_generation_when_closed():
    engine = FakeEngine()
    stream = LocalBackend({"fake": engine}).stream("fake", user("你好"), PARAMS)
    assert next(stream) == "你"
    stream.close()
    assert engine.streams[0].cancelled


def test_remote_backend_lists_streams_and_sends_the_sampling():
    with serve_stub("好的") as stub:
        backend = RemoteBackend(chat_options(stub.url))
        try:
            assert backend.names == ["stub-model"] and backend.context_length is None
            assert list(backend.stream("stub-model", user("你好"), PARAMS)) == ["好", "的"]
        finally:
            backend.close()
    sent = stub.requests[0]
    assert sent["stream"] is True and sent["model"] == "stub-model" and sent["messages"] == user("你好")
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["repetition_penalty"], sent["max_tokens"],
            sent["stop"]) == (0.5, 0.9, 20, 1.1, 16, ["。"])


def test_remote_stream_retries_before_the_first_byte_and_not_after():
    with serve_stub(["好的"], faults=[Fault(503, retry_after=0), Fault(cut=True, body="半句")]) as stub:
        backend = RemoteBackend(chat_options(stub.url), names=["m"])
        try:
            stream = backend.stream("m", user("一"), PARAMS)
            assert next(stream) == "半"  # the 503 was retried; the cut after the first byte is not
            with pytest.raises(ReplyCut, match="the connection closed before the end"):
                list(stream)
            assert list(backend.stream("m", user("二"), PARAMS)) == ["好", "的"]
        finally:
            backend.close()
    assert stub.calls == 3


def test_remote_stream_errors_are_one_line_backend_errors():
    with serve_stub("好", faults=[Fault(400)]) as stub:
        backend = RemoteBackend(chat_options(stub.url), names=["m"])
        with pytest.raises(BackendError, match="^HTTP 400: scripted fault$"):
            list(backend.stream("m", user("一"), PARAMS))
        backend.close()


def test_remote_complete_skips_a_failed_request_and_stops_at_a_fatal_one():
    options = LLMOptions(model="m", base_url="", cache="off", concurrency=1, max_retries=0)
    with serve_stub("答", faults=[Fault(500)]) as stub:
        backend = RemoteBackend(LLMOptions(**{**options.__dict__, "base_url": stub.url}), names=["m"])
        try:
            failed, answered = backend.complete("m", [user("一"), user("二")], PARAMS)
        finally:
            backend.close()
    assert "HTTP 500" in failed and answered == Completion("答", "stop", 1, 1)
    with serve_stub("答", faults=[Fault(401)]) as stub:
        backend = RemoteBackend(LLMOptions(**{**options.__dict__, "base_url": stub.url}), names=["m"])
        try:
            with pytest.raises(LLMFatalError, match="refused the key"):
                backend.complete("m", [user("一"), user("二")], PARAMS)
        finally:
            backend.close()


def test_no_key_for_a_remote_server_is_a_backend_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(BackendError, match="no API key for https://models.example/v1"):
        RemoteBackend(chat_options("https://models.example/v1", "NO_SUCH_KEY_VAR"))
