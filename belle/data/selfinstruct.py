"""Self-instruct building blocks: seed tasks, the Chinese generation prompt, and parsing the reply.

The method is BELLE's (after Stanford Alpaca): show the model k seed tasks as the first items of a
numbered list and let it continue the list up to `num_tasks`. Each item has four fields, every one
prefixed by the item number, items separated by `###`:

    ###
    4. 类别: 改写
    4. 指令: 把下面这句话改写成被动句。
    4. 输入:
    小明打碎了窗户。
    4. 输出:
    窗户被小明打碎了。

Filtering (blacklist, lengths, near-duplicates) is not done here: see `belle.data.filters` and
`belle.data.similarity`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from belle.records import DataError, Rejection, iter_json_records

# Canonical names are BELLE's eval classes, lower case (eval_set.json writes `closed\xa0qa`; we
# use a plain space), mapped to the Chinese name the prompt and the examples use.
CATEGORIES: dict[str, str] = {
    "brainstorming": "头脑风暴",
    "open qa": "开放式问答",
    "closed qa": "封闭式问答",
    "rewrite": "改写",
    "extract": "信息抽取",
    "generation": "生成",
    "classification": "分类",
    "chat": "闲聊",
    "summarization": "摘要",
    "math": "数学",
    "code": "代码",
}

# Other names models and people write for each category, compared after _category_key().
_CATEGORY_ALIASES: dict[str, tuple[str, ...]] = {
    "brainstorming": ("brainstorm", "头脑风暴", "集思广益", "创意构思"),
    "open qa": ("openqa", "开放式问答", "开放问答", "开放性问答", "开放域问答", "开放式问题", "问答", "qa"),
    "closed qa": ("closedqa", "封闭式问答", "封闭问答", "封闭性问答", "封闭域问答", "封闭式问题", "阅读理解"),
    "rewrite": ("rewriting", "改写", "重写", "润色", "编辑", "翻译", "translation", "translate"),
    "extract": ("extraction", "informationextraction", "信息抽取", "抽取", "信息提取", "提取"),
    "generation": ("generate", "writing", "creativewriting", "生成", "文本生成", "写作", "创作", "创意写作"),
    "classification": ("classify", "分类", "文本分类"),
    "chat": ("chitchat", "dialogue", "dialog", "conversation", "闲聊", "对话", "聊天", "闲聊对话", "多轮对话"),
    "summarization": ("summarisation", "summary", "summarize", "摘要", "总结", "概括", "文本摘要"),
    "math": ("maths", "mathematics", "arithmetic", "数学", "数学题", "数学计算", "计算", "算术"),
    "code": ("coding", "programming", "代码", "编程", "代码生成", "写代码", "代码解释", "程序"),
}


def _category_key(text: str) -> str:
    """NFKC (so U+00A0 and full-width letters become plain), lower case, letters and digits only."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).lower() if c.isalnum())


_CATEGORY_LOOKUP: dict[str, str] = {
    _category_key(alias): name
    for name, aliases in _CATEGORY_ALIASES.items()
    for alias in (name, CATEGORIES[name], *aliases)
}
_CATEGORY_SUFFIXES = ("任务", "类", "题", "task")
_CATEGORY_PARTS = re.compile(r"[/／|｜,，、(（)）]")


def normalize_category(raw: str) -> str | None:
    """The canonical name (a key of CATEGORIES) for what a model or a file calls a category.

    Accepts the Chinese or English name in any case and spacing (`open QA`, `closed\\xa0QA`,
    `Open_QA`), common synonyms (`开放问答`, `代码生成`, `总结`), suffixes like `类`/`任务`, and
    forms like `改写（rewrite）` or `闲聊/对话`. None when nothing matches.
    """
    candidates = [raw, *(part for part in _CATEGORY_PARTS.split(raw) if part.strip())]
    for candidate in candidates:
        key = _category_key(candidate)
        if not key:
            continue
        if key in _CATEGORY_LOOKUP:
            return _CATEGORY_LOOKUP[key]
        for suffix in _CATEGORY_SUFFIXES:
            if key.endswith(suffix) and key[: -len(suffix)] in _CATEGORY_LOOKUP:
                return _CATEGORY_LOOKUP[key[: -len(suffix)]]
    return None


