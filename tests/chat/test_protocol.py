"""The OpenAI wire format on its own: which fields are refused, how messages are read, where a lone
surrogate sits, and the shape of replies and stream chunks (the server tests send them over HTTP)."""

import pytest
from pydantic import ValidationError

from belle.chat.protocol import (
    PROMPT_SHAPES,
    APIError,
    ChatRequest,
    CompletionRequest,
    LegacyLogprobs,
    Reply,
    chat_logprobs,
    error_body,
    lone_surrogate_at,
    plain_messages,
    refusal,
    usage,
)
from belle.generation import TokenLogprob

HI = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return ChatRequest(model="tiny", **{"messages": HI, **fields})


def completion(**fields):
    return CompletionRequest(model="tiny", **{"prompt": "hi", **fields})


def test_a_plain_request_asks_for_nothing_unsupported_and_keeps_unknown_fields():
    request = chat(user="someone", seed=3, n=2, logprobs=True, top_logprobs=20)
    assert request.unsupported() == []
    assert request.model_extra == {"user": "someone"}
    assert (request.seed, request.logprobs_wanted()) == (3, 20)
    assert completion().unsupported() == []


@pytest.mark.parametrize("fields, refused", [
    ({"frequency_penalty": 0.5}, ["frequency_penalty"]),
    ({"presence_penalty": 0.5, "frequency_penalty": 0.5}, ["presence_penalty"]),
    ({"logit_bias": {"42": 1.0}}, ["logit_bias"]),
    ({"tools": [{"type": "function"}]}, ["tools"]),
    ({"response_format": {"type": "json_object"}}, ["response_format"]),
    ({"logit_bias": {"1": 1.0}, "tools": [{}]}, ["logit_bias", "tools"]),
])
def test_chat_fields_that_would_change_the_result_are_refused_by_name(fields, refused):
    assert chat(**fields).unsupported() == refused


def test_a_text_response_format_and_empty_settings_are_accepted():
    assert chat(response_format={"type": "text"}, tools=[], logit_bias={}, logprobs=False, n=1).unsupported() == []


@pytest.mark.parametrize("fields, refused", [
    ({"suffix": "end"}, ["suffix"]),
    ({"best_of": 2}, ["best_of"]),
    ({"frequency_penalty": 1, "suffix": "x"}, ["frequency_penalty", "suffix"]),
])
def test_completion_fields_that_would_change_the_result_are_refused_by_name(fields, refused):
    assert completion(**fields).unsupported() == refused


def test_prompt_lists_echo_logprobs_n_and_best_of_n_are_accepted():
    assert completion(prompt=["a", "b"], best_of=3, n=3, echo=True, logprobs=5, max_tokens=0).unsupported() == []


@pytest.mark.parametrize("prompt, prompts, params", [
    ("你好", ["你好"], ["prompt"]),
    (["a", "b"], ["a", "b"], ["prompt.0", "prompt.1"]),
    ([5, 6, 7], [[5, 6, 7]], ["prompt"]),
    ([[5], [6, 7]], [[5], [6, 7]], ["prompt.0", "prompt.1"]),
])
def test_the_four_prompt_shapes(prompt, prompts, params):
    request = completion(prompt=prompt)
    assert request.prompts() == prompts
    assert [request.prompt_param(i) for i in range(len(prompts))] == params


@pytest.mark.parametrize("prompt, says", [
    (5, f"must be {PROMPT_SHAPES}, not an integer"),
    ({"text": "hi"}, "not an object"),
    (None, "not null"),
    ([1, "a"], "item 1 is a string after an integer"),
    (["a", ""], "item 1 is an empty string"),
    ([[1], []], "item 1 is an empty list of token ids"),
    ([[1, 2.5]], "item 0, position 1 is a number with a fraction, not a token id"),
    ([True], "item 0 is a boolean"),
    ([[1], 2], "item 1 is an integer after a list"),
])
def test_a_bad_prompt_is_described_in_plain_words(prompt, says):
    with pytest.raises(ValidationError) as caught:
        completion(prompt=prompt)
    error = caught.value.errors()[0]
    assert error["loc"] == ("prompt",) and says in str(error["ctx"]["error"])


