"""belle.data.filters: every rule fires on a crafted example and stays quiet on a clean one."""

import pytest

from belle.data.filters import (
    BLACKLIST,
    blacklisted,
    claims_gpt_identity,
    language,
    strip_gpt_address,
    task_rejection,
    zh_prompt_en_answer,
)


@pytest.mark.parametrize(
    "text, word",
    [
        ("根据这张图片写一段描述", "图片"),
        ("请看下面的照片，说说拍的是哪里", "照片"),
        ("根据以下折线图分析销量的变化", "折线图"),
        ("把这份文件里的数据整理一下", "文件"),
        ("打开这个链接，总结网页内容", "链接"),
        ("总结 https://example.com 上的文章", "http"),
        ("Describe the IMAGE below", "image"),
        ("Summarize the attached files", "file"),
        ("介绍一下OpenAI这家公司", "openai"),
        ("你和ChatGPT有什么区别？", "chatgpt"),
        ("GPT-4 能做什么？", "gpt-4"),
        ("gpt4 和 gpt-3.5 哪个更好", "gpt-4"),  # the first in the text
        ("用 GPT 3.5 写代码", "gpt-3.5"),
        ("GPT3 的参数量是多少", "gpt-3"),
    ],
)
def test_blacklist_finds_the_first_word(text, word):
    assert word in BLACKLIST
    assert blacklisted(text) == word


@pytest.mark.parametrize(
    "text",
    [
        "写一首关于春天的诗",
        "解释一下Python里的链表（linked list）",  # "link" only as a whole word
        "How do I update my profile?",  # "file" inside a word
        "Imagine you are a teacher; write a lesson plan",  # "image" inside a word
        "用户画像是什么意思",
        "介绍一下GPT模型的原理",  # not blacklisted, but see mentions_gpt
    ],
)
def test_blacklist_leaves_clean_text(text):
    assert blacklisted(text) is None


@pytest.mark.parametrize(
    "instruction, stripped",
    [
        ("请GPT模型写一首诗", "写一首诗"),
        ("要求GPT能够生成一个关于友谊的故事", "生成一个关于友谊的故事"),
        ("让GPT解释什么是黑洞", "解释什么是黑洞"),
        ("希望GPT模型能够给出三条学习建议", "给出三条学习建议"),
        ("使GPT模型能够理解用户的意图并回答", "理解用户的意图并回答"),
        ("阅读下文，然后让GPT总结要点", "阅读下文，然后总结要点"),
        ("我想让ChatGPT帮我写一封感谢信", "写一封感谢信"),
        ("请 GPT-3.5 模型：写一段广告语", "写一段广告语"),
        ("GPT，请把这句话翻译成英文", "把这句话翻译成英文"),
        # mentions that do not address the model are left for task_rejection
        ("介绍一下GPT模型的原理", "介绍一下GPT模型的原理"),
        ("GPT模型的原理是什么？", "GPT模型的原理是什么？"),
        ("写一首关于春天的诗", "写一首关于春天的诗"),
    ],
)
def test_strip_gpt_address(instruction, stripped):
    assert strip_gpt_address(instruction) == stripped


CLEAN = ("把下面的句子改写得更正式一些", "明天我们一起去吃饭吧", "明日，我们一同用餐吧。")


def test_clean_task_passes():
    assert task_rejection(*CLEAN) is None
    assert task_rejection("写一首关于春天的五言绝句", "", "春风拂柳绿，细雨润花红。") is None
    assert task_rejection("给出三个例子，说明" + "比" * 120, "苹果", "水果") is None  # examples allow 150
    assert task_rejection("这" * 150, "", "好") is None  # without an input there is no upper limit


@pytest.mark.parametrize(
    "instruction, input, output, reason",
    [
        ("描述这张图片里的场景", "", "一片海滩", "blacklist"),
        ("总结下面这段话", "请访问链接了解详情", "无法访问", "blacklist"),  # the input counts too
        ("介绍一下GPT模型的原理", "", "它是一种语言模型", "mentions_gpt"),
        ("回答问题", "GPT是什么？", "一种模型", "mentions_gpt"),
        ("写诗", "", "床前明月光", "instruction_too_short"),
        ("一二三", "", "四", "instruction_too_short"),
        ("改" * 100, "一段文字", "另一段文字", "instruction_too_long"),
        ("举例说明" + "改" * 146, "一段文字", "另一段文字", "instruction_too_long"),
        ("写一首关于春天的诗", "", "  ", "no_output"),
        ("把下面的句子重复一遍", "今天天气很好", " 今天天气很好 ", "input_equals_output"),
    ],
)
def test_each_rejection_reason(instruction, input, output, reason):
    assert task_rejection(instruction, input, output) == reason


