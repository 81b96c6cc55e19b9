"""GPTQ calibration windows: conversations rendered with the model's template, plain text, and the
errors for files that are missing, of an unknown kind, or too short."""

from pathlib import Path

import pytest

from belle.cli import UsageError
from belle.gptq.calibration import calibration_samples, token_stream
from belle.models.tiny import tiny_corpus_text
from belle.templates import get_template

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
CONVERSATIONS = SAMPLES / "belle_conversations.jsonl"


@pytest.fixture(scope="module")
def corpus_txt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "corpus.txt"
    path.write_text(tiny_corpus_text(), encoding="utf-8")
    return path


def stream_of(samples) -> list[int]:
    return [token for sample in samples for token in sample["input_ids"]]


def test_text_file_gives_nsamples_windows_of_seqlen_tokens(corpus_txt, tokenizer):
    samples = calibration_samples([corpus_txt], tokenizer, None, nsamples=8, seqlen=64)
    assert len(samples) == 8
    for sample in samples:
        assert len(sample["input_ids"]) == 64
        assert sample["attention_mask"] == [1] * 64
    ids = tokenizer(tiny_corpus_text(), add_special_tokens=False)["input_ids"]
    text = " ".join(map(str, ids))
    assert all(" ".join(map(str, s["input_ids"])) in text for s in samples)  # cut from the file's own tokens


def test_windows_are_distinct_and_the_seed_picks_them(corpus_txt, tokenizer):
    def draw(seed):
        samples = calibration_samples([corpus_txt], tokenizer, None, nsamples=16, seqlen=64, seed=seed)
        return [tuple(s["input_ids"]) for s in samples]

    assert len(set(draw(0))) == 16
    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_conversations_are_rendered_with_the_models_template(tokenizer):
    belle = calibration_samples([CONVERSATIONS], tokenizer, get_template("belle"), nsamples=4, seqlen=256)
    text = tokenizer.decode(stream_of(belle))
    assert "Human: \n" in text and "\n\nAssistant: \n" in text
    assert tokenizer.eos_token_id in stream_of(belle)  # after each reply, as in training
    chatml = calibration_samples([CONVERSATIONS], tokenizer, get_template("chatml"), nsamples=4, seqlen=256)
    text = tokenizer.decode(stream_of(chatml))
    assert "<|im_start|>user\n" in text and "<|im_start|>assistant\n" in text and "Human:" not in text


def test_conversation_and_text_files_are_read_one_after_another(corpus_txt, tokenizer):
    belle = get_template("belle")
    stream, counts = token_stream([CONVERSATIONS, corpus_txt], tokenizer, belle)
    conversations, _ = token_stream([CONVERSATIONS], tokenizer, belle)
    text, _ = token_stream([corpus_txt], tokenizer, belle)
    assert stream == conversations + text and counts == [len(conversations), len(text)]
    assert text[-1] == tokenizer.eos_token_id
    samples = calibration_samples([CONVERSATIONS, corpus_txt], tokenizer, belle, nsamples=len(stream) // 64, seqlen=64)
    assert stream_of(samples) == stream[: len(stream) // 64 * 64]  # every window, in order


def test_too_little_text_names_each_file_and_what_is_needed(corpus_txt, tokenizer):
    with pytest.raises(UsageError) as error:
        calibration_samples([corpus_txt, CONVERSATIONS], tokenizer, get_template("belle"), nsamples=128, seqlen=2048)
    message = str(error.value)
    assert "too little calibration text" in message
    assert str(corpus_txt) in message and str(CONVERSATIONS) in message
    assert "262,144" in message and "--nsamples" in message


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing.txt", None, "no such file"),
    ("missing.jsonl", None, "no such file"),
    ("notes.csv", "a,b\n", "calibration files are conversations"),
    ("empty.txt", "  \n", "no calibration text"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "UTF-8"),
    ("bad.jsonl", '{"nothing": 1}\n', "no calibration text"),
])
def test_unusable_files_are_named(tmp_path, tokenizer, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=expected) as error:
        calibration_samples([path], tokenizer, get_template("belle"), nsamples=1, seqlen=16)
    assert str(path) in str(error.value)


def test_conversations_need_a_template(tokenizer):
    with pytest.raises(UsageError, match="--template"):
        calibration_samples([CONVERSATIONS], tokenizer, None, nsamples=1, seqlen=16)
