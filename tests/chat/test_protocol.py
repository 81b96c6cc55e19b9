"""The OpenAI wire format on its own: which fields are refused, how messages are read, where a lone
surrogate sits, and the shape of replies and stream chunks (the server tests send them over HTTP)."""

import pytest
from pydantic import ValidationError

from belle.chat.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Reply,
    error_body,
    lone_surrogate_at,
    plain_messages,
    usage,
)

HI = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return ChatRequest(model="tiny", **{"messages": HI, **fields})


def completion(**fields):
    return CompletionRequest(model="tiny", **{"prompt": "hi", **fields})


def test_a_plain_request_asks_for_nothing_unsupported_and_keeps_unknown_fields():
    request = chat(user="someone", seed=3)
    assert request.unsupported() == []
    assert request.model_extra == {"user": "someone", "seed": 3}
    assert completion().unsupported() == []


@pytest.mark.parametrize("fields, refused", [
    ({"frequency_penalty": 0.5}, ["frequency_penalty"]),
    ({"presence_penalty": 0.5, "frequency_penalty": 0.5}, ["presence_penalty"]),
    ({"logit_bias": {"42": 1.0}}, ["logit_bias"]),
    ({"logprobs": 3}, ["logprobs"]),
    ({"tools": [{"type": "function"}]}, ["tools"]),
    ({"response_format": {"type": "json_object"}}, ["response_format"]),
    ({"n": 2, "tools": [{}]}, ["n", "tools"]),
])
def test_chat_fields_that_would_change_the_result_are_refused_by_name(fields, refused):
    assert chat(**fields).unsupported() == refused


def test_a_text_response_format_and_empty_settings_are_accepted():
    assert chat(response_format={"type": "text"}, tools=[], logit_bias={}, logprobs=False, n=1).unsupported() == []


@pytest.mark.parametrize("fields, refused", [
    ({"echo": True}, ["echo"]),
    ({"suffix": "end"}, ["suffix"]),
    ({"best_of": 2}, ["best_of"]),
    ({"prompt": ["a", "b"]}, ["prompt"]),
    ({"n": 3, "echo": True}, ["n", "echo"]),
])
def test_completion_fields_that_would_change_the_result_are_refused_by_name(fields, refused):
    assert completion(**fields).unsupported() == refused


def test_a_one_prompt_list_and_best_of_one_are_accepted():
    assert completion(prompt=["a"], best_of=1).unsupported() == []


@pytest.mark.parametrize("fields, field", [
    ({"top_k": -1}, "top_k"),
    ({"min_tokens": 2**31}, "min_tokens"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"temperature": float("inf")}, "temperature"),
    ({"messages": [{"role": "user"}]}, "messages"),
])
def test_out_of_range_values_are_validation_errors_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    assert caught.value.errors()[0]["loc"][0] == field


def test_plain_messages_joins_text_parts_and_reads_developer_as_system():
    request = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "你好，"}, {"type": "text", "text": "world"}]},
        {"role": "assistant", "content": ""},
    ])
    assert plain_messages(request.messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "你好，world"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize("part", [{"type": "image_url"}, {"type": "text"}])
def test_a_part_that_is_not_text_is_a_400_naming_the_message(part):
    request = chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": [part]}])
    with pytest.raises(APIError) as caught:
        plain_messages(request.messages)
    error = caught.value
    assert (error.status, error.param, error.message) == (400, "messages.1.content", "messages[1]: only text content is supported")


@pytest.mark.parametrize("value, where", [
    ("clean 😀 text", None),
    ({"messages": [{"role": "user", "content": "ok"}, {"content": "a\ud800"}]}, "messages.1.content"),
    ({"stop": ["fine", "\udfff"]}, "stop.1"),
    ({"logit_bias": {"\ud800": 1}}, "logit_bias"),
    ({"\ud800": 1}, "body"),
    (["\ud800"], "0"),
    ({"n": 1, "ok": [True, None, 2.5]}, None),
])
def test_lone_surrogate_at_names_the_first_dotted_path(value, where):
    assert lone_surrogate_at(value) == where


def test_api_errors_and_bodies_have_openai_s_four_fields():
    error = APIError(404, "no such model", param="model", code="model_not_found")
    assert str(error) == "no such model"
    assert error.body() == {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"}}
    assert error_body("boom", "server_error") == {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}


def test_usage_adds_up():
    assert usage(7, 5) == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_a_whole_chat_reply():
    reply = Reply("tiny", chat=True)
    body = reply.whole("北京", "stop", prompt_tokens=3, completion_tokens=2)
    assert reply.id.startswith("chatcmpl-") and body["id"] == reply.id
    assert (body["object"], body["model"], body["created"]) == ("chat.completion", "tiny", reply.created)
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "北京"}}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_chat_stream_chunks_carry_the_role_first_then_only_deltas():
    reply = Reply("tiny", chat=True)
    first, middle, last = reply.chunk("", first=True), reply.chunk("京"), reply.chunk(None, "length")
    assert {first["object"], middle["object"], last["object"]} == {"chat.completion.chunk"}
    assert {first["id"], middle["id"], last["id"]} == {reply.id}
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": None, "delta": {"content": "京"}}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in middle
    assert reply.usage_chunk(3, 1) == {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                                       "model": "tiny", "choices": [],
                                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_completion_replies_carry_text_never_none():
    reply = Reply("tiny", chat=False)
    assert reply.id.startswith("cmpl-")
    whole = reply.whole("abc", "stop", 1, 3)
    assert whole["object"] == "text_completion"
    assert whole["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "text": "abc"}]
    assert reply.chunk(None, "stop")["choices"][0]["text"] == ""
    assert reply.usage_chunk(1, 3)["object"] == "text_completion"


def test_each_reply_has_its_own_id():
    assert Reply("tiny", chat=True).id != Reply("tiny", chat=True).id
