"""Scripted LLM replies for the data-generation tests: a pool of distinct Chinese tasks and the
numbered-list reply a self-instruct model would send."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

# (category, instruction, input, output): all different from each other and from our seed tasks.
TASKS = [
    ("brainstorming", "列出五种在家就能做的减压方法。", "", "深呼吸练习、听轻音乐、整理房间、写日记、做简单的拉伸。"),
    ("open qa", "为什么秋天树叶会变黄？", "", "天气转凉后叶绿素分解，原本被掩盖的叶黄素和胡萝卜素显现出来。"),
    ("rewrite", "把这句话改写得更正式一些。", "这事儿我明天给你答复。", "关于此事，我将于明日给您正式答复。"),
    ("extract", "从短文中找出所有提到的城市名。", "我们先去了杭州，又坐高铁到苏州，最后在上海住了两晚。", "杭州、苏州、上海"),
    ("generation", "写一段两句话的新店开业祝福语。", "", "恭喜新店隆重开业！祝生意兴隆、财源广进。"),
    ("classification", "判断下面的评论是正面还是负面。", "快递太慢了，包装还破了。", "负面"),
    ("summarization", "用一句话概括这段通知。", "因线路检修，本周六上午八点至十二点小区停水，请居民提前储水。", "本周六上午小区因检修停水四小时，请提前储水。"),
    ("math", "一件衣服原价两百元，打八折后是多少钱？", "", "200 × 0.8 = 160，打折后是160元。"),
    ("code", "用Python写一个函数，判断一个整数是不是偶数。", "", "def is_even(n):\n    return n % 2 == 0"),
    ("closed qa", "根据材料回答：会议在哪一天举行？", "年度总结会定于十二月二十日下午两点在三楼会议室举行。", "十二月二十日。"),
    ("chat", "我最近总是失眠，你有什么建议吗？", "", "可以固定作息时间，睡前一小时少看手机，白天适当运动。"),
    ("brainstorming", "给一家社区图书馆想三个吸引小朋友的活动。", "", "周末绘本故事会、小小图书管理员体验日、亲子手工读书角。"),
    ("open qa", "长时间盯着屏幕对眼睛有哪些影响？", "", "容易出现眼睛干涩、疲劳和视力模糊，应每隔一段时间远眺休息。"),
    ("rewrite", "将下列口语化的句子改成书面语。", "这电影老好看了，你赶紧去瞅瞅。", "这部电影非常精彩，建议你尽快去观看。"),
    ("math", "鸡兔同笼，共有十个头、二十八只脚，鸡和兔各有几只？", "", "设兔x只，则4x + 2(10 - x) = 28，解得x = 4，所以兔4只、鸡6只。"),
    ("code", "写一条SQL，查询员工表中工资最高的三个人。", "", "SELECT name, salary FROM employee ORDER BY salary DESC LIMIT 3;"),
    ("generation", "以“雨后”为题写一首四行小诗。", "", "雨后青石亮，\n檐下水声长。\n风过竹影动，\n一树栀子香。"),
    ("classification", "把下列动物分成哺乳动物和鸟类：鲸、麻雀、蝙蝠、企鹅。", "", "哺乳动物：鲸、蝙蝠；鸟类：麻雀、企鹅。"),
    ("extract", "提取这条快递信息里的收件人电话。", "收件人：李华，电话：13812345678，地址：成都市武侯区。", "13812345678"),
    ("summarization", "概括下面这段对话的主要内容。", "甲：周五的会改到下周一了。乙：好的，地点不变吧？甲：对，还是二楼。", "周五的会议改到下周一，地点仍在二楼。"),
    ("open qa", "新手养多肉植物要注意什么？", "", "少浇水、多晒太阳、保持通风，用透气的颗粒土。"),
    ("chat", "周末下雨不能出门，有什么好玩的室内事情推荐？", "", "可以看一部老电影、试着烤蛋糕，或者和朋友玩桌游。"),
    ("brainstorming", "为一次公司团建想几个不花钱的破冰游戏。", "", "两真一假、接龙讲故事、默契大考验。"),
    ("math", "一个长方形长八厘米、宽五厘米，它的周长是多少？", "", "(8 + 5) × 2 = 26，周长是26厘米。"),
]


def item_block(number: int, task: tuple[str, str, str, str]) -> str:
    category, instruction, task_input, output = task
    chinese = {"brainstorming": "头脑风暴", "open qa": "开放式问答", "rewrite": "改写", "extract": "信息抽取",
               "generation": "生成", "classification": "分类", "summarization": "摘要", "math": "数学",
               "code": "代码", "closed qa": "封闭式问答", "chat": "闲聊"}[category]
    return (f"###\n{number}. 类别: {chinese}\n{number}. 指令: {instruction}\n{number}. 输入:\n{task_input or '<无输入>'}\n"
            f"{number}. 输出:\n{output}\n")


def first_open_number(prompt: str) -> int:
    """The item number a self-instruct prompt leaves open for the model."""
    return int(re.findall(r"(\d+)\s*[.．、]\s*类别", prompt)[-1])


def numbered_reply(prompt: str, tasks: list[tuple[str, str, str, str]]) -> str:
    """What a model continuing the prompt's list would send: items from the open number on, the
    first one without the already opened `类别:` label."""
    start = first_open_number(prompt)
    text = "".join(item_block(start + i, task) for i, task in enumerate(tasks))
    return text.split(f"{start}. 类别:", 1)[1]


def new_tasks_per_prompt(per_reply: int):
    """A responder that answers the n-th distinct prompt it sees with TASKS n*per_reply onwards,
    and a prompt seen before with the same reply."""
    prompts: dict[str, int] = {}

    def responder(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        n = prompts.setdefault(prompt, len(prompts))
        return numbered_reply(prompt, TASKS[per_reply * n: per_reply * (n + 1)])

    return responder


@pytest.fixture(scope="session")
def scripted():
    """The pool of tasks and the reply builder, for tests (conftest modules cannot be imported)."""
    return SimpleNamespace(TASKS=TASKS, item_block=item_block, numbered_reply=numbered_reply,
                           first_open_number=first_open_number,
                           new_tasks_per_prompt=new_tasks_per_prompt)