def test_rejection_order_blacklist_before_length():
    assert task_rejection("图片", "", "") == "blacklist"
    assert task_rejection("写诗", "", "") == "instruction_too_short"
    assert task_rejection("改" * 99, "一段文字", "另一段文字") is None  # 99 < 100
    assert task_rejection("改" * 99, "<无输入>", "好的") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("今天天气很好，我们去公园散步吧。", "zh"),
        ("请用Python写一个快速排序", "zh"),  # 10 ideographs against 6 letters (2 units)
        ("ＡＢＣ是什么意思", "zh"),  # full-width letters are letters
        ("Hello, how are you today?", "en"),
        ("My name is 李明 and I live in Beijing", "en"),
        ("这句话的英文是 I love you very much", "mixed"),
        ("12345 !!! ... ###", "other"),
        ("こんにちは、元気ですか", "other"),
        ("Привет, как дела?", "other"),
        ("", "other"),
    ],
)
def test_language(text, expected):
    assert language(text) == expected


def test_code_blocks_do_not_make_a_chinese_answer_english():
    code = "def quick_sort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot = arr[0]\n" \
           "    left = [x for x in arr[1:] if x < pivot]\n    right = [x for x in arr[1:] if x >= pivot]\n" \
           "    return quick_sort(left) + [pivot] + quick_sort(right)\n"
    answer = f"下面是用Python实现的快速排序：\n```python\n{code}```\n平均时间复杂度是O(n log n)，调用`quick_sort(arr)`即可。"
    assert language(code) == "en"  # bare, code reads as English...
    assert language(answer) == "zh"  # ...fenced, it is set aside
    assert not zh_prompt_en_answer("用Python写一个快速排序", answer)


@pytest.mark.parametrize(
    "answer",
    [
        "作为一个AI语言模型，我没有个人观点。",
        "作为一个大型语言模型，我无法访问互联网。",
        "我是一个由OpenAI训练的大型语言模型。",
        "我是ChatGPT，很高兴为你服务。",
        "我是一个人工智能语言模型，由OpenAI开发。",
        "我的名字叫ChatGPT。",
        "As an AI language model, I cannot browse the internet.",
        "I am ChatGPT, a large language model trained by OpenAI.",
        "I'm a language model developed by OpenAI.",
        "I am based on the GPT-3.5 architecture.",
        # GPT模型 / ChatGPT / OpenAI开发、训练、创建 as the speaker's own identity
        "作为一个由OpenAI开发的GPT模型，我可以帮你写代码。",
        "作为一个GPT模型，我没有情感。",
        "作为ChatGPT，我无法浏览网页。",
        "身为OpenAI训练的AI，我不能访问实时信息。",
        "作为OpenAI创建的语言模型, 我会尽力回答。",
        "我由OpenAI训练，无法访问实时信息。",
        "我是由OpenAI创建的AI助手。",
        "我是OpenAI开发的GPT模型。",
        "我只是一个GPT模型，没有个人观点。",
        "As an AI language model developed by OpenAI, I don't have opinions.",
        "As ChatGPT, I cannot browse the web.",
        "As a GPT model, I don't have feelings.",
        "As a language model trained by OpenAI, I can't see images.",
        "I'm a GPT-based language model.",
        "I was developed by OpenAI.",
    ],
)
def test_claims_gpt_identity(answer):
    assert claims_gpt_identity(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "GPT-4 是 OpenAI 发布的模型，它比 GPT-3.5 更强。",
        "ChatGPT 是 OpenAI 开发的聊天机器人，我认为它很有用。",
        "我认为ChatGPT是由OpenAI开发的。",
        "我由衷地认为ChatGPT很有用。",
        "我是一名学生，想了解GPT的原理。",
        "作为一种语言模型，GPT-4可以帮助我们写代码。",
        "OpenAI trained GPT-4 on a large corpus of text.",
        "I am going to explain how GPT works.",
        "As a language model, GPT-4 can write code.",
        "作为一个AI助手，我建议你早点休息。",
        # explanations about GPT, or a speaker who is not the model
        "GPT模型是一种神经网络，它通过预测下一个词来生成文本。",
        "作为一种GPT模型，ChatGPT可以生成流畅的文本。",
        "作为一个GPT模型的使用者，我觉得它很好用。",
        "作为OpenAI的一名工程师，我参与了GPT-4的训练。",
        "OpenAI开发了GPT模型，它能够回答问题。",
        "As GPT models grow larger, I think they become more useful.",
        "As a GPT model user, I find it helpful.",
        "As ChatGPT becomes popular, I see more people using it.",
        "As a model trained by OpenAI, GPT-4 can write code.",
        "I am a GPT enthusiast and read every paper about it.",
    ],
)
def test_talking_about_gpt_is_not_a_claim(answer):
    assert not claims_gpt_identity(answer)


def test_zh_prompt_en_answer():
    assert zh_prompt_en_answer("介绍一下长城的历史", "The Great Wall was built over many centuries.")
    assert not zh_prompt_en_answer("介绍一下长城的历史", "长城修建了很多个世纪。")
    assert not zh_prompt_en_answer("把这句话翻译成英文：长城很长", "The Great Wall is very long.")
    assert not zh_prompt_en_answer("用英语写一句问候语", "Good morning!")
    assert not zh_prompt_en_answer("Write a poem about spring", "Spring comes softly.")
    assert not zh_prompt_en_answer("介绍一下长城的历史", "长城（the Great Wall）修建了很多个世纪。")