@dataclass(frozen=True)
class Task:
    """One self-instruct task. `input` is "" when the task needs no material; `category` is a key
    of CATEGORIES, or None when unknown."""

    instruction: str
    input: str
    output: str
    category: str | None = None


# ---------------------------------------------------------------------------------------------
# Seed tasks


def default_seed_path() -> Path:
    """Our own seed set, in BELLE's zh_seed_tasks.json format plus a `category` key."""
    return Path(__file__).resolve().parents[1] / "assets" / "zh_seed_tasks.jsonl"


def read_seed_tasks(path: Path) -> list[Task]:
    """Seed tasks from a file in BELLE's `zh_seed_tasks.json` format.

    Each record is `{"id", "name", "instruction", "instances": [{"input", "output"}, ...],
    "is_classification"}`, optionally with `"category"` (any name normalize_category knows); only
    the first instance is used. The file is JSON lines or one JSON array.

    Raises:
        DataError: `file:line: field: problem` for the first bad record or malformed JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    tasks = []
    for line, record in iter_json_records(path):
        if isinstance(record, Rejection):
            raise DataError(record.at(f"{path}:{line}"))
        tasks.append(_seed_task(record, f"{path}:{line}"))
    return tasks


def _seed_task(record: Any, location: str) -> Task:
    if not isinstance(record, dict):
        raise DataError(f"{location}: record: expected a JSON object, got {type(record).__name__}")
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problem = "missing" if instruction is None else "must be a non-empty string"
        raise DataError(f"{location}: instruction: {problem}")
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise DataError(f"{location}: instances: must be a non-empty list of {{\"input\", \"output\"}} objects")
    first = instances[0]
    if not isinstance(first, dict):
        raise DataError(f"{location}: instances[0]: expected an object with \"input\" and \"output\"")
    input, output = first.get("input", ""), first.get("output")
    if not isinstance(input, str):
        raise DataError(f"{location}: instances[0].input: must be a string, got {type(input).__name__}")
    if not isinstance(output, str):
        problem = "missing" if output is None else f"must be a string, got {type(output).__name__}"
        raise DataError(f"{location}: instances[0].output: {problem}")
    if not output.strip():
        raise DataError(f"{location}: instances[0].output: is empty")
    category = record.get("category")
    if category is not None:
        canonical = normalize_category(category) if isinstance(category, str) else None
        if canonical is None:
            raise DataError(f"{location}: category: unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
        category = canonical
    return Task(instruction.strip(), input.strip(), output.strip(), category)


# ---------------------------------------------------------------------------------------------
# The prompt

NO_INPUT = "<无输入>"
SEPARATOR = "###"

_REQUIREMENTS = """\
你是一位为中文语言模型编写训练数据的出题人。我们要收集一批形式和内容都尽量丰富的任务，用来教模型理解并完成各种各样的指令。每个任务包含类别、指令、输入和输出四项。请一共写出{num_tasks}个任务：下面的清单已经给出了前{k}个，请从第{first}个接着写，一直写到第{num_tasks}个。

要求如下：
1. 指令的措辞要有变化，不要反复使用同一个动词或同样的开头；问句和祈使句都要有，语气可以正式，也可以口语化。
2. 任务类型要多样，任务之间不要重复或雷同，尽量涵盖这些类别：{categories}。每个任务从中选一个，写明所属的类别。
3. 任务必须是只处理文字的语言模型能够独立完成的：不要涉及图片、音频、视频、网址或文件，也不要让模型去做现实中的动作，比如设置闹钟、发送消息或上网搜索。
4. 指令用中文写，长度为一到两句话。
5. 如果任务需要依据某段材料来完成（比如待改写的句子、待总结的段落、待分类的评论），就在“输入”里给出真实、具体、完整的材料，不要写占位符，篇幅适中；不需要材料的任务，“输入”写“{no_input}”。
6. “输出”要切实完成指令的要求，内容准确，表达自然，篇幅适当；除代码和必要的外文外，使用中文。
7. 严格沿用清单的格式：每个任务以“{separator}”开头，依次写出带相同编号的类别、指令、输入和输出。

