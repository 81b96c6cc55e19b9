"""GGUF files run by llama.cpp (`belle.llamacpp`): the tokenizer adapter, the sampling rules, and the
engine against the transformers engine on the same tiny model, exported in float32."""

import sys
import threading
from dataclasses import replace

import numpy as np
import pytest

from belle.cli import UsageError
from belle.generation import GenerationParams
from belle.llamacpp import EngineClosed, _Request, is_gguf, load_gguf_engine, next_token_scores, sampling_distribution
from belle.models.tiny import tiny_corpus_text

GREEDY = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=24)
MIXED = "BELLE 是一个中文对话模型 🤖🎉, trained on 1.5M samples! «naïve café» \t tabs  and\n\nnew lines 😀 <|im_start|>user</s>"
HISTORY = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么可以帮你？"},
    {"role": "user", "content": "Write a poem about spring 🌸."},
]


def test_is_gguf_reads_the_magic(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "b.gguf").write_bytes(b"GGML")
    assert is_gguf(tmp_path / "a.gguf")
    assert not is_gguf(tmp_path / "b.gguf") and not is_gguf(tmp_path) and not is_gguf(tmp_path / "missing.gguf")


def test_without_llama_cpp_the_message_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'belle\[gguf\]'"):
        load_gguf_engine(tmp_path / "model.gguf")


def test_a_broken_gguf_file_is_refused_in_one_line(belle_main, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    (tmp_path / "in.jsonl").write_text('{"text": "你好"}\n', encoding="utf-8")
    result = belle_main("generate", "--model", broken, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(broken) in result.stderr


@pytest.mark.parametrize("flags, message", [(("--device", "cuda"), "device cuda"), (("--base", "base"), "a base model")])
def test_gpu_and_base_flags_are_refused_for_a_gguf_file(belle_main, tmp_path, flags, message):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00")
    result = belle_main("serve", "--model", model, *flags)
    assert result.returncode == 2 and message in result.stderr and "GGUF" in result.stderr


class _Finishes:
    """The part of a TextStream that `_Request` calls: how often `_finish` ran."""

    def __init__(self):
        self.finished = 0

    def _finish(self, error=None):
        self.finished += 1


def test_a_cancel_racing_the_worker_either_ends_the_request_or_leaves_it_to_decode():
    for _ in range(300):
        stream = _Finishes()
        request = _Request(stream, [1], GREEDY)
        claimed = []
        worker = threading.Thread(target=lambda: claimed.append(request.start()))
        worker.start()
        request.cancel()
        worker.join()
        if claimed[0]:  # decoding goes on: the worker ends the request after its current token
            assert stream.finished == 0
            request.end()
        assert stream.finished == 1
        request.cancel()
        request.end()
        assert stream.finished == 1


@pytest.mark.slow  # imports transformers (seconds alone)
def test_repetition_penalty_and_warpers_match_transformers():
    import torch
    from transformers import (
        MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 500).astype(np.float32)
    history = [3, 3, 17, 250, 499, 0]
    params = GenerationParams(temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3, min_new_tokens=2, max_new_tokens=8)
    scores = next_token_scores(logits, history, 1, params, [7])
    candidates, probs = sampling_distribution(scores, params)

    ids, expected = torch.tensor([history]), torch.tensor(logits)[None]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, expected)
    expected = MinNewTokensLengthLogitsProcessor(len(history) - 1, 2, [7])(ids, expected)
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8)):
        expected = warper(ids, expected)
    expected = torch.softmax(expected, dim=-1)[0].double().numpy()
    assert scores[7] == -np.inf
    assert set(candidates.tolist()) == set(np.flatnonzero(expected).tolist())
    np.testing.assert_allclose(probs, expected[candidates], rtol=1e-5, atol=1e-9)


# Against the transformers engine on the tiny model.


@pytest.fixture(scope="module")
def gguf(tiny_gguf_f32):
    engine = load_gguf_engine(tiny_gguf_f32)
    yield engine
    engine.close()


