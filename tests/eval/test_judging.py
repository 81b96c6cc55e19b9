"""Judge prompts for every class (BELLE's and ours), the judge's messages, reading scores, and the
pairwise judge's messages and verdicts."""

import pytest

from belle.eval.evalset import CLASSES, EvalItem, class_key, read_eval_set
from belle.eval.judging import (
    JUDGE_FORMATS,
    NO_REFERENCE,
    OUTPUT_RULE,
    PAIRWISE_NO_REFERENCE,
    PAIRWISE_SYSTEM_PROMPT,
    ParsedScore,
    default_judge_prompts_path,
    judge_messages,
    missing_prompts,
    pairwise_messages,
    parse_score,
    parse_verdict,
    read_judge_prompts,
)
from belle.records import DataError
from tests.conftest import BELLE_DATA
from tests.helpers import write_jsonl

BELLE_EVAL_SET = BELLE_DATA / "eval_set.json"
BELLE_PROMPTS = BELLE_DATA / "eval_prompt.json"
needs_belle = pytest.mark.skipif(
    not (BELLE_EVAL_SET.exists() and BELLE_PROMPTS.exists()), reason="BELLE's eval files are not in ../shared/belle-data"
)


@needs_belle
@pytest.mark.parametrize("prompts_path", [BELLE_PROMPTS, default_judge_prompts_path()], ids=["belle", "ours"])
def test_every_belle_class_finds_a_prompt(prompts_path):
    items = read_eval_set(BELLE_EVAL_SET)
    prompts = read_judge_prompts(prompts_path)
    assert missing_prompts(items, prompts) == []
    for item in items:  # "open qa" -> "open QA", "closed\xa0qa" -> "closed\xa0QA"
        judge_messages(item, "回答", prompts)


@needs_belle
def test_belle_prompt_keys_are_canonical():
    prompts = read_judge_prompts(BELLE_PROMPTS)
    assert set(prompts) == set(CLASSES) | {"translation"}


def test_our_prompts():
    prompts = read_judge_prompts(default_judge_prompts_path())
    assert set(prompts) == set(CLASSES) | {"translation"}
    assert all("得分" in p and "0" in p and "1" in p for p in prompts.values())
    assert "最终结果" in prompts["math"] and "材料" in prompts["closed qa"]


def test_missing_prompts_lists_each_class_once():
    items = [EvalItem("a", ("q",), "", "math"), EvalItem("b", ("q",), "", "poetry"), EvalItem("c", ("q",), "", "poetry")]
    assert missing_prompts(items, {"Math": "p"}) == ["poetry"]


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"prompt": "p"}, "class: missing"),
        ({"class": "math"}, "prompt: missing"),
        ({"class": "math", "prompt": " "}, "prompt: empty"),
        ({"class": 1, "prompt": "p"}, "class: must be a string"),
        ({"class": "MATH", "prompt": "p"}, "class: duplicate 'math' (first on line 1)"),
        ("[1, 2", "malformed JSON"),
        ("3", "record: not a JSON object"),
    ],
)
def test_bad_prompt_file_names_file_line_and_field(tmp_path, record, expected):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"class": "math", "prompt": "p"}, record])
    with pytest.raises(DataError) as e:
        read_judge_prompts(path)
    assert f"{path}:2: {expected}" in str(e.value)


def test_empty_prompt_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no judge prompts"):
        read_judge_prompts(write_jsonl(tmp_path / "p.jsonl", []))


PROMPTS = {"closed\xa0QA": "只依据材料评判。", "open QA": "评判事实是否准确。"}


def test_judge_messages_with_reference():
    item = EvalItem("x", ("材料：天是蓝的。问题：天是什么颜色？",), "蓝色", "closed qa")
    system, user = judge_messages(item, "  蓝色的。\n", PROMPTS)
    assert system == {"role": "system", "content": f"只依据材料评判。\n\n{OUTPUT_RULE}"}
    assert user["role"] == "user"
    text = user["content"]
    assert "【问题 开始】\n材料：天是蓝的。问题：天是什么颜色？\n【问题 结束】" in text
    assert "【标准答案 开始】\n蓝色\n【标准答案 结束】" in text
    assert "【模型回答 开始】\n蓝色的。\n【模型回答 结束】" in text
    assert text.index("【问题") < text.index("【标准答案") < text.index("【模型回答")
    assert NO_REFERENCE not in text and "得分: x" in text.splitlines()[-1]


