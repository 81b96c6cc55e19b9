"""`EngineLM`, lm-eval's `LM` over a belle engine: a GGUF file through `belle eval bench` scores as
lm-eval's `HFLM` does on the transformers folder it was exported from, and the same adapter over the
transformers `Engine` equals HFLM (an independent check of the tokenization split)."""

import dataclasses
import json

import numpy as np
import pytest

from belle.eval.bench import task_metrics
from tests.eval.conftest import lm_eval_results, loglikelihoods

pytestmark = pytest.mark.slow  # each test imports lm-eval and loads a model

PAIRS = [  # (context, continuation): trailing space moved, empty context, several tokens, Chinese
    ("中国的首都是", "北京"),
    ("The capital of France is ", "Paris"),
    ("", "hello world"),
    ("问题：一加一等于几？\n答案：", "二。\n"),
    ("Question: 2+2=?\nA. 3\nB. 4\nAnswer:", " B"),
]


@pytest.fixture(scope="module")
def hflm(tiny_model_dir, tiny_engine):
    """lm-eval's HFLM on the tiny model's transformers folder, its chat template belle's."""
    from lm_eval.models.huggingface import HFLM

    from belle.modeling import load_model, load_tokenizer
    from belle.templates import to_jinja

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = to_jinja(tiny_engine.template)
    model = load_model(tiny_model_dir, device="cpu", tokenizer=tokenizer).eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=tiny_engine.context_length)


@pytest.fixture(scope="module")
def gguf_lm(tiny_gguf_f32):
    from belle.eval.lm_models import EngineLM
    from belle.llamacpp import load_gguf_engine

    lm = EngineLM(load_gguf_engine(tiny_gguf_f32), batch_size=4)
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def engine_lm(tiny_engine):
    from belle.eval.lm_models import EngineLM

    return EngineLM(tiny_engine, batch_size=4)


def instances(name, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=name, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def hf_results(hflm, local_task_manager, offline):
    return lm_eval_results(hflm, local_task_manager)


def test_tokenization_split_equals_hflm(hflm, engine_lm, gguf_lm):
    for context, continuation in PAIRS:
        if context:
            assert engine_lm._encode_pair(context, continuation) == hflm._encode_pair(context, continuation)
            assert gguf_lm._encode_pair(context, continuation) == hflm._encode_pair(context, continuation)
    assert gguf_lm.prefix_token_id == hflm.prefix_token_id and gguf_lm.eot_token_id == hflm.eot_token_id


def test_loglikelihood_of_pairs_equals_hflm(hflm, engine_lm, gguf_lm):
    requests = instances("loglikelihood", PAIRS)
    expected = hflm.loglikelihood(requests)
    through_engine = engine_lm.loglikelihood(requests)
    through_gguf = gguf_lm.loglikelihood(requests)
    assert [greedy for _, greedy in through_engine] == [greedy for _, greedy in expected]
    assert [greedy for _, greedy in through_gguf] == [greedy for _, greedy in expected]
    np.testing.assert_allclose([s for s, _ in through_engine], [s for s, _ in expected], atol=1e-4, rtol=0)
    np.testing.assert_allclose([s for s, _ in through_gguf], [s for s, _ in expected], atol=2e-3, rtol=0)
    assert all(score < 0 for score, _ in expected)


def test_loglikelihood_rolling_windows_equal_hflm(hflm, tiny_engine, gguf_lm):
    from lm_eval.models.huggingface import HFLM

    from belle.eval.lm_models import EngineLM

    text = "床前明月光，疑是地上霜。举头望明月，低头思故乡。The quick brown fox jumps over the lazy dog."
    requests = instances("loglikelihood_rolling", [(text,)])
    [whole] = hflm.loglikelihood_rolling(requests)
    np.testing.assert_allclose(gguf_lm.loglikelihood_rolling(requests), [whole], atol=5e-3, rtol=0)
    # 16-token windows: HFLM's max_length counts the inputs, the engine's context the whole sequence
    short = HFLM(pretrained=hflm.model, tokenizer=hflm.tokenizer, batch_size=8, max_length=16)
    windowed = EngineLM(dataclasses.replace(tiny_engine, context_length=17))
    [expected] = short.loglikelihood_rolling(requests)
    assert len(hflm.tok_encode(text)) > 40 and expected != pytest.approx(whole, abs=1e-2)  # several windows, less context
    np.testing.assert_allclose(windowed.loglikelihood_rolling(requests), [expected], atol=1e-4, rtol=0)


def test_generate_until_stops_as_hflm(hflm, engine_lm, gguf_lm):
    args = [("中国的首都是", {"until": ["。"], "max_gen_toks": 12, "do_sample": False}),
            ("Question: 2+2=?\nAnswer:", {"until": ["\n", "Question"], "max_gen_toks": 6}),
            ("中国的首都是", {"until": ["。"], "max_gen_toks": 12, "do_sample": False})]
    requests = instances("generate_until", args)
    expected = hflm.generate_until(requests)
    assert engine_lm.generate_until(requests) == expected
    assert gguf_lm.generate_until(requests) == expected
    assert expected[0] == expected[2] and any(expected)


def test_chat_template_renders_as_hflm(hflm, gguf_lm):
    history = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "1+1=?"},
               {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2=?"}]
    assert gguf_lm.apply_chat_template(history) == hflm.apply_chat_template(history)
    prefilled = history + [{"role": "assistant", "content": "答案："}]
    assert gguf_lm.apply_chat_template(prefilled, add_generation_prompt=False) == \
        hflm.apply_chat_template(prefilled, add_generation_prompt=False)
    assert gguf_lm.chat_template(True) == hflm.chat_template(True)
    assert "/" not in gguf_lm.tokenizer_name


def test_gguf_task_samples_equal_hflm(gguf_lm, hf_results, local_task_manager, offline):
    results = lm_eval_results(gguf_lm, local_task_manager)
    assert task_metrics(results["results"]["belle_zh_mc"]) == task_metrics(hf_results["results"]["belle_zh_mc"])
    got, expected = loglikelihoods(results), loglikelihoods(hf_results)
    np.testing.assert_allclose([[s for s, _ in doc] for doc in got], [[s for s, _ in doc] for doc in expected],
                               atol=2e-3, rtol=0)
    assert [[g for _, g in doc] for doc in got] == [[g for _, g in doc] for doc in expected]


def test_bench_cli_runs_a_gguf_file(belle_main, tiny_gguf_f32, hf_results, local_tasks, tmp_path, offline):
    run = tmp_path / "run"
    done = belle_main("eval", "bench", "--model", tiny_gguf_f32, "--tasks", "belle_zh_mc", "--output", run)
    assert done.returncode == 0, done.stderr
    bench = json.loads((run / "bench.json").read_text(encoding="utf-8"))
    assert bench["model"] == str(tiny_gguf_f32) and bench["chat_template"] == {"belle_zh_mc": False}
    expected = task_metrics(hf_results["results"]["belle_zh_mc"])
    assert bench["tasks"]["belle_zh_mc"] == pytest.approx(expected, abs=1e-9)
    assert bench["loaded"] == {"dtype": "GGUF (as exported)", "device": "cpu (llama.cpp)"}

    refused = belle_main("eval", "bench", "--model", tiny_gguf_f32, "--tasks", "belle_zh_mc", "--device", "cuda",
                         "--output", tmp_path / "other")
    assert refused.returncode == 2 and "runs on the CPU through llama.cpp" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
