"""belle.batching: concurrent streams decode together through transformers' continuous batching
and give what `model.generate` gives; a lone stream on `generate` that moves into the batcher,
cancel, stop strings, the thread path beside it, the KV bound, and the probe that turns batching off."""

import dataclasses
import logging
import os
import threading
import time

import pytest
import torch

from belle.batching import GQA_IN_SDPA, Batcher, BatchingOptions, start_batcher
from belle.generation import THREAD_STREAMS, GenerationParams, load_engine

GREEDY = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=24)
TEXTS = ["你好", "请写一首关于春天的长诗，要有押韵。", "What is BELLE?", "北京", "a b c", "今天天气怎么样？", "Hi", "再见"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = load_engine(tiny_model_dir, device="cpu", max_running=8, kv_cache_tokens=2048)
    assert engine.batching
    yield engine
    engine.close()


def expected(engine, ids, max_new_tokens=24, ignore_eos=False):
    """`model.generate`'s greedy reply, cut at EOS; with `ignore_eos`, exactly `max_new_tokens` tokens."""
    eos = [] if ignore_eos else list(engine.eos_token_ids)
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens,
                                    eos_token_id=eos, pad_token_id=engine.tokenizer.pad_token_id)
    tokens = out[0, len(ids):].tolist()
    ended = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
    return engine.tokenizer.decode(tokens[:ended], skip_special_tokens=True)


@pytest.mark.slow
def test_eight_concurrent_streams_equal_generate(engine):
    prompts = [engine.encode_chat([{"role": "user", "content": t}]) for t in TEXTS]
    streams = [engine.stream(ids, GREEDY) for ids in prompts]
    results = [None] * len(streams)

    def read(i):
        results[i] = streams[i].text()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected(engine, ids) for ids in prompts]
    assert all(s.finish_reason in ("stop", "length") for s in streams)
    batch = engine.generate_batch(prompts, GREEDY)
    assert [c.text for c in batch] == results
    off = dataclasses.replace(engine, batcher=None)
    assert [c.text for c in off.generate_batch(prompts[:3], GREEDY)] == results[:3]


@pytest.mark.slow
def test_exact_length_and_sampling(engine):
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    exact = dataclasses.replace(GREEDY, max_new_tokens=30, ignore_eos=True)
    stream = engine.stream(ids, exact, more_coming=True)  # in the batcher, not alone
    stream.text()
    assert (stream.completion_tokens, stream.finish_reason) == (30, "length")
    sampling = GenerationParams(temperature=0.8, top_p=0.9, top_k=0, repetition_penalty=1.0, max_new_tokens=20)
    sampled, greedy = engine.stream(ids, sampling), engine.stream(ids, GREEDY)  # two managers, decoding at once
    assert sampled.text() and sampled.completion_tokens <= 20
    assert greedy.text() == expected(engine, ids)
    assert set(engine.batcher._managers) == {False, True}


@pytest.mark.slow
def test_cancel_mid_stream_frees_the_slot(engine):
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    long = dataclasses.replace(GREEDY, max_new_tokens=1000, ignore_eos=True)
    streams = [engine.stream(ids, long) for _ in range(8)]
    started = time.monotonic()
    for stream in streams:
        pieces = iter(stream)
        next(pieces)
        pieces.close()
    assert all(s.join(timeout=5) for s in streams)
    assert all(s.finish_reason == "cancelled" and s.completion_tokens < 1000 for s in streams)
    assert time.monotonic() - started < 10
    assert engine.stream(ids, GREEDY).text() == expected(engine, ids)  # all 8 slots are free again


