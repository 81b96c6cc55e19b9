"""Reward sources of stages grpo and rloo: the rules on realistic texts, their checks, the reward
model on a tiny sequence-classification model, and the LLM judge against the scripted stub."""

import json
import math
import re

import pytest

from belle.cli import UsageError
from belle.eval.judging import default_judge_prompts_path, read_judge_prompts
from belle.testing.openai_stub import Fault, serve_stub
from belle.train.config import JudgeRewardConfig, RewardConfig
from belle.train.rewards import (
    REWARD_SOURCES, JudgeScore, RewardModelScore, build_rewards, final_answer, neutral_fill,
    reward_problems, same_number,
)
from tests.helpers import write_jsonl

PROMPTS = read_judge_prompts(default_judge_prompts_path())


def user(text):
    return [{"role": "user", "content": text}]


def reply(text):
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------
# final_answer and the rules

SCHOOL_MATH = {
    # BELLE school_math_0.25M / eval_set.json style outputs -> their final answer
    "首先计算出小胖计划看完这本书需要的天数：\n300页 ÷ 10页/天 = 30天\n然后计算出小胖实际看完这本书需要的天数：\n"
    "300页 ÷ 12页/天 ≈ 25天\n实际比计划少看的天数为：\n30天 - 25天 = 5天\n因此，小胖实际比计划少看了5天。": "5",
    "首先需要计算出还需要制作的衣服数量：\n980 - 320 = 660\n为了计算每天需要制作的衣服数量，我们可以将总数除以天数：\n"
    "660 ÷ 6 = 110\n因此，这家服装加工厂每天需要制作110套衣服，才能在6天内完成剩下的660套。": "110",
    "解题步骤如下：\n1. 用周长公式计算可得：120=2(35+w)，化简得 w=25。\n2. A=lw=35×25=875平方米。\n"
    "3. 因此，该长方形地的面积为875平方米。\n答案：875平方米。": "875",
    "根据题意可得：x+3x=96\n化简得：4x=96\n解得：x=24\n因此，百合花的数量为24，玫瑰花的数量为3x=72。\n答：玫瑰花有72支。": "72",
    "接下来，我们可以通过交叉相乘的方法求解x，即：\n15×5 = 3x\n75 = 3x\nx = 25\n因此，张姨要买5双鞋需要25元。": "25",
    "西红柿面积 / 整块菜地面积 = (1-5/8-2/8) / 1 = 1/8\n因此，种西红柿的面积占这块菜地的1/8。": "0.125",
    "最后，我们可以得出结论：赵老师带着47名学生参观海底世界需要支付的门票费用为6,096元。": "6096",
    "所以答案是 3/4": "0.75",
    "答案：１２": "12",
    "……共 15 个。": "15",
    "含盐率 = 25克 ÷ 125克 = 0.20\n因此，这盐水的含盐率是0.20或20%。": "0.2",
    "所以，2千克比5千克少60%。": "0.6",
    "3本 × 100张/本 = 300张相片。\n因此，3本相册可以放300张相片。": "300",
    "5. 因此，小明剩下的糖果数量应该是6颗糖- 3颗糖 = 3颗糖。": "3",
    "早上气温是3度，晚上下降了8度，所以晚上的气温是-5度。": "-5",
    "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72": "72",
    "The area is $\\frac{1}{3}$ of the square, so the answer is \\boxed{\\frac{1}{3}}.": "1/3",
    "一共是1.50元": "1.5",
    # 共 concludes only as 共/一共/总共 before a number or as 共有/共是/共计; not in 共同, 共享, 公共
    "小红有8个苹果，小明有7个，他们一共有15个苹果，比原来多了3个。": "15",
    "总共 12 本，还剩 4 本没看。": "12",
    "共计30元，找回20元。": "30",
    "把3个苹果共同分给2人，每人1.5个": "1.5",
    "公共汽车上原有30人，下去了12人，还剩18人": "18",
    "共享单车每小时2元，骑3小时要付6元": "6",
    "这道题没有给出足够的条件，无法计算。": None,
}


