"""`belle serve` through the clients users already run, with nothing of ours on the client side:
lm-evaluation-harness (`local-completions` and `local-chat-completions`, scored sample by sample
against `lm-eval --model hf` on the same folder), the `openai` client (streamed logprobs, echoed
prompt logprobs, `n`, `seed`, `models.retrieve`) and LangChain's `ChatOpenAI`.

The served model is the tiny random one; its `generation_config.json` sets no sampling, so a request
that omits the sampling fields decodes greedily, as `model.generate()` does.
"""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

from tests.chat.conftest import REPO, start_cli

pytestmark = pytest.mark.slow

MODEL = "tiny"
TASKS = REPO / "tests" / "chat" / "lm_eval_tasks"
QA, MC = "belle_tiny_qa", "belle_tiny_mc"
QUESTION = [{"role": "user", "content": "你好，请介绍一下北京的历史和美食。"}]
LOGPROB_TOLERANCE = 1e-3  # nats: a batched forward pass against a batch-1 one, both float32
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """`belle serve` on the tiny model as `tiny`, decoding concurrent requests together; yields its URL."""
    from transformers import GenerationConfig

    assert not GenerationConfig.from_pretrained(tiny_model_dir).do_sample  # greedy when a request says nothing
    with start_cli("serve", "--model", f"{MODEL}={tiny_model_dir}", ready="/health") as running:
        assert "batched decoding:" in running.log.read_text(encoding="utf-8"), "the batcher did not start"
        yield running.url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


# lm-evaluation-harness ------------------------------------------------------------------------------


def evaluate(model: str, model_args: dict, tasks: list[str], **options) -> dict[str, list[dict]]:
    """Run lm-eval in this process on the local tasks, offline; returns each task's logged samples
    (one dict per document: `resps`, the metrics, ...) in document order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.chdir(REPO)  # the tasks' data_files are relative to the repository root
        results = lm_eval.simple_evaluate(
            model=model, model_args=model_args, tasks=tasks, log_samples=True, bootstrap_iters=0,
            task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), **options)
    assert results is not None
    return {task: sorted(results["samples"][task], key=lambda s: s["doc_id"]) for task in tasks}


def hf_args(model_dir: Path) -> dict:
    # The API models send prompts as lm-eval tokenized them, without BOS unless asked (add_bos_token
    # False); `hf` follows the tokenizer's default, which adds `<s>` here. Pinning it scores both on
    # the same tokens, and matches the chat template, which carries no BOS.
    return {"pretrained": str(model_dir), "device": "cpu", "dtype": "float32", "add_bos_token": False}


@pytest.fixture(scope="module")
def hf_samples(tiny_model_dir):
    """`lm-eval --model hf` on the tiny folder, both tasks, plain prompts."""
    return evaluate("hf", hf_args(tiny_model_dir), [QA, MC], batch_size=1)


def test_lm_eval_completions_equal_hf_sample_by_sample(server, tiny_model_dir, hf_samples):
    """`local-completions` with its defaults (token-id prompts), several prompts per request and
    several requests at once: the same greedy answers and the same choice log-likelihoods as `hf`."""
    args = {"model": MODEL, "base_url": f"{server}/v1/completions", "tokenizer_backend": "huggingface",
            "tokenizer": str(tiny_model_dir), "num_concurrent": 3, "max_retries": 1, "timeout": 300}
    served = evaluate("local-completions", args, [QA, MC], batch_size=4)

    assert sum(bool(s["resps"][0][0]) for s in hf_samples[QA]) >= 3  # answers to compare, not empty strings
    for ours, theirs in zip(served[QA], hf_samples[QA], strict=True):
        assert ours["arguments"] == theirs["arguments"]
        assert ours["resps"] == theirs["resps"], ours["doc"]
        assert ours["exact_match"] == theirs["exact_match"]
    assert len(served[MC]) == 6
    for ours, theirs in zip(served[MC], hf_samples[MC], strict=True):
        ours_ll = [resp[0][0] for resp in ours["resps"]]
        theirs_ll = [resp[0][0] for resp in theirs["resps"]]
        assert ours_ll == pytest.approx(theirs_ll, abs=LOGPROB_TOLERANCE), ours["doc"]
        assert [resp[0][1] for resp in ours["resps"]] == [resp[0][1] for resp in theirs["resps"]]  # is_greedy
        assert ours["acc"] == theirs["acc"]


def test_lm_eval_chat_completions_equal_hf_with_chat_template(server, tiny_model_dir):
    """`local-chat-completions` with `--apply_chat_template`: the server renders the template, `hf`
    applies the folder's Jinja `chat_template`; the answers and scores are the same."""
    hf = evaluate("hf", hf_args(tiny_model_dir), [QA], batch_size=1, apply_chat_template=True)
    args = {"model": MODEL, "base_url": f"{server}/v1/chat/completions", "num_concurrent": 3, "max_retries": 1,
            "timeout": 300}
    served = evaluate("local-chat-completions", args, [QA], apply_chat_template=True)

    assert sum(bool(s["resps"][0][0]) for s in hf[QA]) >= 3
    assert [s["resps"] for s in served[QA]] == [s["resps"] for s in hf[QA]]
    assert [s["exact_match"] for s in served[QA]] == [s["exact_match"] for s in hf[QA]]


