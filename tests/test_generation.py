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