@pytest.mark.parametrize("text, expected", SCHOOL_MATH.items(), ids=range(len(SCHOOL_MATH)))
def test_final_answer_of_school_math_texts(text, expected):
    assert final_answer(text) == expected


def test_same_number_equal_values_and_rounded_decimals():
    assert final_answer("答案是 3/4") == final_answer("答案是０．７５０") == "0.75"
    assert same_number("1/3", "0.33") and same_number("0.333", "1/3")
    assert not same_number("0.3", "0.33") and not same_number("1/3", "0.3") and not same_number("12", "13")


def run_rule(reward, completions, end_ids=(2,), **kwargs):
    name = next(iter(reward.weights))
    (function,) = build_rewards(reward, end_ids)
    prompts = [user("题目")] * len(completions)
    ids = kwargs.pop("completion_ids", [[5, 6]] * len(completions))
    out = function(prompts=prompts, completions=[reply(c) for c in completions], completion_ids=ids, **kwargs)
    assert function.__name__ == name
    return out


def test_math_answer_against_the_reference():
    reference = "660 ÷ 6 = 110\n因此，这家服装加工厂每天需要制作110套衣服，才能在6天内完成剩下的660套。"
    completions = ["每天要做 (980-320)÷6 = 110 套。", "答案：120套", "我不知道。", "平均每天 660 ÷ 6 = 110（套）\n答：平均每天要做110套。"]
    rewards = run_rule(RewardConfig(weights={"math_answer": 1.0}), completions + ["答案：110"],
                       reference=[reference] * 4 + [""])
    assert rewards == [1.0, 0.0, 0.0, 1.0, None]  # no reference: nothing to check against