# openai client --------------------------------------------------------------------------------------


def test_streamed_chat_logprobs_equal_the_whole_reply(server, tokenizer):
    """`logprobs=True, top_logprobs=3`: the chunks' logprobs, joined, are the non-streamed reply's,
    one per generated token, whose bytes spell the reply (special tokens aside: the reply's text skips
    them, their logprobs name them); greedy picks the most likely token."""
    options = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24, "logprobs": True,
               "top_logprobs": 3}
    whole = client(server).chat.completions.create(**options)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 24
    spelled = b"".join(bytes(t.bytes) for t in content if t.token not in tokenizer.all_special_tokens)
    assert spelled.decode("utf-8", errors="replace") == whole.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        top = [t.logprob for t in token.top_logprobs]
        assert top == sorted(top, reverse=True) and all(p <= 0 for p in top)
        assert (token.token, token.logprob) == (token.top_logprobs[0].token, top[0])

    chunks = list(client(server).chat.completions.create(**options, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=LOGPROB_TOLERANCE)
    assert [[x.token for x in t.top_logprobs] for t in streamed] == [[x.token for x in t.top_logprobs] for t in content]


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    """The tiny model in float32 through transformers alone, to check the server's numbers."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval()


def test_echoed_prompt_logprobs(server, tokenizer, reference_model):
    """`echo=True, logprobs=2, max_tokens=0`: the prompt back, one log-probability per prompt token
    (the first None: nothing precedes it), equal to the model's own; token-id prompts alike."""
    import torch

    prompt = "北京是中国的首都，历史悠久。"
    text = client(server).completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    choice = text.choices[0]
    assert choice.text == prompt
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == text.usage.prompt_tokens
    assert text.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert all(1 <= len(top) <= 3 for top in choice.logprobs.top_logprobs[1:])  # the 2 likeliest and the token itself

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    by_ids = client(server).completions.create(model=MODEL, prompt=ids, echo=True, logprobs=2, max_tokens=0)
    served = by_ids.choices[0].logprobs.token_logprobs
    assert by_ids.usage.prompt_tokens == len(ids) and served[0] is None
    with torch.no_grad():
        logits = reference_model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert served[1:] == pytest.approx(expected.tolist(), abs=LOGPROB_TOLERANCE)
    assert all(math.isfinite(p) and p <= 0 for p in served[1:])


def test_n_choices(server):
    reply = client(server).chat.completions.create(model=MODEL, messages=QUESTION, n=3, temperature=1, max_tokens=8,
                                                   seed=11)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert reply.usage.completion_tokens == 3 * 8
    completions = client(server).completions.create(model=MODEL, prompt="北京", n=3, temperature=1, max_tokens=8, seed=11)
    assert sorted(c.index for c in completions.choices) == [0, 1, 2]


def test_seed_repeats_a_sampled_reply(server):
    def sample(seed: int) -> str:
        reply = client(server).chat.completions.create(model=MODEL, messages=QUESTION, temperature=1, max_tokens=16,
                                                       seed=seed)
        return reply.choices[0].message.content

    assert sample(SEEDS[0]) == sample(SEEDS[0])
    assert len({sample(seed) for seed in SEEDS}) > 1


def test_models_retrieve(server):
    model = client(server).models.retrieve(MODEL)
    assert (model.id, model.object) == (MODEL, "model")
    assert model.created > 0
    with pytest.raises(openai.NotFoundError) as error:
        client(server).models.retrieve("no-such-model")
    assert "no-such-model" in error.value.body["message"]


# LangChain ------------------------------------------------------------------------------------------


def chat_model(url: str, **options):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=MODEL, max_tokens=16, max_retries=0, timeout=120,
                      **options)


def test_langchain_invoke_and_stream(server):
    greedy = chat_model(server, temperature=0)
    reply = greedy.invoke(QUESTION[0]["content"])
    direct = client(server).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16)
    assert reply.content == direct.choices[0].message.content
    assert reply.usage_metadata["output_tokens"] == 16
    assert "".join(chunk.content for chunk in greedy.stream(QUESTION[0]["content"])) == reply.content

    with_logprobs = greedy.bind(logprobs=True).invoke(QUESTION[0]["content"])
    tokens = with_logprobs.response_metadata["logprobs"]["content"]
    assert len(tokens) == 16 and all(t["logprob"] <= 0 for t in tokens)


def test_langchain_n_and_seed(server):
    from langchain_core.messages import HumanMessage

    messages = [HumanMessage(QUESTION[0]["content"])]
    result = chat_model(server, temperature=1, n=2, seed=3).generate([messages])
    assert len(result.generations) == 1 and len(result.generations[0]) == 2
    assert all(g.message.content for g in result.generations[0])

    def sample(seed: int) -> str:
        return chat_model(server, temperature=1, seed=seed).invoke(messages).content

    assert sample(SEEDS[0]) == sample(SEEDS[0])
    assert len({sample(seed) for seed in SEEDS}) > 1
