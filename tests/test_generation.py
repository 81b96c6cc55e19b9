"""belle.generation: streaming equals whole generation, stop strings, EOS, Stop and disconnect
really end generation, left-padded batches, history truncation, and every kind of model folder."""

import dataclasses
import json
import time

import pytest
import torch

from belle.generation import GenerationParams, PromptTooLong, load_engine
from belle.streaming import REPLACEMENT_CHAR
from belle.tokenization import encode_batch, encode_prompt

GREEDY = GenerationParams(temperature=0, max_new_tokens=40)
QUESTION = [{"role": "user", "content": "你好，请介绍一下北京的历史。"}]


def prompt(engine, text="你好，请介绍一下北京的历史。"):
    return engine.encode_chat([{"role": "user", "content": text}])


def test_prompt_is_a_prefix_of_the_training_encoding(tokenizer, tiny_engine):
    history = [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "第一问"},
        {"role": "assistant", "content": "第一答"},
        {"role": "user", "content": "第二问"},
    ]
    ids = encode_prompt(history, tokenizer, tiny_engine.template)
    trained = encode_batch([history + [{"role": "assistant", "content": "第二答"}]], tokenizer, tiny_engine.template)[0]
    assert trained.input_ids[: len(ids)] == ids
    assert tokenizer.decode(ids).endswith("第二问\n\nAssistant: \n")


def test_defaults_are_belle_web_demo_settings():
    p = GenerationParams()
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens) == (0.1, 0.75, 40, 1.2, 512)


@pytest.mark.parametrize(
    "field, value, message",
    [("temperature", -1, "temperature"), ("top_p", 0, "top_p"), ("top_k", -2, "top_k"),
     ("max_new_tokens", 0, "max_new_tokens"), ("min_new_tokens", 600, "min_new_tokens"), ("stop", ("",), "stop")],
)
def test_bad_params_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**{field: value})


@pytest.mark.slow
def test_stream_equals_generate(tiny_engine):
    ids = prompt(tiny_engine)
    stream = tiny_engine.stream(ids, GREEDY)
    deltas = list(stream)
    whole = tiny_engine.generate(ids, GREEDY)
    assert "".join(deltas) == whole.text
    assert (stream.finish_reason, stream.completion_tokens) == ("length", 40) == (whole.finish_reason, whole.completion_tokens)
    assert stream.prompt_tokens == whole.prompt_tokens == len(ids)


@pytest.mark.slow
def test_left_padded_batch_equals_one_by_one(tiny_engine):
    prompts = [prompt(tiny_engine, text) for text in ("你好", "请写一首关于春天的长诗，要有押韵。", "What is BELLE?")]
    assert len({len(p) for p in prompts}) == 3
    batch = tiny_engine.generate_batch(prompts, GREEDY)
    assert [c.text for c in batch] == [tiny_engine.generate(p, GREEDY).text for p in prompts]


@pytest.mark.slow
def test_stop_string_ends_the_reply(tiny_engine):
    ids = prompt(tiny_engine)
    full = tiny_engine.generate(ids, GREEDY).text
    cut = next(i for i in range(8, len(full) - 3) if REPLACEMENT_CHAR not in full[i : i + 3] and full.find(full[i : i + 3]) == i)
    params = dataclasses.replace(GREEDY, stop=(full[cut : cut + 3], "never appears"))
    stream = tiny_engine.stream(ids, params)
    assert stream.text() == full[:cut]
    assert stream.finish_reason == "stop" and stream.completion_tokens < 40
    batch = tiny_engine.generate(ids, params)
    assert (batch.text, batch.finish_reason) == (full[:cut], "stop")
    assert batch.completion_tokens < 40