@pytest.mark.slow
def test_tokenizer_ids_and_text_equal_hf(gguf, tokenizer):
    texts = [MIXED, "", " leading space", "数学题：1+1=？", MIXED * 3]
    for add in (True, False):
        assert gguf.tokenizer(texts, add_special_tokens=add)["input_ids"] == tokenizer(texts, add_special_tokens=add)["input_ids"]
    ids = tokenizer(MIXED)["input_ids"]
    assert gguf.tokenizer(MIXED)["input_ids"] == ids
    for skip in (True, False):
        assert gguf.tokenizer.decode(ids, skip_special_tokens=skip) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert (gguf.tokenizer.bos_token, gguf.tokenizer.eos_token, gguf.tokenizer.pad_token_id) == (
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token_id)
    vocab = gguf.tokenizer.get_vocab()
    assert all(vocab[piece] == i for piece, i in tokenizer.get_vocab().items())


@pytest.mark.slow
def test_prompt_template_and_defaults_equal_the_transformers_engine(gguf, tiny_engine):
    assert gguf.template == tiny_engine.template and gguf.eos_token_ids == tiny_engine.eos_token_ids
    assert gguf.encode_chat(HISTORY) == tiny_engine.encode_chat(HISTORY)
    assert gguf.encode_text(MIXED) == tiny_engine.encode_text(MIXED)
    assert gguf.default_params == tiny_engine.default_params
    assert gguf.vocab_size == tiny_engine.vocab_size and gguf.context_length == tiny_engine.context_length
    assert not gguf.batching


def _prompts(engine):
    return [engine.encode_chat(HISTORY[:2]), engine.encode_chat(HISTORY), engine.encode_text("The quick brown fox"),
            engine.encode_chat([{"role": "user", "content": "请写一首关于春天的长诗。"}])]


@pytest.mark.slow
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_replies_equal_transformers(gguf, tiny_engine, penalty):
    params = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=penalty, max_new_tokens=24)
    prompts = _prompts(gguf)
    expected = [tiny_engine.generate(ids, params) for ids in prompts]
    assert gguf.generate_batch(prompts, params) == expected
    streamed = [gguf.stream(ids, params) for ids in prompts]  # queued together, decoded one after another
    assert ["".join(stream) for stream in streamed] == [c.text for c in expected]
    assert [s.completion_tokens for s in streamed] == [c.completion_tokens for c in expected]
    assert [c for _, c in sorted(gguf.generate_all(prompts, params, window=2))] == expected


@pytest.mark.slow
def test_stop_strings_cut_the_reply(gguf):
    ids = _prompts(gguf)[1]
    full = gguf.generate(ids, GREEDY).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = gguf.generate(ids, replace(GREEDY, stop=(stop,)))
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


@pytest.mark.slow
def test_cancel_ends_decoding_running_or_waiting(gguf):
    long = GenerationParams(temperature=0, max_new_tokens=1000, ignore_eos=True)
    ids = _prompts(gguf)[0]
    before = gguf.generate(ids, GREEDY)
    running, waiting = gguf.stream(ids, long), gguf.stream(ids, long)
    next(iter(running))
    waiting.cancel()
    assert waiting.join(timeout=1) and waiting.completion_tokens == 0
    running.cancel()
    assert running.join(timeout=10)
    assert running.completion_tokens < 1000 and running.finish_reason == "cancelled"
    assert gguf.generate(ids, GREEDY) == before  # the engine goes on


@pytest.mark.slow
def test_a_seed_makes_sampling_repeatable(gguf):
    ids = _prompts(gguf)[0]
    params = GenerationParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=16, seed=7,
                              ignore_eos=True)
    first, again = gguf.generate(ids, params), gguf.generate(ids, params)
    other = gguf.generate(ids, replace(params, seed=8))
    assert first == again and first.text != other.text
    for seed in (-1, -(2**63)):  # the API takes seeds down to -2**63; numpy's generator takes none below 0
        assert gguf.generate(ids, replace(params, seed=seed)) == gguf.generate(ids, replace(params, seed=seed))


