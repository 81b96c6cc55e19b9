"""A LLaMA-shaped SentencePiece tokenizer (Metaspace `▁`, byte fallback, BOS added, no pad) through
belle: pad handling, left-padded and streamed generation that stops at `</s>` and at stop strings,
and which tokens a server that applies the saved chat_template feeds the model."""

import copy
import dataclasses

import pytest

from belle.conversation import read_conversations
from belle.generation import GenerationParams, load_engine
from belle.streaming import IncrementalDecoder
from belle.templates import get_template, render_pieces
from belle.tokenization import IGNORE_INDEX, collate, encode_batch, encode_prompt

BELLE = get_template("belle")
GREEDY = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
TRICKY_TEXTS = ["  two leading spaces", "龘🦄 rare", " 世界  double  spaces ", "\n\n好的，🙂", "ok 🦄🦄"]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    from belle.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("sp") / "model", tokenizer_kind="sentencepiece")


@pytest.fixture(scope="module")
def sp_engine(sp_dir):
    return load_engine(sp_dir, device="cpu", batching=False)  # `scripted` copies its model and biases generate


@pytest.fixture(scope="module")
def sample_histories():
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    return [c.messages for name in ("belle_conversations.jsonl", "multiturn_chat.jsonl")
            for c in read_conversations(samples / name, policy="strict")]


def scripted(engine, prompt_ids: list[int], reply_ids: list[int]):
    """A copy of `engine` whose model, decoding greedily after `prompt_ids`, generates `reply_ids`.

    Each scripted token gets a logit bias once all of the script before it has been generated; the
    bias grows with the script position, so the longest matching prefix always wins."""
    model = copy.deepcopy(engine.model)
    context = prompt_ids[-1:]
    model.generation_config.sequence_bias = [[context + reply_ids[: i + 1], 1000.0 * (i + 1)] for i in range(len(reply_ids))]
    return dataclasses.replace(engine, model=model)


def test_unk_becomes_pad_and_the_embeddings_do_not_grow(sp_dir, sp_engine):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(sp_dir)).pad_token is None  # as LLaMA ships
    tok = sp_engine.tokenizer
    assert tok.pad_token == "<unk>" and tok.pad_token_id == tok.unk_token_id != tok.eos_token_id
    rows = AutoConfig.from_pretrained(str(sp_dir)).vocab_size
    assert len(tok) == rows == sp_engine.model.get_input_embeddings().num_embeddings


def test_training_labels_never_include_pad(sp_engine):
    tok = sp_engine.tokenizer
    conversations = [[{"role": "user", "content": text}, {"role": "assistant", "content": text}] for text in TRICKY_TEXTS]
    encoded = encode_batch(conversations, tok, BELLE)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    batch = collate(rows, tok.pad_token_id)
    padding = batch["attention_mask"] == 0
    assert padding.any()
    assert (batch["input_ids"][padding] == tok.pad_token_id).all()
    assert (batch["labels"][padding] == IGNORE_INDEX).all()
    assert not (batch["labels"] == tok.pad_token_id).any()
    assert not (batch["input_ids"][~padding] == tok.pad_token_id).any()  # byte fallback: no text is <unk>


@pytest.mark.slow
def test_left_padded_batch_generates_what_each_prompt_generates_alone(sp_engine):
    short = sp_engine.encode_chat([{"role": "user", "content": "你好"}])
    long = sp_engine.encode_chat([{"role": "user", "content": "今天天气怎么样？请详细地回答，谢谢你。"}])
    assert len(long) > len(short) + 5
    batch = sp_engine.generate_batch([long, short], GREEDY)
    assert batch == [sp_engine.generate(long, GREEDY), sp_engine.generate(short, GREEDY)]
    assert batch[1].completion_tokens == GREEDY.max_new_tokens


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_streaming_decoder_equals_decoding_the_whole_reply(sp_engine, text):
    """Metaspace decoding strips one leading space per decode call and byte-fallback pieces are
    partial characters: token by token, neither a space nor a character is lost or doubled."""
    tok = sp_engine.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tok)
    deltas = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in delta for delta in deltas)