def test_logprobs_settings():
    assert completion().logprobs_wanted() is None
    assert completion(logprobs=0).logprobs_wanted() == 0
    assert chat(logprobs=True).logprobs_wanted() == 0
    assert chat(logprobs=False).logprobs_wanted() is None
    with pytest.raises(APIError, match="top_logprobs: needs"):
        chat(top_logprobs=3).logprobs_wanted()
    for bad in ({"logprobs": 21}, {"logprobs": -1}):
        with pytest.raises(ValidationError):
            completion(**bad)
    with pytest.raises(ValidationError):
        chat(logprobs=True, top_logprobs=21)


def test_max_tokens_zero_is_a_completion_value_only():
    assert completion(max_tokens=0, echo=True).max_tokens == 0
    with pytest.raises(ValidationError):
        chat(max_tokens=0)


def test_a_json_response_format_is_refused_with_the_reason():
    error = refusal("response_format")
    assert error.status == 400 and error.param == "response_format"
    assert "constrained decoding" in error.message and "no maintained library" in error.message
    assert refusal("tools").message == "tools: not supported by this server"


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
    body = reply.whole([reply.choice(0, "北京", "stop", whole=True)], prompt_tokens=3, completion_tokens=2)
    assert reply.id.startswith("chatcmpl-") and body["id"] == reply.id
    assert (body["object"], body["model"], body["created"]) == ("chat.completion", "tiny", reply.created)
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "北京"}}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_whole_replies_list_choices_by_index():
    reply = Reply("tiny", chat=False)
    body = reply.whole([reply.choice(i, str(i), "length") for i in (2, 0, 1)], 1, 3)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]


def test_chat_stream_chunks_carry_the_role_first_then_only_deltas():
    reply = Reply("tiny", chat=True)
    first, middle, last = (reply.chunk(reply.choice(0, "", first=True)), reply.chunk(reply.choice(0, "京")),
                           reply.chunk(reply.choice(0, None, "length")))
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
    whole = reply.whole([reply.choice(0, "abc", "stop")], 1, 3)
    assert whole["object"] == "text_completion"
    assert whole["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "text": "abc"}]
    assert reply.chunk(reply.choice(1, None, "stop"))["choices"][0] == {"index": 1, "logprobs": None, "finish_reason": "stop", "text": ""}
    assert reply.usage_chunk(1, 3)["object"] == "text_completion"


def test_each_reply_has_its_own_id():
    assert Reply("tiny", chat=True).id != Reply("tiny", chat=True).id


TOP = ((7, "京", -0.5), (8, "北", -1.5))


def test_chat_logprobs_have_openai_s_content_shape():
    entries = chat_logprobs([TokenLogprob(7, "京", -0.5, TOP), TokenLogprob(9, "!", -3.0)])
    assert entries == [
        {"token": "京", "logprob": -0.5, "bytes": [228, 186, 172], "top_logprobs": [
            {"token": "京", "logprob": -0.5, "bytes": [228, 186, 172]}, {"token": "北", "logprob": -1.5, "bytes": [229, 140, 151]}]},
        {"token": "!", "logprob": -3.0, "bytes": [33], "top_logprobs": []},
    ]
    reply = Reply("tiny", chat=True)
    assert reply.choice(0, "京", logprobs=entries[:1])["logprobs"] == {"content": entries[:1]}


def test_legacy_logprobs_put_the_prompt_first_and_count_offsets_in_characters():
    legacy = LegacyLogprobs()
    legacy.add_prompt(["北", "京"], [None, TokenLogprob(7, "京", -0.5, TOP)])
    first = legacy.take()
    assert first == {"tokens": ["北", "京"], "token_logprobs": [None, -0.5], "top_logprobs": [None, {"京": -0.5, "北": -1.5}],
                     "text_offset": [0, 1]}
    legacy.add_generated([TokenLogprob(9, "ab", -2.0, ((9, "x", -1.0), (10, "x", -1.2)))])
    assert legacy.take() == {"tokens": ["ab"], "token_logprobs": [-2.0], "top_logprobs": [{"x": -1.0, "ab": -2.0}], "text_offset": [2]}
    assert legacy.take() == {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