@pytest.mark.slow
def test_a_lone_stream_decodes_on_generate_and_moves_into_the_batcher_when_another_arrives(engine, monkeypatch):
    submitted = []
    submit = engine.batcher.submit
    monkeypatch.setattr(engine.batcher, "submit", lambda ids, params, push, finish: submitted.append((list(ids), params.max_new_tokens)) or submit(ids, params, push, finish))
    first = engine.encode_chat([{"role": "user", "content": "你好"}])
    second = engine.encode_chat([{"role": "user", "content": "What is BELLE?"}])
    long = dataclasses.replace(GREEDY, max_new_tokens=600, ignore_eos=True)
    alone = engine.stream(first, long)
    assert engine._alone is alone and not submitted  # nothing batched: it runs on `generate`
    pieces = alone.pieces()
    head = [next(pieces).text for _ in range(3)]
    joined = engine.stream(second, GREEDY)
    rest = "".join(p.text for p in pieces)
    assert "".join(head) + rest == expected(engine, first, 600, ignore_eos=True)  # nothing lost or repeated in the move
    assert (alone.completion_tokens, alone.finish_reason) == (600, "length")
    assert joined.text() == expected(engine, second)
    moved = [(len(ids) - len(first), rest) for ids, rest in submitted if ids[: len(first)] == first]
    assert len(moved) == 1 and moved[0][0] >= 3 and sum(moved[0]) == 600  # prompt + tokens so far; the rest to go
    settled(lambda: engine._alone is None and engine.thread_slots._value == THREAD_STREAMS)  # its slot is back
    assert engine.batcher.idle
    again = engine.stream(first, dataclasses.replace(GREEDY, max_new_tokens=5, ignore_eos=True))
    assert engine._alone is again  # free again: the next lone request runs alone
    again.text()
    settled(lambda: engine._alone is None)
    batch = [engine.stream(ids, GREEDY, more_coming=True) for ids in (first, second)]
    assert engine._alone is None and [s.text() for s in batch] == [expected(engine, first), expected(engine, second)]