@pytest.mark.slow
def test_generation_stops_at_eos_and_streams_the_same_text(sp_engine):
    tok = sp_engine.tokenizer
    prompt = sp_engine.encode_chat([{"role": "user", "content": "你好"}])
    reply = tok.encode("  Hello 世界🦄 龘鱻 ok", add_special_tokens=False)
    after = tok.encode(" never shown", add_special_tokens=False)
    engine = scripted(sp_engine, prompt, reply + [tok.eos_token_id] + after)
    params = dataclasses.replace(GREEDY, max_new_tokens=40)
    completion = engine.generate(prompt, params)
    assert completion.text == tok.decode(reply) == " Hello 世界🦄 龘鱻 ok"
    assert (completion.finish_reason, completion.completion_tokens) == ("stop", len(reply) + 1)
    stream = engine.stream(prompt, params)
    deltas = list(stream)
    assert "".join(deltas) == completion.text and len(deltas) > 5
    assert (stream.finish_reason, stream.completion_tokens) == ("stop", len(reply) + 1)


@pytest.mark.slow
def test_random_model_streams_what_it_generates(sp_engine):
    """Untrained, the model emits stray byte pieces (invalid UTF-8) among words: the stream still
    adds up to the decoded reply."""
    params = dataclasses.replace(GREEDY, max_new_tokens=24)
    for content in ("你好", "Tell me a story about 🦄.", "  spaces"):
        prompt = sp_engine.encode_chat([{"role": "user", "content": content}])
        assert sp_engine.stream(prompt, params).text() == sp_engine.generate(prompt, params).text


def test_generation_stops_at_a_stop_string(sp_engine):
    """BELLE's next-turn marker as a stop string: the model starts the user's turn itself."""
    tok = sp_engine.tokenizer
    prompt = sp_engine.encode_chat([{"role": "user", "content": "你好"}])
    reply = tok.encode("好的🦄\nHuman: \n再见", add_special_tokens=False)
    engine = scripted(sp_engine, prompt, reply)
    params = dataclasses.replace(GREEDY, max_new_tokens=len(reply) + 5, stop=("Human:",))
    completion = engine.generate(prompt, params)
    assert (completion.text, completion.finish_reason) == ("好的🦄\n", "stop")
    stream = engine.stream(prompt, params)
    assert stream.text() == "好的🦄\n" and stream.finish_reason == "stop"
    assert stream.completion_tokens < len(reply)


def user_prefixes(histories):
    for messages in histories:
        for i, message in enumerate(messages):
            if message["role"] == "user":
                yield messages[: i + 1]


def served_ids(tok, messages, generation=True) -> list[int]:
    """What vLLM or TGI feed the model: the chat_template's text, tokenized as one string."""
    return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)["input_ids"]


def test_served_prompt_equals_training_tokens_with_byte_level_bpe(tokenizer, sample_histories):
    prompts = list(user_prefixes(sample_histories))
    assert any(len(p) > 1 for p in prompts)
    for messages in prompts:
        assert served_ids(tokenizer, messages) == encode_prompt(messages, tokenizer, BELLE)


def test_served_sentencepiece_prompt_lacks_the_space_training_puts_before_each_later_turn(sp_engine, sample_histories):
    """BELLE issue 337 on the serving side. Encoding each piece alone (training, BELLE's reference,
    belle's own engine) starts every piece with `▁`; the chat_template's text tokenized whole has
    `▁` at its start only. A first turn is one piece, so it agrees; later turns do not."""
    tok = sp_engine.tokenizer
    first = later = 0
    for messages in user_prefixes(sample_histories):
        ours, served = encode_prompt(messages, tok, BELLE), served_ids(tok, messages)
        pieces = [text for text, _ in render_pieces(BELLE, messages, True, tok.bos_token, tok.eos_token)]
        assert tok.decode(served) == "".join(pieces)
        if len(pieces) == 1:
            first += 1
            assert served == ours
        else:
            later += 1
            assert served != ours
            assert tok.decode(ours) == pieces[0] + "".join(" " + piece for piece in pieces[1:])
            assert sum(1 for token in tok.convert_ids_to_tokens(ours) if token.startswith("▁")) \
                == sum(1 for token in tok.convert_ids_to_tokens(served) if token.startswith("▁")) + len(pieces) - 1
    assert first and later


def test_engine_prompt_is_a_prefix_of_the_training_encoding(sp_engine, sample_histories):
    tok = sp_engine.tokenizer
    for messages in sample_histories:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        if last_user + 1 < len(messages):
            prompt = encode_prompt(messages[: last_user + 1], tok, BELLE)
            full = encode_batch([messages[: last_user + 2]], tok, BELLE)[0].input_ids
            assert full[: len(prompt)] == prompt