def test_judge_messages_without_reference_and_multi_turn():
    item = EvalItem("y", ("推荐一本书", "换一本科幻的", "为什么推荐它？"), "", "open qa")
    _, user = judge_messages(item, "《三体》……", PROMPTS)
    text = user["content"]
    assert f"【标准答案 开始】\n{NO_REFERENCE}\n【标准答案 结束】" in text
    assert "第1轮用户：推荐一本书\n第2轮用户：换一本科幻的\n第3轮用户：为什么推荐它？" in text
    assert "3 轮" in text and "第3轮的回答" in text


def test_judge_messages_unknown_class():
    with pytest.raises(KeyError, match="poetry"):
        judge_messages(EvalItem("z", ("q",), "", "poetry"), "a", PROMPTS)


@pytest.mark.parametrize(
    "reply, score",
    [
        ("得分: 0.8", 0.8),
        ("得分：0.8", 0.8),
        ("得分：０．８", 0.8),  # full-width digits
        ("分数: 0.6", 0.6),
        ("评分为 0.5", 0.5),
        ("Score: 0.8", 0.8),
        ("SCORE is 0.9", 0.9),
        ("score=0.8", 0.8),
        ("得分: 0.8/1", 0.8),
        ("0.8/1", 0.8),
        ("Score: 8/10", 0.8),
        ("4/5", 0.8),
        ("rating: 4 out of 5", 0.8),
        ("得分: 80/100", 0.8),
        ("80分", 0.8),
        ("得分: 80分/100", 0.8),
        ("得分：1分", 1.0),
        ("得分: 0", 0.0),
        ("得分: 7", 0.7),  # 1 < x <= 10: a ten-point scale
        ("得分: 85", 0.85),  # 10 < x <= 100: a hundred-point scale
        ("得分: 80%", 0.8),
        ("**得分**: 0.7", 0.7),
        ("### 得分：**0.9**", 0.9),
        ("得分（0-1）：0.6", 0.6),
        ("得分: [[0.4]]", 0.4),
        ("[[8]]", 0.8),
        ("理由：步骤正确。\n得分: 1", 1.0),
        ("回答基本正确。\n\n0.75", 0.75),
        ("我给 0.9 分。", 0.9),
        ("综合来看打8分", 0.8),
        ("标准答案是 42，模型答了 41。\n得分: 0.2", 0.2),  # numbers in the reasoning are not the score
        ("初步得分: 0.6\n复查后修正，最终得分: 0.8", 0.8),  # the last label wins
        ("得分: 0.6，不过考虑到格式，我最终给 0.5 分", 0.5),
    ],
)
def test_parse_score(reply, score):
    parsed = parse_score(reply)
    assert parsed.score == pytest.approx(score)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "这个回答很好。",
        "I cannot score this answer.",
        "无法评分：模型回答为空。",
        "得分: N/A",
        "Score: 15/10",  # out of range
        "得分: 15/10",
        "得分: 250",
        "得分: -0.5",
        "得分: 0/0",
        "得分: 120%",
        "模型回答列出了 3 个要点。",  # a number, but no score
        "得分: 0.8\n更正，最终得分: 11/10",  # the last label decides, and it is out of range
    ],
)
def test_parse_score_failures_are_none_not_zero(reply):
    parsed = parse_score(reply)
    assert parsed.score is None
    assert parsed == ParsedScore(None, reply.strip())  # the whole reply is kept to read later


def test_parse_score_reason():
    assert parse_score("理由：结果正确，步骤清楚。\n得分: 1") == ParsedScore(1.0, "结果正确，步骤清楚。")
    assert parse_score("得分: 0.8") == ParsedScore(0.8, "")
    assert parse_score("得分: 0.3\n原因：漏掉了一个要点。") == ParsedScore(0.3, "漏掉了一个要点。")
    assert parse_score("回答正确，得分：1").reason == "回答正确，得分：1"  # reason and score share the line


# ---------------------------------------------------------------------------------------------
# Pairwise: the two answers' messages and the verdict