@pytest.mark.slow
def test_an_on_finish_that_raises_does_not_stop_the_engine(gguf, caplog):
    def fail():
        raise RuntimeError("on_finish failed")

    ids = _prompts(gguf)[0]
    before = gguf.generate(ids, GREEDY)
    stream = gguf.stream(ids, GREEDY, on_finish=fail)
    assert stream.text() == before.text
    assert gguf.generate(ids, GREEDY) == before  # the worker goes on with the next request
    assert "on_finish failed" in caplog.text


@pytest.mark.slow
def test_logprobs_equal_transformers(gguf, tiny_engine):
    prompts = _prompts(gguf)
    ours, theirs = gguf.prompt_logprobs(prompts, top=3), tiny_engine.prompt_logprobs(prompts, top=3)
    assert [len(p) for p in ours] == [len(p) for p in prompts] and all(p[0] is None for p in ours)
    for mine, expected in zip(ours, theirs):
        for a, b in zip(mine[1:], expected[1:]):
            assert (a.token_id, a.token) == (b.token_id, b.token) and a.logprob == pytest.approx(b.logprob, abs=1e-3)
            assert [t[0] for t in a.top] == [t[0] for t in b.top]
    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=6, logprobs=2, ignore_eos=True)
    generated = [lp for piece in gguf.stream(prompts[0], params).pieces() for lp in piece.logprobs]
    expected = [lp for piece in tiny_engine.stream(prompts[0], params).pieces() for lp in piece.logprobs]
    assert [lp.token_id for lp in generated] == [lp.token_id for lp in expected]
    assert [lp.logprob for lp in generated] == pytest.approx([lp.logprob for lp in expected], abs=1e-3)


@pytest.mark.slow
def test_perplexity_windows_equal_transformers(gguf, tiny_engine):
    ids = tiny_engine.encode_text(tiny_corpus_text()[:1500])
    ours, theirs = gguf.score_text(ids, 128, 64), tiny_engine.score_text(ids, 128, 64)
    assert (ours.tokens, ours.windows) == (theirs.tokens, theirs.windows)
    assert ours.nll == pytest.approx(theirs.nll, rel=1e-5)


@pytest.mark.slow
def test_requests_from_many_threads_each_get_their_own_reply(gguf):
    prompts = _prompts(gguf)
    expected = [gguf.generate(ids, GREEDY).text for ids in prompts]
    got: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, gguf.generate(prompts[i], GREEDY).text))
               for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [got[i] for i in range(len(prompts))] == expected


@pytest.mark.slow
def test_close_waits_for_a_running_score_and_ends_the_waiting_ones(tiny_gguf_f32, tiny_engine):
    engine = load_gguf_engine(tiny_gguf_f32)
    ids = tiny_engine.encode_text(tiny_corpus_text()[:3000])
    outcomes: dict[str, object] = {}

    def score(key):
        try:
            outcomes[key] = engine.score_text(ids, 64, 1)  # a window per token: seconds of work
        except EngineClosed as error:
            outcomes[key] = error

    threads = {key: threading.Thread(target=score, args=(key,)) for key in ("running", "waiting")}
    threads["running"].start()
    while engine._jobs.qsize():  # the worker has taken the first score
        threading.Event().wait(0.01)
    threads["waiting"].start()
    threading.Event().wait(0.2)
    engine.close()
    assert not engine._worker.is_alive() and engine._context.ctx is None  # freed once the worker stopped
    for thread in threads.values():
        thread.join(10)
    assert isinstance(outcomes["running"], EngineClosed) and isinstance(outcomes["waiting"], EngineClosed)
    with pytest.raises(EngineClosed):
        engine.score_text(ids, 64)


@pytest.mark.slow
def test_a_q4_0_file_answers(tiny_gguf_q4_0):
    engine = load_gguf_engine(tiny_gguf_q4_0)
    try:
        reply = engine.generate(engine.encode_chat(HISTORY[1:2]), GenerationParams(temperature=0, max_new_tokens=8, ignore_eos=True))
        assert reply.completion_tokens == 8 and reply.text
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.stream([1, 2], GREEDY)
