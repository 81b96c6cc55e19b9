"""belle.streaming: whole characters only, and stop strings that never leak, however the text is split."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from belle.streaming import REPLACEMENT_CHAR, IncrementalDecoder, StopMatcher, cut_at_stop, sse_data

CHINESE = "你好，世界！BELLE 是每个人的大语言模型引擎。😀 emoji too."


def byte_token_ids(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: the worst case, where every Chinese character spans three tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(byte_chars[b]) for b in text.encode("utf-8")]


def stream(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    deltas = [decoder.push(token) for token in ids]
    return [d for d in deltas + [decoder.flush()] if d]


def test_byte_tokens_never_emit_a_broken_character(tokenizer):
    ids = byte_token_ids(tokenizer, CHINESE)
    assert len(ids) > len(CHINESE)  # multi-byte characters really are split
    deltas = stream(IncrementalDecoder(tokenizer), ids)
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "".join(deltas) == CHINESE
    assert len(deltas) == len(CHINESE)  # one character at a time, none held longer than needed


def test_real_tokenization_streams_to_the_full_decode(tokenizer):
    text = "Human: \n请写一首关于春天的诗。\n\nAssistant: \n春风又绿江南岸，明月何时照我还。 Spring is here."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    deltas = stream(IncrementalDecoder(tokenizer), ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT_CHAR not in d for d in deltas)


def test_really_broken_bytes_are_flushed_at_the_end(tokenizer):
    ids = byte_token_ids(tokenizer, "好")[:2]  # a character cut short by the end of generation
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(t) for t in ids] == ["", ""]
    assert decoder.flush() == tokenizer.decode(ids)


def feed(stops: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    shown = []
    for delta in deltas:
        text, stopped = matcher.push(delta)
        shown.append(text)
        if stopped:
            return shown, True
    shown.append(matcher.flush())
    return shown, False


@pytest.mark.parametrize(
    "deltas, stops, expected, stopped",
    [
        (["你好", "\nHu", "man: 再见"], ["\nHuman:"], "你好", True),  # split across deltas
        (["你好\nHu", "go"], ["\nHuman:"], "你好\nHugo", False),  # a false start is released
        (["abc", "\nH"], ["\nHuman:"], "abc\nH", False),  # held back, then flushed at the end
        (["one ### two", " END"], ["END", "###"], "one ", True),  # the earliest stop wins
        (["STOP now"], ["STOP"], "", True),
        (["plain text"], [], "plain text", False),
    ],
)
def test_stop_strings(deltas, stops, expected, stopped):
    shown, was_stopped = feed(stops, deltas)
    assert "".join(shown) == expected
    assert was_stopped == stopped


def test_a_partial_stop_string_is_never_shown_early():
    matcher = StopMatcher(["</答案>"])
    assert matcher.push("结果是42</") == ("结果是42", False)
    assert matcher.push("答") == ("", False)
    assert matcher.push("案>后面") == ("", True)


def test_cut_at_stop():
    assert cut_at_stop("a\n\nHuman: b", ["\n\nHuman:", "b"]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_sse_data_reads_events_as_servers_send_them():
    lines = [": ping", "event: message", "id: 1", "retry: 100", 'data: {"a": 1}', "", "data:x", "data:  y", "",
             "", "data: [DONE]"]  # the last event with no blank line after it
    assert list(sse_data(lines)) == ['{"a": 1}', "x\n y", "[DONE]"]


@pytest.mark.parametrize("line", ["<html>", "garbage here", "{\"choices\": []}", "Data: x"])
def test_sse_data_refuses_a_line_of_no_event_field(line):
    events = sse_data(["data: first", "", line, "", "data: never"])
    assert next(events) == "first"
    with pytest.raises(ValueError, match="not a server-sent event"):
        next(events)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(exclude_characters="\r\n\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e"), min_size=1), max_size=8))
def test_sse_data_gives_back_each_event(datas):
    lines = [line for data in datas for line in (f"data: {data}", "")]
    assert list(sse_data(lines)) == datas