def settled(condition, timeout=5.0):
    """Wait for `condition()`, which a generating thread makes true as it finishes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not settled in time"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_lone_stream_cancelled_or_batched_in_bulk_does_not_move(engine, monkeypatch):
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    long = dataclasses.replace(GREEDY, max_new_tokens=1000, ignore_eos=True)
    alone = engine.stream(ids, long)
    pieces = iter(alone)
    next(pieces)
    pieces.close()
    assert alone.join(timeout=5) and alone.completion_tokens < 1000
    settled(lambda: engine._alone is None and engine.thread_slots._value == THREAD_STREAMS)
    assert engine.batcher.idle
    submitted = []
    submit = engine.batcher.submit
    monkeypatch.setattr(engine.batcher, "submit", lambda ids, params, push, finish: submitted.append(len(ids)) or submit(ids, params, push, finish))
    prompts = [engine.encode_chat([{"role": "user", "content": t}]) for t in TEXTS[:3]]
    assert [c.text for c in engine.generate_batch(prompts, GREEDY)] == [expected(engine, p) for p in prompts]
    assert submitted == [len(p) for p in prompts]  # a batch goes to the batcher whole, none alone first


@pytest.mark.slow
def test_generate_all_keeps_a_window_of_replies_decoding(engine, monkeypatch):
    in_flight, most = [0], [0]
    lock = threading.Lock()
    submit = engine.batcher.submit

    def counted(ids, params, push, finish):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])

        def finished(error=None):
            with lock:
                in_flight[0] -= 1
            finish(error)

        return submit(ids, params, push, finished)

    monkeypatch.setattr(engine.batcher, "submit", counted)
    prompts = [engine.encode_chat([{"role": "user", "content": t}]) for t in TEXTS[:5]]
    replies = list(engine.generate_all(prompts, GREEDY, window=2))
    assert sorted(index for index, _ in replies) == list(range(5))
    assert {index: c.text for index, c in replies} == {i: expected(engine, p) for i, p in enumerate(prompts)}
    assert most[0] == 2
    off = dataclasses.replace(engine, batcher=None)
    assert [(i, c.text) for i, c in off.generate_all(prompts, GREEDY, window=2)] == [(i, c.text) for i, c in sorted(replies, key=lambda r: r[0])]
    started = []
    stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda *a, **k: started.append(stream(*a, **k)) or started[-1])
    replies = engine.generate_all(prompts[:3], dataclasses.replace(GREEDY, max_new_tokens=200, ignore_eos=True), window=2)
    next(replies)  # the first two finish together; the third takes the first one's place
    replies.close()
    assert len(started) == 3 and all(s.join(timeout=5) for s in started)
    assert started[2].completion_tokens < 200  # cancelled at once
    assert engine.batcher.idle


@pytest.mark.slow
def test_stop_string_cuts_a_batched_stream(engine):
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    full = expected(engine, ids, 40)
    cut = next(i for i in range(8, len(full) - 3) if "\ufffd" not in full[i : i + 3] and full.find(full[i : i + 3]) == i)
    stream = engine.stream(ids, dataclasses.replace(GREEDY, max_new_tokens=40, stop=(full[cut : cut + 3],)), more_coming=True)
    assert stream.text() == full[:cut]
    assert stream.finish_reason == "stop" and stream.completion_tokens < 40


@pytest.mark.slow
def test_thread_path_runs_beside_batched_streams(engine):
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    seeded = GenerationParams(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=16, seed=3)
    penalized = dataclasses.replace(GREEDY, repetition_penalty=1.3)
    assert not engine.batcher.accepts(seeded, len(ids)) and not engine.batcher.accepts(penalized, len(ids))
    assert not engine.batcher.accepts(dataclasses.replace(GREEDY, min_new_tokens=4), len(ids))  # generate holds EOS back
    assert engine.batcher.accepts(dataclasses.replace(GREEDY, seed=1234), len(ids))  # greedy: a seed changes nothing
    batched = [engine.stream(ids, GREEDY) for _ in range(3)]
    threaded = [engine.stream(ids, seeded), engine.stream(ids, penalized)]
    assert [s.text() for s in batched] == [expected(engine, ids)] * 3
    texts = [s.text() for s in threaded]
    off = dataclasses.replace(engine, batcher=None)
    assert texts == [off.stream(ids, seeded).text(), off.stream(ids, penalized).text()]


@pytest.mark.slow
def test_kv_bound_is_respected(engine):
    assert engine.batcher.kv_cache_tokens == 2048
    cache = engine.batcher._managers[False].batch_processor
    assert engine.batcher.memory_bytes < 2**20 * 8
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    too_long = dataclasses.replace(GREEDY, max_new_tokens=2048)
    assert not engine.batcher.accepts(too_long, len(ids))  # such a request takes the thread path
    if cache is not None:
        assert cache.cache.num_blocks * 256 <= 2048 + 256


@pytest.mark.slow
def test_a_failed_probe_turns_batching_off(engine, caplog, monkeypatch):
    monkeypatch.setattr(Batcher, "run", lambda self, prompt, params, timeout=120: [0] * 8)
    with caplog.at_level(logging.INFO, logger="belle.batching"):
        assert start_batcher(engine.model, engine.tokenizer, engine.eos_token_ids, 2048, BatchingOptions(2, 512)) is None
    assert "batched decoding is off: the probe failed" in caplog.text and "differ from model.generate" in caplog.text


@pytest.mark.slow
def test_no_batching_option(tiny_model_dir):
    assert not load_engine(tiny_model_dir, device="cpu", batching=False).batching


@pytest.mark.slow
def test_which_families_batch(tmp_path, caplog):
    from belle.architectures import FAMILIES
    from belle.models.tiny import build_tiny_model

    batching = {}
    for arch in FAMILIES:
        folder = build_tiny_model(tmp_path / arch, arch=arch)
        with caplog.at_level(logging.INFO, logger="belle.batching"):
            engine = load_engine(folder, device="cpu", max_running=2, kv_cache_tokens=512)
        batching[arch] = engine.batching
        if engine.batching:
            ids = engine.encode_chat([{"role": "user", "content": "你好"}])
            assert engine.stream(ids, GREEDY, more_coming=True).text() == expected(engine, ids)  # batched, not alone
        engine.close()
    print("families that batch:", batching)
    assert batching["llama"] and batching["qwen2"]
    assert all(on or "batched decoding is off" in caplog.text for on in batching.values())


@pytest.mark.slow
def test_generation_config_settings_the_batcher_would_ignore_turn_it_off(tiny_model_dir, tmp_path, caplog):
    import shutil

    from transformers import GenerationConfig

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    GenerationConfig(no_repeat_ngram_size=3, eos_token_id=2).save_pretrained(folder)
    with caplog.at_level(logging.INFO, logger="belle.batching"):
        engine = load_engine(folder, device="cpu")
    assert not engine.batching
    assert "no_repeat_ngram_size" in caplog.text


@pytest.mark.slow
def test_transformers_batching_chatter_stays_off_the_terminal(engine):
    """transformers logs every cache allocation at INFO on stderr, where a terminal chat shows it."""
    assert logging.getLogger("ContinuousBatchingLogger").getEffectiveLevel() >= logging.WARNING


@pytest.mark.slow
def test_grouped_query_attention_stays_grouped_on_cpu(engine, monkeypatch):
    """A batched step has a mask, where transformers repeats the key/value heads unless told not to;
    on a machine with no GPU belle tells it (faster), and the equality tests above run with it."""
    assert engine.model.config.num_key_value_heads < engine.model.config.num_attention_heads
    for preset, after in ((None, "1"), ("0", "0")):  # a user's own setting stands
        if preset is None:
            monkeypatch.delenv(GQA_IN_SDPA, raising=False)
        else:
            monkeypatch.setenv(GQA_IN_SDPA, preset)
        batcher = start_batcher(engine.model, engine.tokenizer, engine.eos_token_ids, 2048, BatchingOptions(2, 512))
        assert batcher is not None
        batcher.close()
        assert os.environ.get(GQA_IN_SDPA) == after
