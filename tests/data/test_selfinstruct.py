"""Seed tasks, the self-instruct prompt and tolerant parsing of the model's numbered reply."""

import itertools
import json
import re
from dataclasses import replace

import pytest

from belle.data.selfinstruct import (
    CATEGORIES,
    ParsedReply,
    Task,
    build_prompt,
    default_seed_path,
    format_task,
    normalize_category,
    parse_reply,
    read_seed_tasks,
)
from belle.records import DataError
from tests.conftest import BELLE_DATA
from tests.helpers import read_jsonl

BLACKLIST = ("图片", "图像", "照片", "文件", "图表", "链接", "http", "openai", "chatgpt", "gpt")


def char_similarity(a: str, b: str) -> float:
    """Character-level LCS F1 of two texts, ignoring punctuation and spaces."""
    from rapidfuzz.distance import LCSseq

    a, b = ("".join(c for c in s.lower() if c.isalnum()) for s in (a, b))
    return 2 * LCSseq.similarity(a, b) / (len(a) + len(b))


# ---------------------------------------------------------------------------------------------
# Categories


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("改写", "rewrite"),
        ("open QA", "open qa"),
        ("closed\xa0QA", "closed qa"),  # eval_prompt.json's spelling
        ("Closed_QA", "closed qa"),
        ("开放问答", "open qa"),
        ("封闭式问答", "closed qa"),
        ("代码生成", "code"),
        ("  Brainstorming ", "brainstorming"),
        ("闲聊/对话", "chat"),
        ("对话", "chat"),
        ("数学题", "math"),
        ("摘要任务", "summarization"),
        ("信息抽取（extract）", "extract"),
        ("ＭＡＴＨ", "math"),
        ("分类", "classification"),
        ("天气预报", None),
        ("", None),
    ],
)
def test_normalize_category(raw, expected):
    assert normalize_category(raw) == expected


def test_every_category_is_its_own_canonical_name():
    assert len(CATEGORIES) == 11 and {"open qa", "closed qa", "math", "code"} <= set(CATEGORIES)
    for name, chinese in CATEGORIES.items():
        assert normalize_category(name) == normalize_category(chinese) == name


# ---------------------------------------------------------------------------------------------
# Our seed set


@pytest.fixture(scope="module")
def seeds() -> list[Task]:
    return read_seed_tasks(default_seed_path())


def test_seed_file_is_belle_format_with_categories():
    for line in default_seed_path().read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"id", "name", "instruction", "instances", "is_classification", "category"}
        assert re.fullmatch(r"seed_task_\d+", record["id"]) and re.fullmatch(r"[a-z0-9_]+", record["name"])
        assert record["category"] in CATEGORIES
        assert record["is_classification"] == (record["category"] == "classification")


def test_seed_set_is_large_and_covers_every_category(seeds):
    assert len(seeds) >= 48
    counts = {name: sum(t.category == name for t in seeds) for name in CATEGORIES}
    assert min(counts.values()) >= 4, counts
    with_input = sum(bool(t.input) for t in seeds)
    assert 0.35 <= with_input / len(seeds) <= 0.65


def test_seed_tasks_are_clean(seeds):
    for task in seeds:
        assert task.instruction and task.output and task.input != task.output
        assert task.instruction == task.instruction.strip() and task.output == task.output.strip()
        assert re.search(r"[\u4e00-\u9fff]", task.instruction), task.instruction
        text = f"{task.instruction}\n{task.input}\n{task.output}".lower()
        assert not [word for word in BLACKLIST if word in text], task.instruction


def test_seed_instructions_are_not_near_duplicates(seeds):
    pytest.importorskip("rapidfuzz")
    worst = max(
        itertools.combinations((t.instruction for t in seeds), 2), key=lambda pair: char_similarity(*pair)
    )
    assert char_similarity(*worst) <= 0.6, worst


def test_chat_seeds_have_ids_and_a_topic_or_question():
    from tests.conftest import SAMPLES

    rows = read_jsonl(SAMPLES / "chat_seeds.jsonl")
    assert len(rows) >= 16
    assert [row["id"] for row in rows] == [f"chat-seed-{i}" for i in range(len(rows))]
    for row in rows:
        (kind,) = set(row) - {"id"}
        assert kind in ("topic", "question") and row[kind].strip()
    topics = sum("topic" in row for row in rows)
    assert 0.3 * len(rows) <= topics <= 0.7 * len(rows)


