"""`belle gptq quantize` on the trained tiny model: GPTQ keeps the model closer than round-to-nearest,
the folder is a standard GPTQ checkpoint that loads and generates, and bad arguments are clear errors.

The tiny model learns its training text by heart and little of the language (perplexity about 3
on its training text, about 5,000 on the held-out tail), so on held-out text any weight noise
moves perplexity up or down at random. Quantization error is measured where the model is good:
on the last part of its training text, which calibration never sees (calibration is the rest),
in 128-token windows like its training; and as the KL divergence from the float model's
next-token distributions on the held-out tail.
"""

import contextlib
import json
import shutil

import pytest

from belle.cli import run_verbs
from belle.generation import GenerationParams, load_engine
from belle.gptq.quantize import quantize
from belle.modeling import load_model, load_tokenizer
from belle.models.tiny import build_tiny_model, tiny_corpus_text, tiny_heldout_text, tiny_split_at
from belle.perplexity import perplexity

from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow

EVAL_CHARS = 4000  # the tail of the training text kept out of calibration: about 1,500 tokens
SEQLEN = 128  # the tiny model's training length
LAYERS = [f"model.layers.{i}.{name}" for i in range(2) for name in
          ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
GREEDY = GenerationParams(temperature=0, max_new_tokens=24, min_new_tokens=24)


def run_quantize(*args) -> int:
    return run_verbs([quantize], ["quantize", *map(str, args)], "belle gptq")


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """(calibration .txt file, evaluation text): the training text split, the last EVAL_CHARS for evaluation."""
    train = tiny_corpus_text()[: tiny_split_at()]
    path = tmp_path_factory.mktemp("texts") / "calibration.txt"
    path.write_text(train[:-EVAL_CHARS], encoding="utf-8")
    return path, train[-EVAL_CHARS:]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The current folder while quantizing: GPTQModel must leave no ./logs here."""
    folder = tmp_path_factory.mktemp("cwd")
    with contextlib.chdir(folder):
        yield folder


@pytest.fixture(scope="module")
def quantized(trained_tiny_dir, texts, work, tmp_path_factory):
    """{name: folder}: the trained tiny model at 4 bits, group size 128, by GPTQ and by RTN."""
    root = tmp_path_factory.mktemp("quantized")
    runs = {
        "gptq": ["--calibration", texts[0], "--nsamples", 64, "--seqlen", SEQLEN, "--batch-size", 8],
        "rtn": ["--method", "rtn"],
    }
    for name, args in runs.items():
        assert run_quantize("--model", trained_tiny_dir, "--out", root / name, "--device", "cpu", *args) == 0
    return {name: root / name for name in runs}


def next_token_log_probs(folder, text):
    """(windows, SEQLEN, vocab) log-probabilities of the model in `folder` on `text` cut into windows."""
    import torch

    model, tokenizer = load_model(folder, device="cpu", dtype="float32").eval(), load_tokenizer(folder)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    rows = ids[: len(ids) // SEQLEN * SEQLEN].view(-1, SEQLEN)  # (windows, SEQLEN)
    with torch.inference_mode():
        return model(input_ids=rows).logits.float().log_softmax(-1)


def test_gptq_perplexity_rises_less_than_rtn(trained_tiny_dir, quantized, texts):
    tokenizer = load_tokenizer(trained_tiny_dir)

    def ppl(folder):
        return perplexity(load_model(folder, device="cpu", dtype="float32").eval(), tokenizer, texts[1], seqlen=SEQLEN)

    base = ppl(trained_tiny_dir)
    rise = {name: ppl(folder) - base for name, folder in quantized.items()}
    print(f"perplexity fp32 {base:.3f}; rise: gptq {rise['gptq']:+.4f}, rtn {rise['rtn']:+.4f}")
    assert base < 10  # the model knows this text, so quantization can only hurt
    assert 0 < rise["gptq"] < rise["rtn"]


def test_gptq_stays_closer_to_the_float_model_on_held_out_text(trained_tiny_dir, quantized):
    reference = next_token_log_probs(trained_tiny_dir, tiny_heldout_text())
    kl = {}
    for name, folder in quantized.items():
        log_probs = next_token_log_probs(folder, tiny_heldout_text())
        kl[name] = (reference.exp() * (reference - log_probs)).sum(-1).mean().item()  # KL(float || quantized), nats
    print(f"KL on held-out text: gptq {kl['gptq']:.5f}, rtn {kl['rtn']:.5f}")
    assert 0 < kl["gptq"] < kl["rtn"]


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_output_is_a_standard_gptq_checkpoint(trained_tiny_dir, quantized, method, work):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    out = quantized[method]
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    for layer in LAYERS:
        assert {f"{layer}.{part}" for part in ("qweight", "qzeros", "scales", "g_idx")} <= names
        assert f"{layer}.weight" not in names
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names  # left in 16 bits
    expected = {"bits": 4, "group_size": 128, "desc_act": False, "sym": True,
                "quant_method": "gptq", "checkpoint_format": "gptq"}
    saved = json.loads((out / "quantize_config.json").read_text())
    assert {k: saved[k] for k in expected} == expected
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: config[k] for k in expected} == expected
    source = AutoTokenizer.from_pretrained(str(trained_tiny_dir))
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == source.chat_template
    assert (out / "generation_config.json").read_text() == (trained_tiny_dir / "generation_config.json").read_text()
    info = json.loads((out / "belle.json").read_text())
    assert info["template"] == "belle" and "trained_by" in info
    recorded = {k: info["quantization"][k] for k in ("method", "bits", "group_size")}
    assert recorded == {"method": method, "bits": 4, "group_size": 128}
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["quantized_layers"] == len(LAYERS) and summary["device"] == "cpu"
    assert summary["source_weight_bytes"] == (trained_tiny_dir / "model.safetensors").stat().st_size
    assert summary["output_weight_bytes"] == (out / "model.safetensors").stat().st_size
    assert summary["output_weight_bytes"] < summary["source_weight_bytes"] / 2
    assert summary["seconds"]["total"] >= summary["seconds"]["quantize"] > 0
    assert not (work / "logs").exists()


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_quantized_folder_loads_and_generates(quantized, method):
    engine = load_engine(quantized[method], device="cpu")
    assert engine.template.name == "belle"
    assert type(engine.model.model.layers[0].self_attn.q_proj).__name__ != "Linear"
    reply = engine.generate(engine.encode_chat([{"role": "user", "content": "怎么泡一壶好茶？"}]), GREEDY)
    assert reply.text and reply.completion_tokens == 24


def test_4_bits_without_groups_loads_on_the_cpu_through_the_torch_kernel(trained_tiny_dir, tmp_path, work):
    out = tmp_path / "rtn-4-rows"
    assert run_quantize("--model", trained_tiny_dir, "--out", out, "--method", "rtn", "--group-size", -1,
                        "--device", "cpu") == 0
    engine = load_engine(out, device="cpu")  # GPTQModel's CPU kernel would refuse groups of 384 weights
    reply = engine.generate(engine.encode_chat([{"role": "user", "content": "你好"}]), GREEDY)
    assert reply.text and reply.completion_tokens == 24


def test_conversation_calibration_at_8_bits_with_a_named_template(trained_tiny_dir, tmp_path, work, capsys):
    out = tmp_path / "chatml8"
    assert run_quantize("--model", trained_tiny_dir, "--out", out, "--bits", 8, "--calibration",
                        SAMPLES / "belle_conversations.jsonl", "--template", "chatml", "--nsamples", 16,
                        "--seqlen", 64, "--device", "cpu") == 0
    assert "gptq 8-bit, group size 128" in capsys.readouterr().out
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == 8
    assert json.loads((out / "belle.json").read_text())["template"] == "chatml"
    engine = load_engine(out, device="cpu")
    assert engine.template.name == "chatml" and "<|im_start|>" in engine.tokenizer.chat_template
    assert engine.generate(engine.encode_chat([{"role": "user", "content": "你好"}]), GREEDY).completion_tokens == 24


@pytest.fixture(scope="module")
def layerless_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("layerless") / "model", num_layers=0)


@pytest.mark.parametrize(("args", "expected"), [
    (["--bits", 5, "--method", "rtn"], ["--bits 5: choose one of 2, 3, 4, 8"]),
    (["--group-size", 96, "--method", "rtn"],
     ["--group-size 96 does not divide the input width of 12 layers", "model.layers.0.self_attn.q_proj (128)",
      "choose one of 16, 32, 64, 128, -1"]),
    ([], ["--method gptq needs --calibration"]),
    (["--calibration", SAMPLES / "heldout_zh.txt", "--nsamples", 16, "--seqlen", 128],
     ["too little calibration text", str(SAMPLES / "heldout_zh.txt"), "needs 2,048"]),
    (["--bits", 3, "--group-size", 0, "--method", "rtn", "--desc-act"],
     ["--group-size 0", "--method rtn has none"]),
])
def test_bad_arguments_are_clear_errors(trained_tiny_dir, tmp_path, work, capsys, args, expected):
    out = tmp_path / "out"
    assert run_quantize("--model", trained_tiny_dir, "--out", out, "--device", "cpu", *args) == 2
    error = capsys.readouterr().err
    assert all(part in error for part in expected), error
    assert "Traceback" not in error and not out.exists()


def test_a_model_with_no_quantizable_layers_is_an_error(layerless_dir, tmp_path, work, capsys):
    assert run_quantize("--model", layerless_dir, "--out", tmp_path / "out", "--method", "rtn", "--device", "cpu") == 2
    assert f"{layerless_dir}: no quantizable layers" in capsys.readouterr().err


def test_the_output_folder_must_be_new(trained_tiny_dir, tmp_path, work, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_quantize("--model", trained_tiny_dir, "--out", out, "--method", "rtn") == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    shutil.rmtree(out)