def test_format_length_and_eos_rules():
    assert run_rule(RewardConfig(weights={"format": 1.0}, format_pattern="。$"),
                    ["好的，我明白了。", "好的", "句号在中间。然后没有"]) == [1.0, 0.0, 0.0]
    lengths = [[1] * n for n in (3, 4, 5, 6, 8, 20)]
    assert run_rule(RewardConfig(weights={"length": 1.0}, length_target=4), ["x"] * 6, completion_ids=lengths) == \
        [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert run_rule(RewardConfig(weights={"eos": 1.0}), ["a", "b", "c"], completion_ids=[[5, 2], [5, 6], []]) == \
        [1.0, 0.0, 0.0]
    # every id generation stops on counts, e.g. a template's end-of-turn token (9 here) beside EOS
    assert run_rule(RewardConfig(weights={"eos": 1.0}), ["a", "b", "c"], end_ids=[2, 9],
                    completion_ids=[[5, 9], [5, 2], [9, 5]]) == [1.0, 1.0, 0.0]


@pytest.mark.slow
def test_eos_stops_on_the_templates_end_of_turn_like_generation(tiny_model_dir):
    """chatml ends a reply with <|im_end|>, not EOS: generation stops there, so `eos` must reward it."""
    from transformers import AutoModelForCausalLM

    from belle.modeling import load_tokenizer
    from belle.templates import get_template
    from belle.train.run import set_reply_ends

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    set_reply_ends(model, tokenizer, get_template("chatml"))
    end_ids = model.generation_config.eos_token_id
    (im_end,) = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert im_end != tokenizer.eos_token_id and set(end_ids) == {im_end, tokenizer.eos_token_id}
    completion_ids = [[5, im_end], [5, tokenizer.eos_token_id], [5, 6], []]
    assert run_rule(RewardConfig(weights={"eos": 1.0}), ["a", "b", "c", "d"], end_ids=end_ids,
                    completion_ids=completion_ids) == [1.0, 1.0, 0.0, 0.0]
    assert run_rule(RewardConfig(weights={"eos": 1.0}), ["a"], end_ids=7, completion_ids=[[7]]) == [1.0]  # one id


def test_build_rewards_in_order_with_names_and_weights():
    reward = RewardConfig(weights={"eos": 0.5, "math_answer": 2, "format": -1.0, "length": 0.1},
                          format_pattern="答案")
    functions = build_rewards(reward, [2])
    assert [f.__name__ for f in functions] == ["eos", "math_answer", "format", "length"]  # TRL's names, weights' order
    assert set(REWARD_SOURCES) == {"model", "judge", "math_answer", "format", "length", "eos"}


def test_neutral_fill_by_prompt_group():
    assert neutral_fill([0.2, None, 0.6, None, None, 1.0], ["a", "a", "a", "b", "b", "c"]) == \
        [0.2, pytest.approx(0.4), 0.6, None, None, 1.0]


# ---------------------------------------------------------------------------------------------
# reward_problems


def one(problems, *words):
    assert len(problems) == 1, problems
    assert all(word in problems[0] for word in words), problems[0]
    return problems[0]


def test_problems_of_names_and_weights():
    assert reward_problems(RewardConfig(weights={"math_answer": 1.0, "eos": 0.2})) == []
    one(reward_problems(RewardConfig(weights={"math": 1.0})), "reward.weights", "'math'", "did you mean 'math_answer'")
    one(reward_problems(RewardConfig(weights={"rm": 1.0})), "'rm'", "the sources are model, judge")
    one(reward_problems(RewardConfig(weights={"lenght": 1.0})), "did you mean 'length'")
    for bad in (0, 0.0, math.nan, math.inf, "1"):
        one(reward_problems(RewardConfig(weights={"eos": bad})), "reward.weights.eos", "finite number other than 0")
    one(reward_problems(RewardConfig(weights={"length": 1.0}, length_target=0)), "reward.length_target")


def test_problems_of_the_format_source():
    one(reward_problems(RewardConfig(weights={"format": 1.0})), "reward.format_pattern", "regular expression")
    one(reward_problems(RewardConfig(weights={"format": 1.0}, format_pattern="(答案")), "reward.format_pattern",
        "'(答案'", "not a valid regular expression")


def write_model_folder(folder, architectures, num_labels=1, template=True):
    folder.mkdir(parents=True, exist_ok=True)
    labels = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    (folder / "config.json").write_text(json.dumps({"architectures": architectures, "id2label": labels}))
    (folder / "model.safetensors").write_bytes(b"")
    if template:
        (folder / "chat_template.jinja").write_text("{{ messages }}")
    return folder


def test_problems_of_the_model_source(tmp_path):
    rm = write_model_folder(tmp_path / "rm", ["LlamaForSequenceClassification"])
    assert reward_problems(RewardConfig(weights={"model": 1.0}, model=str(rm))) == []
    one(reward_problems(RewardConfig(weights={"model": 1.0})), "reward.model", "stage=rm")
    one(reward_problems(RewardConfig(weights={"model": 1.0}, model=str(tmp_path / "nowhere"))), "no config.json", "stage=rm")
    causal = write_model_folder(tmp_path / "sft", ["LlamaForCausalLM"])
    one(reward_problems(RewardConfig(weights={"model": 1.0}, model=str(causal))), "not a reward model", "stage=rm")
    two = write_model_folder(tmp_path / "classifier", ["BertForSequenceClassification"], num_labels=2)
    one(reward_problems(RewardConfig(weights={"model": 1.0}, model=str(two))), "2 labels", "num_labels 1")
    bare = write_model_folder(tmp_path / "bare", ["LlamaForSequenceClassification"], template=False)
    one(reward_problems(RewardConfig(weights={"model": 1.0}, model=str(bare))), "chat_template")
    one(reward_problems(RewardConfig(weights={"eos": 1.0}, model=str(rm))), "reward.model is set", "model: 1.0")


def judge_config(**overrides):
    return JudgeRewardConfig(**{"model": "judge", "base_url": "http://127.0.0.1:9/v1", "cache": "off", **overrides})


def test_problems_of_the_judge_source(tmp_path, monkeypatch):
    def problems(**overrides):
        return reward_problems(RewardConfig(weights={"judge": 1.0}, judge=judge_config(**overrides)))

    monkeypatch.delenv("BELLE_TEST_JUDGE_KEY", raising=False)
    assert problems() == []  # a loopback endpoint needs no key
    one(problems(model=""), "reward.judge.model")
    one(problems(base_url="https://judge.example.com/v1", api_key_env="BELLE_TEST_JUDGE_KEY"),
        "reward.judge.api_key_env", "BELLE_TEST_JUDGE_KEY", "not set")
    monkeypatch.setenv("BELLE_TEST_JUDGE_KEY", "sk-test")
    assert problems(base_url="https://judge.example.com/v1", api_key_env="BELLE_TEST_JUDGE_KEY") == []
    one(problems(concurrency=0), "reward.judge.concurrency")
    one(problems(prompts=str(tmp_path / "missing.jsonl")), "reward.judge.prompts", "missing.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"class": "generation", "prompt": "评一下"}, "{broken"])
    one(problems(prompts=str(bad)), "reward.judge.prompts", f"{bad}:2")
    only_math = write_jsonl(tmp_path / "math.jsonl", [{"class": "math", "prompt": "看答案对不对"}])
    one(problems(prompts=str(only_math)), "reward.judge.default_class", "'generation'", "math")
    assert problems(prompts=str(only_math), default_class="math") == []


# ---------------------------------------------------------------------------------------------
# The reward model source


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory):
    """A random one-label sequence-classification model on the tiny model's config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from belle.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_reward_model_scores_a_batch_like_single_forwards(tiny_rm_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert reward_problems(RewardConfig(weights={"model": 1.0}, model=str(tiny_rm_dir))) == []
    (score,) = build_rewards(RewardConfig(weights={"model": 1.0}, model=str(tiny_rm_dir)), [2])
    assert isinstance(score, RewardModelScore) and score.model is None  # nothing loads before the first call
    prompts = [user("你好"), user("请计算 3 + 4 等于多少，并写出步骤。"), user("写一首关于春天的短诗。")]
    completions = [reply("你好！有什么可以帮你？"), reply("3 + 4 = 7。答案：7"), reply("春风拂面，柳绿花红。")]
    prompts, completions = prompts * 2, completions[::-1] + completions
    first = score(prompts=prompts, completions=completions, completion_ids=[[1]] * 6)
    assert len(first) == 6 and all(isinstance(x, float) and math.isfinite(x) for x in first)
    assert score(prompts=prompts, completions=completions, completion_ids=[[1]] * 6) == first

    tokenizer = AutoTokenizer.from_pretrained(tiny_rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()
    for prompt, completion, got in zip(prompts, completions, first):
        text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        assert text.startswith("Human: ") and text.endswith(tokenizer.eos_token)  # the RM's own template, whole
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            expected = model(**ids).logits[0, 0].item()
        assert got == pytest.approx(expected, abs=1e-4)
    assert len(set(first[3:])) == 3  # different texts, different scores


# ---------------------------------------------------------------------------------------------
# The judge source, against the scripted OpenAI stub


def answer_in(request):
    return re.search(r"【模型回答 开始】\n(.*)\n【模型回答 结束】", request["messages"][-1]["content"], re.S)[1]


class ScriptedJudge:
    """Answers each judge request by the completion it judges: `score:x` -> "得分: x"; `flaky:x` ->
    two 500s, then x; `broken` -> always a malformed 200; `mute` -> a reply with no score; `auth` -> 401."""

    def __init__(self):
        self.attempts = {}

    def __call__(self, request):
        answer = answer_in(request)
        self.attempts[answer] = self.attempts.get(answer, 0) + 1
        kind, _, value = answer.partition(":")
        if kind == "flaky" and self.attempts[answer] <= 2:
            return Fault(500)
        if kind == "broken":
            return Fault(malformed=True)
        if kind == "mute":
            return "这个回答我无法评分。"
        if kind == "auth":
            return Fault(401, body=json.dumps({"error": {"message": "bad key sk-secret-123"}}))
        return f"理由：还可以。\n得分: {value}"


def judge_for(stub, tmp_path, **overrides):
    return JudgeScore(JudgeRewardConfig(**{"model": "judge", "base_url": stub.url, "max_retries": 2,
                                           "cache": str(tmp_path / "cache.sqlite"), **overrides}), backoff_base=0.01)


def test_judge_scores_with_faults_counted_and_neutral_filled(tmp_path):
    prompts = [user("介绍一下长城。")] * 4 + [user("写一首诗。")] * 2
    completions = [reply(t) for t in ("score:0.8", "flaky:0.9", "broken", "mute", "broken", "mute")]
    logged = []
    with serve_stub(ScriptedJudge()) as stub:
        judge = judge_for(stub, tmp_path)
        scores = judge(prompts=prompts, completions=completions, completion_ids=[[1]] * 6,
                       reference=["长城是中国古代的军事防御工程。"] + [""] * 5, **{"class": ["open qa"] * 4 + [""] * 2},
                       log_metric=lambda name, value: logged.append((name, value)))
        requests = stub.requests
    # the failed ones get their group's mean (0.85), never 0; a group with no score at all gets None
    assert scores == [0.8, 0.9, pytest.approx(0.85), pytest.approx(0.85), None, None]
    assert logged == [("judge/failed", 4.0)]
    # "broken" and "mute" each appear twice but are asked once per distinct question
    by_answer = {}
    for request in requests:
        by_answer.setdefault((request["messages"][1]["content"], answer_in(request)), []).append(request)
    assert len(by_answer) == 6
    assert all(r["temperature"] == 0 and r["max_tokens"] <= 1024 for r in requests)
    systems = {answer_in(r): r["messages"][0]["content"] for r in requests}
    assert systems["score:0.8"].startswith(PROMPTS["open qa"])  # the record's class
    poem = [r for r in requests if "写一首诗" in r["messages"][1]["content"]]
    assert poem and all(r["messages"][0]["content"].startswith(PROMPTS["generation"]) for r in poem)  # default class
    with_reference = next(r for r in requests if answer_in(r) == "score:0.8")["messages"][1]["content"]
    assert "【标准答案 开始】\n长城是中国古代的军事防御工程。" in with_reference


def test_judge_rerun_is_served_by_the_cache(tmp_path):
    prompts = [user("1 + 1 等于几？")] * 4
    completions = [reply(t) for t in ("score:1", "score:0.2", "mute", "score:1")]
    with serve_stub(ScriptedJudge()) as stub:
        judge = judge_for(stub, tmp_path)
        first = judge(prompts=prompts, completions=completions, completion_ids=[[1]] * 4)
        calls = stub.calls  # the same completion twice is asked once
        again = judge_for(stub, tmp_path)(prompts=prompts, completions=completions, completion_ids=[[1]] * 4)
        assert stub.calls == calls == 3  # a resumed run pays for nothing it already asked
    assert first == again == [1.0, 0.2, pytest.approx((1 + 0.2 + 1) / 3), 1.0]


def test_judge_auth_failure_is_a_usage_error_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BELLE_TEST_JUDGE_KEY", "sk-secret-123")
    with serve_stub(ScriptedJudge()) as stub:
        judge = judge_for(stub, tmp_path, api_key_env="BELLE_TEST_JUDGE_KEY")
        with pytest.raises(UsageError) as caught:
            judge(prompts=[user("你好")] * 2, completions=[reply("auth"), reply("score:1")], completion_ids=[[1]] * 2)
    message = str(caught.value)
    assert "reward.judge" in message and stub.url in message and "BELLE_TEST_JUDGE_KEY" in message
    assert "sk-secret-123" not in message


def test_judge_without_a_key_for_a_remote_endpoint_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BELLE_TEST_JUDGE_KEY", raising=False)
    judge = JudgeScore(JudgeRewardConfig(model="judge", base_url="https://judge.example.com/v1", cache="off",
                                         api_key_env="BELLE_TEST_JUDGE_KEY"))
    with pytest.raises(UsageError, match="BELLE_TEST_JUDGE_KEY"):
        judge(prompts=[user("你好")], completions=[reply("好")], completion_ids=[[1]])