@pytest.mark.parametrize("reply, verdict", [
    ("A 更准确。\n[[A]]", "A"),
    ("两者都对，B 更简洁。\n\n[[B]]\n", "B"),
    ("难分高下。[[C]]", "tie"),
    ("[[平局]]", "tie"),
    ("[[ tie ]]", "tie"),
    ("结论：[[b]]", "B"),  # lower case inside double brackets
    ("最终判断：[A]", "A"),
    ("【B】", "B"),
    ("【平局】", "tie"),
    ("［［Ａ］］", "A"),  # full-width brackets and letter (NFKC)
    ("**[[B]]**", "B"),  # markdown emphasis
    ("起初我想给 [[A]]，但细看 B 的推导才对。\n[[B]]", "B"),  # the last marker wins
    ("[[C]] 不对，应该是 [[A]]", "A"),
    ("分析……\n结论：B", "B"),  # no marker: a last line that is only a verdict
    ("分析……\nVerdict: tie", "tie"),
    ("分析……\nA", "A"),
    ("两个回答各有长短，无法判断。", None),  # no verdict: a failure, never a tie
    ("", None),
    ("代码里 arr[a] 越界了，所以是助手A更好", None),  # `[a]` in code is no marker
    ("[[D]]", None),
    ("A 和 B 都还行", None),
    ("分析……\na", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_messages_show_both_answers_between_markers():
    item = EvalItem("q", ("一加一等于几？",), "2", "math")
    system, user = pairwise_messages(item, "等于2。", "等于3。")
    assert system == {"role": "system", "content": PAIRWISE_SYSTEM_PROMPT}
    assert "[[A]]" in PAIRWISE_SYSTEM_PROMPT and "[[B]]" in PAIRWISE_SYSTEM_PROMPT and "[[C]]" in PAIRWISE_SYSTEM_PROMPT
    text = user["content"]
    assert "【问题 开始】\n一加一等于几？\n【问题 结束】" in text
    assert "【标准答案 开始】\n2\n【标准答案 结束】" in text  # the same block as scoring's, BELLE's word
    assert text.index("等于2。") < text.index("【助手A的回答 结束】") < text.index("等于3。") < text.index("【助手B的回答 结束】")

    no_ref = pairwise_messages(EvalItem("q", ("写首诗",), "", "generation"), "诗一", "")[1]["content"]
    assert PAIRWISE_NO_REFERENCE in no_ref and "（空回答）" in no_ref

    multi = pairwise_messages(EvalItem("m", ("我叫小明。", "我叫什么？"), "小明", "open qa"), "小明", "不知道")[1]["content"]
    assert "第1轮用户：我叫小明。\n第2轮用户：我叫什么？" in multi
    assert "对第2轮的回复" in multi


def test_scoring_and_pairwise_show_the_question_and_reference_alike():
    item = EvalItem("q", ("一加一等于几？",), "2", "math")
    scored = judge_messages(item, "2", {"math": "判分"})[1]["content"]
    compared = pairwise_messages(item, "2", "3")[1]["content"]
    block = "【问题 开始】\n一加一等于几？\n【问题 结束】\n\n【标准答案 开始】\n2\n【标准答案 结束】\n\n"
    assert scored.startswith(block) and compared.startswith(block)



# ---------------------------------------------------------------------------------------------
# BELLE's page's message ("belle-page")

# Every class of BELLE's eval_prompt.json, spelled as there ("open QA", "closed\xa0QA"), with short
# hand-written prompts; one item per class, its class spelled as in BELLE's eval_set.json.
PAGE_PROMPTS = {
    "math": "P数学", "code": "P代码", "classification": "P分类", "extract": "P抽取", "open QA": "P开放",
    "closed\u00a0QA": "P封闭", "generation": "P生成", "brainstorming": "P头脑", "rewrite": "P改写",
    "translation": "P翻译", "summarization": "P摘要",
}
PAGE_CASES = [  # (class, question, std_answer, answer, the page's message written out)
    ("math", "1+1=?", "2", "2", "P数学 1+1=? 标准回答:2  模型回答：' 2'。请针对模型回答给出得分，顺便给出理由："),
    ("code", "写个循环", "for i in x: pass", "while 1: pass",
     "P代码 写个循环 标准回答:for i in x: pass  模型回答：' while 1: pass'。请针对模型回答给出得分，顺便给出理由："),
    ("classification", "猫是哺乳动物吗？", "是", "是的",
     "P分类 猫是哺乳动物吗？ 标准回答:是  模型回答：' 是的'。请针对模型回答给出得分，顺便给出理由："),
    ("extract", "找出人名：小明来了", "小明", "小明",
     "P抽取 找出人名：小明来了 标准回答:小明  模型回答：' 小明'。请针对模型回答给出得分，顺便给出理由："),
    ("open qa", "天为什么是蓝的？", "散射", "瑞利散射",
     "P开放 天为什么是蓝的？ 标准回答:散射  模型回答：' 瑞利散射'。请针对模型回答给出得分，顺便给出理由："),
    ("closed\u00a0qa", "材料：天是蓝的。问题：天是什么颜色？", "蓝色", "蓝色的。",
     "P封闭 材料：天是蓝的。问题：天是什么颜色？ 标准回答:蓝色  模型回答：' 蓝色的。'。请针对模型回答给出得分，顺便给出理由："),
    ("generation", "写一首诗", "", "春眠不觉晓",
     "P生成 写一首诗  模型回答： '春眠不觉晓'。请针对模型回答给出得分，顺便给出理由："),
    ("brainstorming", "周末做什么？", "", "爬山",
     "P头脑 周末做什么？  模型回答： '爬山'。请针对模型回答给出得分，顺便给出理由："),
    ("rewrite", "改写：我很高兴", "我非常开心", "我很开心",  # a reference, but BELLE's page never shows one for rewrite
     "P改写 改写：我很高兴  模型回答： '我很开心'。请针对模型回答给出得分，顺便给出理由："),
    ("translation", "翻译：cat", "猫", "猫咪",
     "P翻译 翻译：cat 标准回答:猫  模型回答：' 猫咪'。请针对模型回答给出得分，顺便给出理由："),
    ("summarization", "总结：今天下雨。", "", "下雨",  # no reference in a reference class: an empty one
     "P摘要 总结：今天下雨。 标准回答:  模型回答：' 下雨'。请针对模型回答给出得分，顺便给出理由："),
]


def test_formats_are_named():
    assert JUDGE_FORMATS == ("delimited", "belle-page")


@pytest.mark.parametrize("klass, question, std_answer, answer, expected", PAGE_CASES, ids=[c[0] for c in PAGE_CASES])
def test_belle_page_message_for_every_class(klass, question, std_answer, answer, expected):
    item = EvalItem("x", (question,), std_answer, class_key(klass))
    assert judge_messages(item, answer, PAGE_PROMPTS, "belle-page") == [{"role": "user", "content": expected}]


def test_belle_page_message_keeps_every_space():
    prompts = {"open QA": "  评判。\n"}  # as the file has it: read_judge_prompts does not strip either
    item = EvalItem("x", (" 问题？\n",), "\n答案 ", "open qa")
    (message,) = judge_messages(item, "  回答\n", prompts, "belle-page")
    assert message["content"] == "  评判。\n  问题？\n 标准回答:\n答案   模型回答：'   回答\n'。请针对模型回答给出得分，顺便给出理由："


def test_read_judge_prompts_keeps_the_prompt_as_written(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"class": "closed\u00a0QA", "prompt": "评判。 \n"}])
    assert read_judge_prompts(path) == {"closed qa": "评判。 \n"}
    (system, _) = judge_messages(EvalItem("x", ("q",), "a", "closed qa"), "b", read_judge_prompts(path))
    assert system["content"].startswith("评判。\n\n")  # the delimited format strips it


def test_belle_page_multi_turn_and_unknown_class_and_format():
    item = EvalItem("y", ("推荐一本书", "为什么？"), "", "generation")
    (message,) = judge_messages(item, "因为好看", PAGE_PROMPTS, "belle-page")
    assert message["content"] == ("P生成 （这是一段 2 轮的对话，用户依次提出以下内容）\n第1轮用户：推荐一本书\n第2轮用户：为什么？"
                                  "  模型回答： '因为好看'。请针对模型回答给出得分，顺便给出理由：")
    with pytest.raises(KeyError, match="poetry"):
        judge_messages(EvalItem("z", ("q",), "", "poetry"), "a", PAGE_PROMPTS, "belle-page")
    with pytest.raises(ValueError, match="--judge-format must be one of delimited, belle-page, not 'belle'"):
        judge_messages(item, "a", PAGE_PROMPTS, "belle")


def page_substitution(template: str, values: dict[str, str]) -> str:
    """A JavaScript template literal's `${name}` placeholders replaced by `values`, one by one."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    assert "${" not in template
    return template


# The two templates as ChatGPT_Score.html.temp (LianjiaTech/BELLE, eval/template_html) writes them.
NO_REFERENCE_TEMPLATE = "${prompt} ${question.question}  模型回答： '${userAnswer}'。请针对模型回答给出得分，顺便给出理由："
REFERENCE_TEMPLATE = ("${prompt} ${question.question} 标准回答:${question.std_answer}  模型回答：' ${userAnswer}'。"
                      "请针对模型回答给出得分，顺便给出理由：")


@needs_belle
def test_belle_page_message_for_one_item_of_every_class_of_belles_files(tmp_path):
    import json

    raw_prompts = [json.loads(line) for line in BELLE_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    raw_items = [json.loads(line) for line in BELLE_EVAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    # the items as `belle eval score` reads them (read_eval_set), beside the raw records the page reads
    items = read_eval_set(BELLE_EVAL_SET)
    assert len(items) == len(raw_items)
    prompts = read_judge_prompts(BELLE_PROMPTS)
    answer = " 模型的回答，\n带换行 "
    for record in raw_prompts:
        # BELLE's page finds the prompt with `item.class === question.class`: "open QA" never equals the set's
        # "open qa", so the page cannot score those; belle matches through class_key.
        same = [(raw, item) for raw, item in zip(raw_items, items) if class_key(raw["class"]) == class_key(record["class"])]
        if same:
            raw, item = same[0]
        else:  # BELLE's set has no translation item
            raw = {"question": "Translate: good morning", "std_answer": "早上好", "class": record["class"]}
            (item,) = read_eval_set(write_jsonl(tmp_path / "missing.jsonl", [raw]))
        template = NO_REFERENCE_TEMPLATE if raw["class"] in ("generation", "brainstorming", "rewrite") else REFERENCE_TEMPLATE
        expected = page_substitution(template, {"prompt": record["prompt"], "question.question": raw["question"],
                                                "question.std_answer": raw["std_answer"], "userAnswer": answer})
        assert judge_messages(item, answer, prompts, "belle-page") == [{"role": "user", "content": expected}], record


@pytest.mark.parametrize(
    "reply, score, reason",
    [
        ("得分: 0.8\n理由：回答正确，但不够完整。", 0.8, "回答正确，但不够完整。"),
        ("得分：0.8分", 0.8, ""),
        ("得分：0.8分\n理由：模型回答基本正确。", 0.8, "模型回答基本正确。"),
        ("得分：0.9\n\n理由：回答通顺，第2点可以给1分，第3点只能得0.5分。", 0.9, "回答通顺，第2点可以给1分，第3点只能得0.5分。"),
        ("模型回答得分：0.5分，理由：与标准答案有出入。", 0.5, "模型回答得分：0.5分，理由：与标准答案有出入。"),
        ("得分: 0\n理由: 答非所问。", 0.0, "答非所问。"),
        ("理由：无法判断。", None, "理由：无法判断。"),
        # the reason comes first and quotes a verb form: the labelled score still decides
        ("理由：不能给1分，因为漏了一步。\n得分：0.6", 0.6, "不能给1分，因为漏了一步。"),
        ("理由：最多打8分。\n得分：0.7\n说明：我给0.7分", 0.7, "最多打8分。\n说明：我给0.7分"),
        ("回答基本正确，我给0.7分。", 0.7, "回答基本正确，我给0.7分。"),  # no label: the verb form
    ],
)
def test_parse_score_of_belle_page_replies_reads_the_first_score(reply, score, reason):
    assert parse_score(reply, first=True) == ParsedScore(score, reason)