@pytest.mark.slow
def test_eos_ends_the_reply(tiny_engine, tokenizer):
    ids = prompt(tiny_engine)
    settings = {**GREEDY.generate_kwargs(), "max_new_tokens": 8, "min_new_tokens": 8}
    tokens = tiny_engine.model.generate(torch.tensor([ids]), pad_token_id=tokenizer.pad_token_id, **settings)[0, len(ids):].tolist()
    expected = tokenizer.decode(tokens[:5], skip_special_tokens=True)
    eos = tokens[5]
    assert eos not in tokens[:5]
    engine = dataclasses.replace(tiny_engine, eos_token_ids=frozenset({eos}))
    stream = engine.stream(ids, GREEDY)
    assert stream.text() == expected
    assert (stream.finish_reason, stream.completion_tokens) == ("stop", 6)
    whole = engine.generate(ids, GREEDY)
    assert (whole.text, whole.finish_reason, whole.completion_tokens) == (expected, "stop", 6)


LONG = GenerationParams(temperature=0, max_new_tokens=1500, min_new_tokens=1500)


def test_cancel_really_ends_generation(tiny_engine):
    stream = tiny_engine.stream(prompt(tiny_engine), LONG)
    started = time.monotonic()
    for i, _ in enumerate(stream):
        if i == 2:
            stream.cancel()
    assert stream.join(timeout=5)
    assert stream.finish_reason == "cancelled"
    assert stream.completion_tokens < 100
    assert time.monotonic() - started < 5


def test_leaving_the_iteration_ends_generation(tiny_engine):
    stream = tiny_engine.stream(prompt(tiny_engine), LONG)
    deltas = iter(stream)
    next(deltas)
    deltas.close()  # what a disconnecting client or a closed Gradio generator does
    assert stream.join(timeout=1)  # the 1,500 tokens would take seconds
    assert stream.finish_reason == "cancelled"


def test_oldest_exchanges_are_dropped_to_fit(tiny_engine):
    system = {"role": "system", "content": "你是一个助手。"}
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"第{i}个问题：" + "很长的问题" * 5}, {"role": "assistant", "content": "回答" * 10}]
    history = [system] + turns + [{"role": "user", "content": "最后的问题"}]
    engine = dataclasses.replace(tiny_engine, context_length=len(tiny_engine.encode_chat(history[:1] + history[-5:])) + 16)
    ids, dropped = engine.fit_chat(history, max_new_tokens=16)
    assert dropped == 4
    assert ids == engine.encode_chat([system] + history[-5:])
    with pytest.raises(PromptTooLong, match="exceed the model's"):
        engine.fit_chat(history, max_new_tokens=16, drop_oldest=False)
    with pytest.raises(PromptTooLong):
        engine.fit_chat([system, {"role": "user", "content": "太长" * 500}], max_new_tokens=16)
    stream = engine.chat(history, dataclasses.replace(GREEDY, max_new_tokens=16))
    assert stream.prompt_tokens == len(ids)
    stream.text()


@pytest.mark.slow
def test_lora_adapter_folder_loads_on_its_base(tiny_model_dir, tiny_engine, tmp_path):
    from peft import LoraConfig, get_peft_model

    from belle.modeling import load_model, write_checkpoint_info

    base = load_model(tiny_model_dir, device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    write_checkpoint_info(adapter, "belle")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)

    engine = load_engine(adapter, device="cpu")
    assert engine.name == "adapter" and engine.template.name == "belle"
    ids = torch.tensor([prompt(engine)])
    with torch.no_grad():
        lora_logits = engine.model(ids).logits
        base_logits = tiny_engine.model(ids).logits
    assert not torch.allclose(lora_logits, base_logits)
    # Batched replies decode through the adapter, beside a thread-path one, as `generate` would.
    assert engine.batching
    greedy = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=16)
    streams = [engine.stream(prompt(engine), greedy) for _ in range(3)]
    threaded = engine.stream(prompt(engine), dataclasses.replace(greedy, logprobs=0))
    with torch.inference_mode():
        expected = engine.model.generate(ids, do_sample=False, max_new_tokens=16, eos_token_id=list(engine.eos_token_ids),
                                         pad_token_id=engine.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    ended = next((i for i, t in enumerate(expected) if t in engine.eos_token_ids), len(expected))
    text = engine.tokenizer.decode(expected[:ended], skip_special_tokens=True)
    assert [s.text() for s in streams] + [threaded.text()] == [text] * 4
    engine.close()

    config["base_model_name_or_path"] = str(tmp_path / "moved")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base model"):
        load_engine(adapter, device="cpu")
    moved = load_engine(adapter, base=tiny_model_dir, device="cpu")
    with torch.no_grad():
        assert torch.equal(moved.model(ids).logits, lora_logits)


def test_template_comes_from_the_tokenizer_without_belle_json(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "no_belle_json"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "belle.json").unlink()
    engine = load_engine(folder, device="cpu")
    assert engine.template.name == "model"
    assert engine.encode_chat(QUESTION) == load_engine(tiny_model_dir, device="cpu").encode_chat(QUESTION)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_engine(tmp_path)


@pytest.mark.slow
def test_gptq_folder_loads_and_generates(tiny_gptq_dir):
    from safetensors import safe_open

    with safe_open(str(tiny_gptq_dir / "model.safetensors"), "pt") as weights:
        assert any(name.endswith("q_proj.qweight") for name in weights.keys())
    engine = load_engine(tiny_gptq_dir, device="cpu")
    assert engine.template.name == "belle"
    assert type(engine.model.model.layers[0].self_attn.q_proj).__name__ != "Linear"
    stream = engine.stream(prompt(engine), dataclasses.replace(GREEDY, min_new_tokens=40))
    assert stream.text() and stream.completion_tokens == 40


def test_without_belle_json_or_chat_template_a_template_must_be_named(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "belle.json").unlink()
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="name a template"):
        load_engine(folder, device="cpu")
    assert load_engine(folder, template="chatml", device="cpu").template.name == "chatml"