任务清单："""


def build_prompt(examples: Sequence[Task], num_tasks: int) -> str:
    """The Chinese self-instruct prompt: the examples are items 1..k of a numbered task list and
    the prompt ends by opening item k+1 (`###\\n{k+1}. 类别:`), so the model writes items
    k+1..num_tasks. Examples without a category are shown without a category line.
    """
    k = len(examples)
    if num_tasks <= k:
        raise ValueError(f"num_tasks ({num_tasks}) must be larger than the number of examples ({k})")
    categories = "、".join(f"{zh}（{en}）" for en, zh in CATEGORIES.items())
    head = _REQUIREMENTS.format(
        num_tasks=num_tasks, k=k, first=k + 1, categories=categories, no_input=NO_INPUT, separator=SEPARATOR
    )
    items = [format_task(task, number) for number, task in enumerate(examples, start=1)]
    return "\n".join([head, *items, f"{SEPARATOR}\n{k + 1}. 类别:"])


def format_task(task: Task, number: int) -> str:
    """One item of the task list, as the prompt shows it and the model is asked to write it."""
    lines = [SEPARATOR]
    if task.category is not None:
        lines.append(f"{number}. 类别: {CATEGORIES[task.category]}")
    lines += [
        f"{number}. 指令: {task.instruction}",
        f"{number}. 输入:",
        task.input or NO_INPUT,
        f"{number}. 输出:",
        task.output,
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parsing the reply

_FIELD_NAMES = {
    "类别": "category", "类型": "category", "category": "category",
    "指令": "instruction", "instruction": "instruction",
    "输入": "input", "input": "input",
    "输出": "output", "output": "output",
}
_FIELD_ORDER = ("category", "instruction", "input", "output")
_NUMBER = r"(?:[(（]\s*(?P<pnum>\d+)\s*[)）]|(?P<num>\d+)\s*[.、．)）]?)"
_FIELD = r"(?P<field>类别|类型|指令|输入|输出|category|instruction|input|output)"
# A field header line: optional bold, optional item number (`4.`, `4、`, `４．`, `(4)`), the field
# name, optional bold, a half- or full-width colon, optional closing bold; the value may follow.
_HEADER = re.compile(
    rf"^\s*(?:\*\*)?\s*{_NUMBER}?\s*(?:\*\*)?\s*{_FIELD}\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?[ \t]*(?P<rest>.*)$",
    re.IGNORECASE,
)
# A numbered field that a model ran onto the previous line ("...。 5. 输入: 无").
_INLINE_HEADER = re.compile(
    rf"(?<=\S)[ \t\u3000]+(?=(?:\*\*)?\s*\d+\s*[.、．]\s*(?:\*\*)?\s*{_FIELD}\s*(?:\*\*)?\s*[:：])"
)
_SEPARATOR_LINE = re.compile(r"^\s*#{3,}\s*$")
_BARE_NUMBER = re.compile(r"^\s*(?:\*\*)?\s*(?:[(（]\s*\d+\s*[)）]|\d+\s*[.、．]?)\s*(?:\*\*)?\s*$")
_NO_INPUT_KEYS = {"无输入", "无", "空", "没有", "没有输入", "无需输入", "不需要输入", "none", "noinput", "null", "na", "n/a"}


@dataclass
class ParsedReply:
    """Tasks parsed from one reply, and the items dropped per reason ("truncated", "unparsable")."""

    tasks: list[Task]
    dropped: Counter = field(default_factory=Counter)


@dataclass
class _Item:
    number: int | None
    fields: dict[str, list[str]] = field(default_factory=dict)
    current: str | None = None
    current_numbered: bool = False

    def empty(self) -> bool:
        return not any("".join(lines).strip() for lines in self.fields.values())


def parse_reply(text: str, first_number: int, truncated: bool) -> ParsedReply:
    """Tasks from a model's continuation of build_prompt's list.

    Tolerates: a reply that starts with the value of the opened `类别:` or repeats the header;
    items separated by `###` or only by new numbers; numbers as `4.`, `4、`, `４．`, `(4)` or none;
    `:` or `：`; bold field names; values on the header line or below; `<无输入>`, `无`, `（无）`
    ... as an empty input; category names normalize_category knows (others become None).

    Args:
        text: the reply.
        first_number: the number of the item the prompt opened (k+1).
        truncated: the reply was cut by the length limit: its last item is dropped as "truncated".
    Returns:
        The tasks in reply order and a Counter of dropped items: "truncated", "unparsable"
        (no instruction or no output).
    """
    lines = _join_bare_numbers(_split_inline_headers(text).splitlines())
    headers = [_HEADER.match(line) for line in lines]
    numbered = any(h and _number(h) is not None for h in headers)
    first_header = next((h for h in headers if h), None)
    if first_header is None or _FIELD_NAMES[first_header["field"].lower()] != "category":
        # The prompt ended with "N. 类别:", so the reply begins with the category's value.
        lines.insert(0, f"{first_number}. 类别:")
        headers.insert(0, _HEADER.match(lines[0]))

    items: list[_Item] = []
    item: _Item | None = None
    for line, header in zip(lines, headers):
        if _SEPARATOR_LINE.match(line):
            item = None
            continue
        name = _FIELD_NAMES[header["field"].lower()] if header else None
        if header and item is not None and not _starts_field(item, name, _number(header), numbered):
            header = None
        if header:
            number = _number(header)
            if item is None or _starts_item(item, name, number):
                if item is not None and number is None and item.number is not None:
                    number = item.number + 1
                item = _Item(number)
                items.append(item)
            item.current, item.current_numbered = name, _number(header) is not None
            item.fields[name] = [header["rest"]]
        elif item is not None and item.current is not None:
            item.fields[item.current].append(line)

    items = [item for item in items if not item.empty()]
    dropped: Counter = Counter()
    if truncated and items:
        items.pop()
        dropped["truncated"] += 1
    tasks = []
    for item in items:
        task = _task(item)
        if task is None:
            dropped["unparsable"] += 1
        else:
            tasks.append(task)
    return ParsedReply(tasks, dropped)


def _split_inline_headers(text: str) -> str:
    return _INLINE_HEADER.sub("\n", text)


def _join_bare_numbers(lines: list[str]) -> list[str]:
    """`5.` alone on a line, then an unnumbered field: the number belongs to that field."""
    joined: list[str] = []
    for line in lines:
        header = _HEADER.match(line)
        if header and _number(header) is None and joined and _BARE_NUMBER.match(joined[-1]):
            line = f"{joined.pop().strip()} {line.strip()}"
        joined.append(line)
    return joined


def _number(header: re.Match) -> int | None:
    digits = header["pnum"] or header["num"]
    return int(digits) if digits else None  # int() reads full-width digits too


def _starts_field(item: _Item, name: str, number: int | None, numbered: bool) -> bool:
    """Whether a header line is a field rather than text inside the current value.

    Outputs (code, math, extraction) often hold lines like `输入：3`, `输出：6` or `1. 输入：...`
    that must stay part of the value. So in a reply that numbers its fields, an unnumbered header
    counts only when it moves forward in the item and the item itself is written unnumbered (some
    models number only an item's first field); and inside an output, a numbered `输入`/`输出` with a
    number below the item's is a list in the output.
    """
    if item.current is None:
        return True
    if number is not None:
        return not (
            item.current == "output" and name in ("input", "output") and item.number is not None and number < item.number
        )
    if not numbered:
        return True
    forward = _FIELD_ORDER.index(name) > _FIELD_ORDER.index(item.current) and name not in item.fields
    return forward and (not item.current_numbered or len(item.fields) == 1)


def _starts_item(item: _Item, name: str, number: int | None) -> bool:
    if number is not None and item.number is not None and number != item.number:
        return True
    if name in item.fields:
        return True
    return item.current is not None and _FIELD_ORDER.index(name) < _FIELD_ORDER.index(item.current)


def _task(item: _Item) -> Task | None:
    values = {name: _clean(lines) for name, lines in item.fields.items()}
    instruction, output = values.get("instruction", ""), values.get("output", "")
    if not instruction or not output:
        return None
    input = values.get("input", "")
    if _no_input(input):
        input = ""
    category = normalize_category(values["category"]) if values.get("category") else None
    return Task(instruction, input, output, category)


def _clean(lines: list[str]) -> str:
    """A field's text without surrounding blank lines or a trailing item number that leaked in."""
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    # "...\n5." at the end of a multi-line value is the next item's number, not content.
    if len(lines) > 1 and _BARE_NUMBER.match(lines[-1]):
        lines.pop()
    return "\n".join(lines).strip()


def _no_input(value: str) -> bool:
    key = re.sub(r"[\s<>《》()（）\[\]【】「」\"'“”‘’。.,，*]", "", value).lower()
    return key in _NO_INPUT_KEYS or not key
