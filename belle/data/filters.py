"""Quality rules for generated and collected instruction data, after BELLE's method (the word lists
and patterns are our own): a blacklist of tasks a text-only model cannot do, self-instruct's
length rules, language detection for Chinese, English and mixed text, answers in which the model
calls itself a GPT model, and Chinese prompts answered in English.

All checks are plain functions of strings; letter case never matters.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

# Words that make a task unusable for a text-only model, or that tie the data to the model that
# generated it. Chinese words match anywhere; Latin-script ones only as whole words (so "profile"
# is not "file"), in any letter case, plural s included.
BLACKLIST: tuple[str, ...] = (
    # pictures: the model can neither see nor draw them
    "图像", "图片", "照片", "相片", "插图", "截图", "配图",
    "image", "picture", "photo", "screenshot",
    # charts
    "图表", "折线图", "柱状图", "条形图", "饼图", "散点图", "直方图", "流程图", "示意图", "思维导图",
    "chart", "diagram",
    # files and links
    "文件", "附件", "链接", "网址",
    "file", "attachment", "link", "url", "http", "www",
    # the model that wrote the data and its maker
    "openai", "chatgpt", "gpt-3.5", "gpt-3", "gpt-4",
)


def _pattern(word: str) -> str:
    if word.startswith("gpt"):  # also "GPT3", "GPT 3.5", "GPT-4o", "gpt4-turbo"; "gpt-3" is not GPT-3.5
        return r"(?<![a-z])gpt[\s-]?" + re.escape(word.replace("-", "")[3:]) + r"(?![0-9.]*[0-9])"
    if word.isascii():
        return rf"(?<![a-z]){re.escape(word)}s?(?![a-z])"
    return re.escape(word)


_BLACKLIST = re.compile("|".join(f"(?P<w{i}>{_pattern(w)})" for i, w in enumerate(BLACKLIST)), re.IGNORECASE)


def blacklisted(text: str) -> str | None:
    """The BLACKLIST entry found first in `text` (case-insensitive), or None."""
    match = _BLACKLIST.search(text)
    return BLACKLIST[int(match.lastgroup[1:])] if match else None


# "请GPT模型…", "要求GPT能够…", "让GPT…", "希望GPT模型能够…", "使GPT模型能够…", "我想让ChatGPT帮我…":
# a verb that addresses the model (after an optional "I / we / you" and "want"), the model's
# name, and the helper verbs after it; or the name as a vocative at the very start ("GPT，请…").
_MODEL = r"(?:chat)?gpt(?:[\s-]?\d(?:\.\d)?[a-z]?)?(?:\s*(?:大型)?(?:语言|人工智能|AI)?\s*(?:模型|助手|机器人))?"
_HELPERS = r"(?:\s*(?:能够|能|可以|来|去|帮忙|帮我们|帮我|帮助我们|帮助我|为我们|为我|给我们|给我|尝试|试着|试图|完成))*"
_ADDRESS = re.compile(
    rf"(?:(?:我们?|你)?(?:想|想要|需要|希望|要)?(?:请|要求|让|使|令|叫|希望|需要)\s*(?:这个|该|一个)?\s*{_MODEL}{_HELPERS}"
    rf"|^\s*{_MODEL}\s*(?:[,，:：]\s*请?|请){_HELPERS})\s*[,，:：]?\s*",
    re.IGNORECASE,
)


def strip_gpt_address(instruction: str) -> str:
    """`instruction` without the phrases that address the GPT model, trimmed:
    "请GPT模型写一首诗" -> "写一首诗"; "阅读下文，然后让GPT总结要点" -> "阅读下文，然后总结要点".
    A mention that does not address the model ("介绍一下GPT模型的原理") is left alone (and
    `task_rejection` then rejects it as "mentions_gpt")."""
    return _ADDRESS.sub("", instruction).strip()


_NO_INPUT = {"", "<无输入>", "<noinput>", "无输入"}
_GIVES_EXAMPLES = re.compile(r"示例|例子|例如|比如|举例|样例")
_GPT = re.compile(r"gpt", re.IGNORECASE)


def task_rejection(instruction: str, input: str, output: str) -> str | None:
    """Why a self-instruct task is discarded, or None if it is kept. Apply it to the instruction
    after `strip_gpt_address`. Lengths are in characters (a Chinese character counts 1), after
    trimming whitespace at both ends.

    Checked in this order; the first that applies is returned:
    1. "blacklist": a BLACKLIST word in the instruction or the input;
    2. "mentions_gpt": "GPT" (any case) still in the instruction or the input;
    3. "instruction_too_short": the instruction has 3 characters or fewer;
    4. "instruction_too_long": with an input, an instruction of 100 characters or more, or of 150
       or more when it gives examples (示例, 例子, 例如, 比如, 举例, 样例);
    5. "no_output": the output is empty or blank;
    6. "input_equals_output": there is an input and the output is the same text.
    An input of "" or "<无输入>" counts as no input.
    """
    instruction, input, output = instruction.strip(), input.strip(), output.strip()
    has_input = input not in _NO_INPUT
    context = instruction + "\n" + input if has_input else instruction
    if blacklisted(context):
        return "blacklist"
    if _GPT.search(context):
        return "mentions_gpt"
    if len(instruction) <= 3:
        return "instruction_too_short"
    if has_input and len(instruction) >= (150 if _GIVES_EXAMPLES.search(instruction) else 100):
        return "instruction_too_long"
    if not output:
        return "no_output"
    if has_input and input == output:
        return "input_equals_output"
    return None


# ---------------------------------------------------------------------------------------------
# Language

_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`|https?://\S+|www\.\S+", re.DOTALL)
_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_LATIN_LETTERS = "a-zA-Z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_IDEOGRAPH = re.compile(f"[{_IDEOGRAPHS}]")
_LATIN = re.compile(f"[{_LATIN_LETTERS}]")
_OTHER_LETTER = re.compile(rf"[^\W\d_{_LATIN_LETTERS}{_IDEOGRAPHS}]")
LATIN_LETTERS_PER_IDEOGRAPH = 3
ZH_SHARE = 0.8
EN_SHARE = 0.8


def language(text: str) -> Literal["zh", "en", "mixed", "other"]:
    """The language of `text`: "zh", "en", "mixed" (Chinese and English) or "other".

    After NFKC (full-width letters become ASCII), code (fenced ``` blocks, `inline code`) and URLs
    are set aside, and digits, punctuation and symbols are ignored. What remains is measured in
    Chinese-character units: a CJK ideograph counts 1, every LATIN_LETTERS_PER_IDEOGRAPH (3)
    Latin letters count 1 (an English word of ~4.5 letters says about as much as 1.5 Chinese
    characters), and a letter of any other script (kana, Hangul, Cyrillic, ...) counts 1. Then:
    - "other" if nothing is left, or other scripts make up half of it or more;
    - "zh" if ideographs make up at least ZH_SHARE (80%) of ideographs plus Latin units;
    - "en" if Latin units make up at least EN_SHARE (80%) of them;
    - "mixed" otherwise.
    "请用Python写一个快速排序" is zh (10 ideographs, 6 letters = 2 units: 83%); "这句话的英文是
    I love you very much" is mixed (7 ideographs, 14 letters = 4.7 units: 60%).
    """
    text = _CODE.sub(" ", unicodedata.normalize("NFKC", text))
    zh = len(_IDEOGRAPH.findall(text))
    en = len(_LATIN.findall(text)) / LATIN_LETTERS_PER_IDEOGRAPH
    other = len(_OTHER_LETTER.findall(text))
    total = zh + en + other
    if total == 0 or other >= total / 2:
        return "other"
    if zh >= ZH_SHARE * (zh + en):
        return "zh"
    if en >= EN_SHARE * (zh + en):
        return "en"
    return "mixed"


# ---------------------------------------------------------------------------------------------
# Answers that speak as a GPT model

# First-person claims only: an answer about GPT ("GPT-4 是 OpenAI 发布的模型") is not a claim.
_ZH_CLAUSE = r"[^。！？!?\n，,；;]{0,24}?"  # within one clause
_ZH_SENTENCE = r"[^。！？!?\n]{0,30}?"  # within one sentence
_MAKE_ZH = r"(?:开发|训练|创造|创建|研发|打造|设计|推出)"
_MAKE_EN = r"(?:trained|developed|created|made|built|designed|programmed)"
_AI_LM_ZH = r"(?:一个|一款|一种|一名)?\s*(?:AI|人工智能)\s*(?:大型)?语言模型"
_GPT_NAME = r"(?:chat)?gpt(?:[\s-]?\d(?:\.\d)?[a-z]*)?"
# what the model calls itself at the end of "作为……，我": "GPT模型", "ChatGPT", "AI助手", "AI"
_SELF_ZH = rf"(?:{_GPT_NAME}|(?:语言|人工智能|AI)?\s*(?:模型|助手|机器人)|AI|人工智能)"
_NO_CLAUSE_END = r"[^。！？!?\n，,；;]"
_IDENTITY = re.compile(
    "|".join([
        # 我是ChatGPT / 我叫ChatGPT / 我是一个基于GPT-3.5的模型 / 我被OpenAI训练
        rf"我(?:只|仅仅)?(?:是|叫|被|来自|基于){_ZH_CLAUSE}(?:openai|chatgpt|gpt)",
        # 我由OpenAI训练
        r"我(?:是)?由\s*(?:openai|chatgpt)",
        # 作为一个由OpenAI开发的GPT模型，我… / 作为ChatGPT，我… / 身为OpenAI训练的AI，我…: the phrase
        # names GPT or OpenAI and ends in what the speaker is, right before "，我" ("作为一个GPT模型的
        # 使用者，我" is someone else)
        rf"(?:作为|身为)(?={_NO_CLAUSE_END}*?(?:openai|gpt)){_NO_CLAUSE_END}{{0,30}}?{_SELF_ZH}\s*[，,]\s*我(?!们)",
        # 我是一个人工智能语言模型，由OpenAI训练
        rf"我是{_ZH_SENTENCE}(?:由|被)\s*openai",
        rf"我的(?:名字|开发者|创造者|创建者|训练者|开发团队|开发公司)(?:是|叫)\s*(?:openai|chatgpt|gpt)",
        rf"(?:openai|chatgpt){_ZH_CLAUSE}{_MAKE_ZH}了?我(?!们)",
        # 我是一个AI语言模型 / 作为一个AI语言模型 / 作为一个大型语言模型，我……
        rf"我(?:只|仅仅)?是{_AI_LM_ZH}",
        rf"作为{_AI_LM_ZH}",
        rf"作为(?:一个|一款|一种|一名)?[^。！？!?\n，,]{{0,16}}?语言模型{_ZH_SENTENCE}我(?!们)",
        # I am ChatGPT / I'm based on GPT-3.5 / I was trained by OpenAI / my name is ChatGPT
        r"\b(?:i am|i'm|my name is)\s+(?:called\s+)?(?:chatgpt|gpt)",
        r"\b(?:i am|i'm|i was)\s+based\s+on\s+(?:the\s+)?(?:chatgpt|gpt)",
        rf"\b(?:i am|i'm|i was|i've been|i have been)\b[^.!?\n]{{0,60}}?\b{_MAKE_EN}\s+by\s+openai",
        rf"\b(?:i am|i'm)\s+an?\s+[\w\s-]{{0,40}}?\b(?:model|assistant|ai|chatbot)\s+(?:from|by|of)\s+openai",
        rf"\bopenai\s+(?:has\s+)?{_MAKE_EN}\s+me\b",
        # I am an AI language model / As an AI language model / As a large language model, I ...
        r"\bi(?:\s+am|'m)\s+(?:just\s+|only\s+|merely\s+)?an?\s+(?:ai|artificial intelligence)\s+language\s+model",
        r"\bas\s+an?\s+(?:ai|artificial intelligence)\s+language\s+model\b",
        r"\bas\s+an?\s+(?:large\s+)?language\s+model\b[^.!?\n]{0,40}?\bi\b",
        # As ChatGPT, I ... / As a GPT model, I ... / I'm a GPT-based language model
        rf"\bas\s+(?:an?\s+)?(?:large\s+)?{_GPT_NAME}(?:[\s-]based)?(?:\s+(?:language\s+)?(?:model|assistant|chatbot))?\s*,\s*(?:i|i'm|my)\b",
        rf"\b(?:i am|i'm)\s+an?\s+(?:large\s+)?{_GPT_NAME}(?:[\s-]based)?(?:\s+language)?\s+(?:model|assistant|chatbot)\b",
    ]),
    re.IGNORECASE,
)


def claims_gpt_identity(answer: str) -> bool:
    """Whether `answer` has the model speak as a GPT model: calling itself ChatGPT or GPT ("我是
    ChatGPT", "作为一个由OpenAI开发的GPT模型，我…", "As a GPT model, I…"), made or trained by
    OpenAI ("我由OpenAI训练", "I was developed by OpenAI"), or "作为一个AI语言模型" / "As an AI
    language model". Only first-person claims count, so an answer about GPT or OpenAI ("GPT模型是
    一种神经网络", "作为一个GPT模型的使用者，我…") is not flagged."""
    return _IDENTITY.search(answer) is not None


_TRANSLATION_OR_ENGLISH = re.compile(r"翻译|译成|译为|译作|英文|英语|english", re.IGNORECASE)


def zh_prompt_en_answer(prompt: str, answer: str) -> bool:
    """A Chinese prompt (`language` "zh") answered in English ("en"), unless the prompt asks for a
    translation or for English (翻译, 译成, 译为, 译作, 英文, 英语, English). BELLE removed such pairs
    from its 1M set. Code is not English: `language` sets fenced and inline code aside, and an
    answer that is only fenced code is "other"."""
    if _TRANSLATION_OR_ENGLISH.search(prompt):
        return False
    return language(prompt) == "zh" and language(answer) == "en"