def test_seed_and_logprobs_are_validated():
    with pytest.raises(ValueError, match="logprobs must be between 0 and 20"):
        GenerationParams(logprobs=21)
    with pytest.raises(ValueError, match="seed must be an integer"):
        GenerationParams(seed="7")


def test_default_params_come_from_the_generation_config(tiny_engine):
    config = tiny_engine.model.generation_config
    params = tiny_engine.default_params
    assert params.max_new_tokens == 512
    assert params.temperature == (config.temperature if config.do_sample else 0)
    assert params.top_k == (50 if config.top_k is None else config.top_k) and params.top_p == (config.top_p or 1.0)
    assert params.repetition_penalty == (config.repetition_penalty or 1.0)
    sampled = dataclasses.replace(tiny_engine, model=_WithConfig(tiny_engine.model, do_sample=True, temperature=0.6, top_p=None, top_k=0))
    assert (sampled.default_params.temperature, sampled.default_params.top_p, sampled.default_params.top_k) == (0.6, 1.0, 0)
    unset = dataclasses.replace(tiny_engine, model=_WithConfig(tiny_engine.model, do_sample=True))
    assert unset.default_params.top_k == 50  # what generate samples with when top_k is unset


class _WithConfig:
    def __init__(self, model, **settings):
        from transformers import GenerationConfig

        self.generation_config = GenerationConfig(**settings)


SAMPLED = GenerationParams(temperature=1.0, top_p=0.9, top_k=0, repetition_penalty=1.0, max_new_tokens=24, min_new_tokens=24)


@pytest.mark.slow
def test_same_seed_same_reply_even_beside_other_streams(tiny_engine):
    ids = prompt(tiny_engine)
    seeded = dataclasses.replace(SAMPLED, seed=1234)
    alone = tiny_engine.stream(ids, seeded).text()
    others = [tiny_engine.stream(ids, SAMPLED) for _ in range(2)]
    together = [tiny_engine.stream(ids, seeded) for _ in range(2)]
    assert [s.text() for s in together] == [alone, alone]
    for s in others:
        s.text()
    assert tiny_engine.stream(ids, dataclasses.replace(SAMPLED, seed=99)).text() != alone
    assert tiny_engine.generate(ids, seeded).text == alone