# ---------------------------------------------------------------------------------------------
# Reading seed files


def test_reads_belles_own_seed_file():
    path = BELLE_DATA / "zh_seed_tasks.json"
    if not path.exists():
        pytest.skip(f"{BELLE_DATA} is absent")
    tasks = read_seed_tasks(path)
    assert len(tasks) == 175
    assert all(t.instruction and t.output and t.category is None for t in tasks)
    assert all(t.instruction == t.instruction.strip() for t in tasks)  # some start with "\n" there
    assert sum(not t.input for t in tasks) == 49


def test_reads_a_json_array_with_line_numbers(tmp_path):
    path = tmp_path / "seeds.json"
    records = [
        {"instruction": "说一个成语", "instances": [{"input": "", "output": "画蛇添足"}]},
        {"instruction": "翻译", "instances": [{"input": "cat", "output": "猫"}], "category": "改写"},
    ]
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    assert read_seed_tasks(path) == [Task("说一个成语", "", "画蛇添足"), Task("翻译", "cat", "猫", "rewrite")]
    records.append({"instruction": "写一首诗", "instances": []})
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"seeds\.json:\d+: instances:"):
        read_seed_tasks(path)


GOOD = '{"instruction": "说一个成语", "instances": [{"input": "", "output": "画蛇添足"}]}'