@pytest.mark.slow
def test_seeded_sampling_follows_the_distribution(tiny_engine):
    """Gumbel-max over the temperature-scaled logits: first-token frequencies over many seeds
    match softmax(logits / T) restricted to the top-k set."""
    ids = prompt(tiny_engine)
    with torch.no_grad():
        logits = tiny_engine.model(torch.tensor([ids])).logits[0, -1].float()
    kept = logits.topk(5)
    probs = dict(zip(kept.indices.tolist(), torch.softmax(kept.values / 0.7, -1).tolist()))
    params = GenerationParams(temperature=0.7, top_p=1.0, top_k=5, repetition_penalty=1.0, max_new_tokens=1, min_new_tokens=1)
    counts: dict[int, int] = {}
    runs = 300
    for seed in range(runs):
        stream = tiny_engine.stream(ids, dataclasses.replace(params, seed=seed, logprobs=0))
        token = next(p for p in stream.pieces() if p.logprobs).logprobs[0].token_id
        counts[token] = counts.get(token, 0) + 1
    assert set(counts) <= set(probs)
    for token, p in probs.items():
        assert abs(counts.get(token, 0) / runs - p) < 4 * (p * (1 - p) / runs) ** 0.5 + 0.01


@pytest.mark.slow
def test_logprobs_are_the_raw_distribution(tiny_engine, tokenizer):
    ids = prompt(tiny_engine)
    params = dataclasses.replace(GREEDY, max_new_tokens=6, min_new_tokens=6, repetition_penalty=1.3, logprobs=3)
    stream = tiny_engine.stream(ids, params)
    pieces = list(stream.pieces())
    assert "".join(p.text for p in pieces) == tiny_engine.stream(ids, dataclasses.replace(params, logprobs=None)).text()
    tokens = [lp for p in pieces for lp in p.logprobs]
    assert len(tokens) == 6
    context = list(ids)
    for lp in tokens:
        with torch.no_grad():
            row = torch.log_softmax(tiny_engine.model(torch.tensor([context])).logits[0, -1].float(), -1)
        assert lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-3)  # a KV cache against a full pass
        assert lp.token == tokenizer.decode([lp.token_id])
        best = row.topk(3)
        assert [t[0] for t in lp.top] == best.indices.tolist()
        assert [t[2] for t in lp.top] == pytest.approx(best.values.tolist(), abs=1e-3)
        context.append(lp.token_id)
    assert all(p.logprobs == () for p in tiny_engine.stream(ids, GREEDY).pieces())


@pytest.mark.slow
def test_prompt_logprobs_equal_unpadded_forward(tiny_engine):
    prompts = [prompt(tiny_engine, text) for text in ("你好", "请写一首关于春天的长诗，要有押韵。", "What is BELLE?")]
    results = tiny_engine.prompt_logprobs(prompts, top=2, logits_bytes=64 * 4 * tiny_engine.model.config.vocab_size)
    for ids, entries in zip(prompts, results):
        assert len(entries) == len(ids) and entries[0] is None
        with torch.no_grad():
            rows = torch.log_softmax(tiny_engine.model(torch.tensor([ids])).logits[0].float(), -1)
        for i in range(1, len(ids)):
            assert entries[i].token_id == ids[i]
            assert entries[i].logprob == pytest.approx(rows[i - 1, ids[i]].item(), abs=1e-4)
            assert [t[0] for t in entries[i].top] == rows[i - 1].topk(2).indices.tolist()
    assert tiny_engine.prompt_logprobs([[]]) == [[]]


@pytest.mark.slow
def test_apieces_gives_what_pieces_gives(tiny_model_dir):
    """The event-loop reader of a stream yields the same pieces as the blocking one, on both paths."""
    import asyncio

    engine = load_engine(tiny_model_dir, device="cpu")
    assert engine.batching
    ids = engine.encode_chat([{"role": "user", "content": "你好"}])
    greedy = GenerationParams(temperature=0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=24)
    for params in (greedy, dataclasses.replace(greedy, logprobs=2)):  # batched, then the thread path
        expected = list(engine.stream(ids, params).pieces())

        async def read():
            stream = engine.stream(ids, params)
            return [piece async for piece in stream.apieces()], stream

        pieces, stream = asyncio.run(read())
        assert [p.text for p in pieces] == [p.text for p in expected]
        assert [[t.token_id for t in p.logprobs] for p in pieces] == [[t.token_id for t in p.logprobs] for p in expected]
        assert stream.finish_reason in ("stop", "length") and stream.completion_tokens > 0
    engine.close()