@pytest.mark.parametrize(
    "bad_line, field",
    [
        ('{"instances": [{"input": "", "output": "x"}]}', "instruction: missing"),
        ('{"instruction": "  ", "instances": [{"input": "", "output": "x"}]}', "instruction: must be a non-empty string"),
        ('{"instruction": "问", "instances": []}', "instances: must be a non-empty list"),
        ('{"instruction": "问", "instances": {"input": "", "output": "x"}}', "instances: must be a non-empty list"),
        ('{"instruction": "问", "instances": [{"input": 3, "output": "x"}]}', r"instances\[0\]\.input: must be a string"),
        ('{"instruction": "问", "instances": [{"input": ""}]}', r"instances\[0\]\.output: missing"),
        ('{"instruction": "问", "instances": [{"input": "", "output": ["x"]}]}', r"instances\[0\]\.output: must be a string"),
        ('{"instruction": "问", "instances": [{"input": "", "output": "x"}], "category": "天气"}', "category: unknown"),
        ('{"instruction": "问", "instances": [', "malformed JSON"),
        ('["not", "an", "object"]', "record: expected a JSON object"),
    ],
)
def test_bad_seed_files_name_file_line_and_field(tmp_path, bad_line, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: {field}"):
        read_seed_tasks(path)


def test_missing_seed_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_seed_tasks(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------
# The prompt


def example_block(prompt: str) -> str:
    """The numbered example items of a prompt, without the opened last item."""
    return prompt[prompt.index("\n###\n") + 1 : prompt.rindex("###")]


def test_prompt_numbers_examples_and_opens_the_next_item(seeds):
    examples = [seeds[0], seeds[20], seeds[50]]
    prompt = build_prompt(examples, 10)
    assert prompt.endswith("###\n4. 类别:")
    for number, task in enumerate(examples, start=1):
        assert f"{number}. 指令: {task.instruction}\n" in prompt
        assert f"{number}. 类别: {CATEGORIES[task.category]}\n" in prompt
        assert task.output in prompt and (task.input or "<无输入>") in prompt
    assert "5. 指令" not in prompt and "10个" in prompt and "第4个" in prompt
    for chinese in CATEGORIES.values():
        assert chinese in prompt
    for requirement in ("<无输入>", "图片", "音频", "视频", "文件", "闹钟", "中文", "问句", "祈使句"):
        assert requirement in prompt


def test_prompt_needs_room_for_new_tasks(seeds):
    with pytest.raises(ValueError, match="num_tasks"):
        build_prompt(seeds[:3], 3)


def test_prompt_examples_parse_back_to_the_same_tasks(seeds):
    for start in range(0, len(seeds), 3):
        examples = seeds[start : start + 3]
        parsed = parse_reply(example_block(build_prompt(examples, 10)), 1, truncated=False)
        assert parsed == ParsedReply(list(examples))


def test_belles_seeds_without_categories_round_trip_too():
    path = BELLE_DATA / "zh_seed_tasks.json"
    if not path.exists():
        pytest.skip(f"{BELLE_DATA} is absent")
    tasks = read_seed_tasks(path)
    text = "\n".join(format_task(task, number) for number, task in enumerate(tasks, start=1))
    assert parse_reply(text, 1, truncated=False) == ParsedReply(tasks)


# ---------------------------------------------------------------------------------------------
# Parsing replies

# What a model writes after the prompt's "###\n4. 类别:".
WELL_FORMED = """ 改写
4. 指令: 把下面这句话改成疑问句。
4. 输入:
今天会下雨。
4. 输出:
今天会下雨吗？
###
5. 类别: 头脑风暴
5. 指令: 给新开的面馆想三个名字。
5. 输入:
<无输入>
5. 输出:
1. 一碗香
2. 面面俱到
3. 老街面馆
###
6. 类别: 数学
6. 指令: 计算 12 × 15。
6. 输入:
<无输入>
6. 输出:
12 × 15 = 180。
"""

EXPECTED = [
    Task("把下面这句话改成疑问句。", "今天会下雨。", "今天会下雨吗？", "rewrite"),
    Task("给新开的面馆想三个名字。", "", "1. 一碗香\n2. 面面俱到\n3. 老街面馆", "brainstorming"),
    Task("计算 12 × 15。", "", "12 × 15 = 180。", "math"),
]


def test_parses_a_well_formed_reply():
    assert parse_reply(WELL_FORMED, 4, truncated=False) == ParsedReply(EXPECTED)


def test_parses_full_width_colons_and_numbers():
    reply = WELL_FORMED.replace(":", "：").replace("4.", "４．").replace("5.", "５．").replace("6.", "６．")
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED


@pytest.mark.parametrize("style", ["{n}、", "({n})", "（{n}）", "{n}．", "{n}"])
def test_parses_other_number_styles(style):
    reply = WELL_FORMED
    for n in (4, 5, 6):
        reply = reply.replace(f"{n}. ", style.format(n=n) + " ")
    reply = reply.replace(style.format(n=1) + " 一碗香", "1. 一碗香")  # list items inside an output stay as they were
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED


def test_parses_bold_field_names():
    reply = re.sub(r"(\d)\. (类别|指令|输入|输出):", r"**\1. \2:**", WELL_FORMED)
    assert "**5. 指令:**" in reply
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED
    reply = re.sub(r"(\d)\. (类别|指令|输入|输出):", r"\1. **\2**：", WELL_FORMED)
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED


def test_parses_fields_on_the_same_line_and_without_separators():
    reply = """改写
4. 指令：把下面这句话改成疑问句。
4. 输入：今天会下雨。
4. 输出：今天会下雨吗？

5. 类别：头脑风暴
5. 指令：给新开的面馆想三个名字。 5. 输入：无
5. 输出：
1. 一碗香
2. 面面俱到
3. 老街面馆
6. 类别：数学
6. 指令：计算 12 × 15。
6. 输入：（无）
6. 输出：12 × 15 = 180。"""
    assert parse_reply(reply, 4, truncated=False) == ParsedReply(EXPECTED)


def test_parses_unnumbered_fields():
    reply = """改写
指令：把下面这句话改成疑问句。
输入：今天会下雨。
输出：今天会下雨吗？
类别：头脑风暴
指令：给新开的面馆想三个名字。
输入：<无>
输出：
1. 一碗香
2. 面面俱到
3. 老街面馆
###
类别：数学
指令：计算 12 × 15。
输出：12 × 15 = 180。"""
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED


@pytest.mark.parametrize("no_input", ["<无输入>", "无输入", "无", "（无）", "<无>", "(无)", "无。", "【无输入】", "", "  "])
def test_no_input_variants_become_empty(no_input):
    reply = f"代码\n4. 指令: 写一个打印你好的Python程序。\n4. 输入:\n{no_input}\n4. 输出:\nprint('你好')\n"
    assert parse_reply(reply, 4, truncated=False).tasks == [Task("写一个打印你好的Python程序。", "", "print('你好')", "code")]


def test_truncated_last_item_is_dropped_only_when_truncated():
    cut = WELL_FORMED[: WELL_FORMED.index("6. 输出:") + len("6. 输出:\n12 × 1")]
    assert parse_reply(cut, 4, truncated=True) == ParsedReply(EXPECTED[:2], {"truncated": 1})
    kept = parse_reply(cut, 4, truncated=False)
    assert kept.tasks == [*EXPECTED[:2], Task("计算 12 × 15。", "", "12 × 1", "math")] and not kept.dropped


def test_reply_that_omits_the_opened_category():
    reply = WELL_FORMED.removeprefix(" 改写\n")
    assert parse_reply(reply, 4, truncated=False).tasks == [replace(EXPECTED[0], category=None), *EXPECTED[1:]]
    # ... or that repeats it, after a chatty preamble.
    reply = "好的，下面继续。\n###\n4. 类别: 改写\n" + reply
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED


def test_item_without_output_is_unparsable():
    reply = WELL_FORMED.replace("5. 输出:\n1. 一碗香\n2. 面面俱到\n3. 老街面馆\n", "")
    assert parse_reply(reply, 4, truncated=False) == ParsedReply([EXPECTED[0], EXPECTED[2]], {"unparsable": 1})
    no_instruction = "分类\n4. 输入:\n好吃\n4. 输出:\n正面\n"
    assert parse_reply(no_instruction, 4, truncated=False) == ParsedReply([], {"unparsable": 1})


def test_trailing_item_number_does_not_leak_into_the_output():
    first = "改写\n4. 指令: 把下面这句话改成疑问句。\n4. 输入:\n今天会下雨。\n4. 输出:\n今天会下雨吗？\n5.\n"
    assert parse_reply(first, 4, truncated=False).tasks == [EXPECTED[0]]
    second = "类别: 头脑风暴\n指令: 给新开的面馆想三个名字。\n输入: 无\n输出:\n1. 一碗香\n2. 面面俱到\n3. 老街面馆\n6."
    assert parse_reply(first + second, 4, truncated=False).tasks == EXPECTED[:2]


def test_single_digit_outputs_are_kept():
    reply = "分类\n4. 指令: 这句话是反问句吗？是输出1，否则输出0。\n4. 输入:\n难道你不知道吗？\n4. 输出:\n1\n###\n5. 类别:"
    assert parse_reply(reply, 4, truncated=False).tasks == [
        Task("这句话是反问句吗？是输出1，否则输出0。", "难道你不知道吗？", "1", "classification")
    ]


def test_example_io_lines_inside_an_output_stay_in_the_output():
    output = "def double(x):\n    return 2 * x\n\n示例：\n输入：3\n输出：6"
    reply = f"代码\n4. 指令: 写一个把数字翻倍的函数。\n4. 输入:\n<无输入>\n4. 输出:\n{output}\n###\n5. 类别: 闲聊\n5. 指令: 你好呀！\n5. 输入:\n<无输入>\n5. 输出:\n你好！有什么可以帮你？"
    assert parse_reply(reply, 4, truncated=False).tasks == [
        Task("写一个把数字翻倍的函数。", "", output, "code"),
        Task("你好呀！", "", "你好！有什么可以帮你？", "chat"),
    ]


def test_unknown_category_is_kept_as_none():
    reply = "天气预报\n4. 指令: 介绍一下二十四节气。\n4. 输入:\n<无输入>\n4. 输出:\n二十四节气是……"
    assert parse_reply(reply, 4, truncated=False).tasks == [Task("介绍一下二十四节气。", "", "二十四节气是……", None)]


def test_field_names_inside_values_stay_in_the_values():
    material = "请按下面的要求整理：\n输出：JSON\n类型：人名"
    steps = "1. 输入：读取两个整数。\n2. 输出：打印它们的和。"
    reply = (
        f"信息抽取\n4. 指令: 按要求整理这段话。\n4. 输入:\n{material}\n4. 输出:\n{{\"人名\": []}}\n"
        f"###\n5. 类别: 代码\n5. 指令: 描述一个求和程序的步骤。\n5. 输入:\n<无输入>\n5. 输出:\n{steps}\n"
    )
    assert parse_reply(reply, 4, truncated=False).tasks == [
        Task("按要求整理这段话。", material, '{"人名": []}', "extract"),
        Task("描述一个求和程序的步骤。", "", steps, "code"),
    ]


def test_items_numbered_only_on_their_first_field():
    reply = WELL_FORMED.replace("\n5. 指令", "\n指令").replace("\n5. 输入", "\n输入").replace("\n5. 输出", "\n输出")
    assert "\n输入:\n<无输入>\n输出:\n1. 一碗香" in reply
    assert parse_reply(reply, 4, truncated=False).tasks == EXPECTED
