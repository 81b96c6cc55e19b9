"""Reward functions of the online RL stages (grpo, rloo): `reward.weights` names the sources.

Every source is a TRL reward function: `f(prompts, completions, completion_ids, **kwargs)` returns
one float (or None: "no reward for this one", which TRL turns into NaN and leaves out of the
means) per completion. Prompts and completions are conversational (lists of messages) or plain
strings; the prompt file's columns arrive as keyword lists (`reference`, `class`), and TRL adds
`log_metric(name, value)`. Each function's `__name__` is its source name, so TRL logs
`rewards/<name>/mean` and `/std`.

Sources (`REWARD_SOURCES`):
- `model`: the score (logit 0) of a reward model folder (`stage=rm` output), loaded on first use
  on the policy's device; the text is the conversation rendered with the RM tokenizer's own
  chat template, as the RM was trained.
- `judge`: an LLM judge's score in [0, 1] with belle's per-class judge prompts, through
  `belle.llm` (cache, retries, concurrency). A judgment that fails gets the mean of its prompt
  group's successful scores (None when the whole group failed); never 0, which would punish a
  completion for the judge's fault. That fill is neutral, not invisible: see `neutral_fill`.
- `math_answer`, `format`, `length`, `eos`: rules, see their functions.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import math
import os
import re
import unicodedata
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from belle.cli import UsageError

if TYPE_CHECKING:
    from belle.eval.evalset import EvalItem
    from belle.train.config import JudgeRewardConfig, RewardConfig

logger = logging.getLogger(__name__)

REWARD_SOURCES = ("model", "judge", "math_answer", "format", "length", "eos")
JUDGE_MAX_TOKENS = 512  # a short reason and the score line
RM_BATCH = 16  # sequences per reward-model forward pass
RM_MAX_LENGTH = 4096  # tokens, when the RM's tokenizer and config name no smaller limit


# ---------------------------------------------------------------------------------------------
# Checks and assembly


def reward_problems(reward: RewardConfig) -> list[str]:
    """Every problem of `reward` for the sources `reward.weights` names, one sentence each naming
    its `reward.…` key; empty when the rewards can be built. Reads config files only, loads no model."""
    problems: list[str] = []
    for name, weight in reward.weights.items():
        if name not in REWARD_SOURCES:
            nearest = ([s for s in REWARD_SOURCES if str(name).lower() in s or s in str(name).lower()]
                       or difflib.get_close_matches(str(name).lower(), REWARD_SOURCES, n=1, cutoff=0.5))
            hint = f"did you mean {nearest[0]!r}? " if nearest else ""
            problems.append(f"reward.weights: unknown reward source {name!r}; {hint}the sources are "
                            f"{', '.join(REWARD_SOURCES)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight == 0:
            problems.append(f"reward.weights.{name}: {weight!r} must be a finite number other than 0 "
                            "(remove the source to turn it off)")
    used = set(reward.weights)
    if "model" in used:
        problems += _reward_model_problems(reward.model)
    elif reward.model:
        problems.append("reward.model is set but reward.weights has no `model`: add model: 1.0 to "
                        "reward.weights, or remove reward.model")
    if "format" in used:
        if not reward.format_pattern:
            problems.append("reward.format_pattern: the `format` source needs a regular expression "
                            "(e.g. reward.format_pattern='。$')")
        else:
            try:
                re.compile(reward.format_pattern)
            except re.error as error:
                problems.append(f"reward.format_pattern: {reward.format_pattern!r} is not a valid regular "
                                f"expression ({error})")
    if "length" in used and reward.length_target < 1:
        problems.append(f"reward.length_target: {reward.length_target} must be at least 1 token")
    if "judge" in used:
        problems += _judge_problems(reward.judge)
    return problems


def _reward_model_problems(folder: str | None) -> list[str]:
    if not folder:
        return ["reward.model: the `model` source needs a reward model folder (train one with stage=rm)"]
    path = Path(folder)
    config_file = path / "config.json"
    if not config_file.is_file():
        return [f"reward.model: {folder} is not a model folder (no config.json); train one with stage=rm"]
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return [f"reward.model: {config_file} is unreadable ({error})"]
    found = []
    architectures = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures):
        found.append(f"reward.model: {folder} is not a reward model (architectures {architectures}, not "
                     "…ForSequenceClassification); train one with stage=rm")
    labels = config.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) else config.get("num_labels", 2)
    if not found and num_labels != 1:
        found.append(f"reward.model: {folder} has {num_labels} labels; a reward model has one score "
                     "(num_labels 1); train one with stage=rm")
    if not any(path.glob("*.safetensors")):
        found.append(f"reward.model: {folder} has no *.safetensors weights (belle loads no pickled weights)")
    if not (path / "chat_template.jinja").is_file() and not _has_template_in_config(path):
        found.append(f"reward.model: {folder}'s tokenizer has no chat_template to render conversations with")
    return found


def _has_template_in_config(path: Path) -> bool:
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _judge_problems(judge: JudgeRewardConfig) -> list[str]:
    from belle.eval.evalset import class_key
    from belle.llm import OPENAI_BASE_URL, is_loopback
    from belle.records import DataError

    found = [f"reward.judge.{problem}" for problem in judge.options().problems()]
    if not judge.model:
        found = [p for p in found if not p.startswith("reward.judge.model:")]
        found.insert(0, "reward.judge.model: the `judge` source needs the judge model's name (the model the "
                        "endpoint serves)")
    base_url = judge.base_url or OPENAI_BASE_URL
    if not os.environ.get(judge.api_key_env) and not is_loopback(base_url):
        found.append(f"reward.judge.api_key_env: the environment variable {judge.api_key_env} is not set "
                     f"(export {judge.api_key_env}=...), or name another one with reward.judge.api_key_env")
    try:
        prompts = _judge_prompts(judge)
    except (DataError, OSError, UnicodeDecodeError) as error:
        found.append(f"reward.judge.prompts: {error}")
    else:
        if class_key(judge.default_class) not in prompts:
            found.append(f"reward.judge.default_class: {judge.default_class!r} has no judge prompt "
                         f"(the prompts have: {', '.join(sorted(prompts))})")
    return found


def _judge_prompts(judge: JudgeRewardConfig) -> dict[str, str]:
    from belle.eval.judging import default_judge_prompts_path, read_judge_prompts

    path = Path(judge.prompts) if judge.prompts else default_judge_prompts_path()
    if not path.is_file():
        raise OSError(f"{path}: no such file")
    return read_judge_prompts(path)


def build_rewards(reward: RewardConfig, end_ids: Iterable[int]) -> list[Callable[..., list[float | None]]]:
    """TRL reward functions in the order of `reward.weights`, each named after its source (their
    weights are `reward.weights`' values, in the same order). `end_ids` are the token ids that end
    a completion, the ones generation stops on (`model.generation_config.eos_token_id` after
    `belle.train.run.set_reply_ends`: EOS, the generation config's ends and the template's
    end-of-turn token); `eos` rewards a completion whose last token is one of them. Call
    `reward_problems` first: this assumes a valid `reward`. Nothing is loaded or called until a
    function runs."""
    ends = frozenset(int(i) for i in ([end_ids] if isinstance(end_ids, int) else end_ids))
    builders: dict[str, Callable[[], Callable[..., list[float | None]]]] = {
        "model": lambda: RewardModelScore(reward.model),
        "judge": lambda: JudgeScore(reward.judge),
        "math_answer": lambda: MathAnswer(),
        "format": lambda: FormatMatch(reward.format_pattern or ""),
        "length": lambda: LengthPenalty(reward.length_target),
        "eos": lambda: EndsWithEos(ends),
    }
    return [builders[name]() for name in reward.weights]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the contents of its assistant messages joined."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


# ---------------------------------------------------------------------------------------------
# Rule rewards


class MathAnswer:
    """1.0 when the completion's `final_answer` equals the reference's, else 0.0 (also when the
    completion states none); None when the record has no reference or its reference states no
    number (nothing to check against)."""

    __name__ = "math_answer"

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs: Any) -> list[float | None]:
        references = kwargs.get("reference") or [""] * len(completions)
        rewards: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            expected = final_answer(reference or "")
            if expected is None:
                rewards.append(None)
                continue
            got = final_answer(completion_text(completion))
            rewards.append(1.0 if got is not None and same_number(got, expected) else 0.0)
        return rewards


class FormatMatch:
    """1.0 when `re.search(pattern, completion)` matches, else 0.0."""

    __name__ = "format"

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs: Any) -> list[float | None]:
        return [1.0 if self.pattern.search(completion_text(c)) else 0.0 for c in completions]


class LengthPenalty:
    """0 for a completion of up to `target` tokens, then -(excess / target), at least -1: a
    completion twice the target or longer gets -1."""

    __name__ = "length"

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list[float | None]:
        return [max(-1.0, -max(0, len(ids) - self.target) / self.target) for ids in completion_ids]


class EndsWithEos:
    """1.0 when the completion's last token is one of `ids` (it stopped by itself), else 0.0 (cut
    at the length limit, or empty)."""

    __name__ = "eos"

    def __init__(self, ids: frozenset[int]) -> None:
        self.ids = ids

    def __call__(self, prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list[float | None]:
        return [1.0 if len(ids) and int(ids[-1]) in self.ids else 0.0 for ids in completion_ids]


# ---------------------------------------------------------------------------------------------
# Final answers of math texts

_NUMBER = re.compile(
    r"(?P<sign>(?<![0-9A-Za-z)\]）])[-−])?"  # a minus after a number or a bracket is a subtraction
    r"(?P<int>\d+)(?P<dec>\.\d+)?"
    r"(?:/(?P<den>\d+(?:\.\d+)?)(?![\d.]))?"
    r"(?P<pct>%)?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_GSM8K = re.compile(r"####")
_ANSWER = re.compile(r"答案|(?<![回解])答(?=[:：])|answer", re.IGNORECASE)
# Words that open a concluding sentence. 故 only as a word ("故，"), not in 故事; 共 (一共, 总共) only
# before a number or as 共有/共是/共计, not in 共同, 共享, 公共, ...
_CONCLUSION = re.compile(r"因此|所以|综上|[一总]?共(?:[有是计]|(?=[\s:：]*[-−]?\d))|故(?=[,，\s])|therefore|thus|hence",
                         re.IGNORECASE)
_CLAUSE_END = re.compile(r"[。！？!?；;\n，,]|\.(?!\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_EQUALS = re.compile(r"=|≈")


def final_answer(text: str) -> str | None:
    """The last answer a math text states, normalised; None when it states no number.

    Where: the last `\\boxed{…}`; else the text after the last `####` (GSM8K); else the clause
    after the last 答案 / 答： / "answer"; else the clause after the last concluding word (因此,
    所以, 综上, 故, 共/一共/总共 before a number, 共有/共是/共计, therefore, ...); else the whole
    text. A clause ends at the next comma or sentence end. Within it, a chain `… = x` gives the number after the last `=` (or `≈`),
    otherwise the clause's last number ("因此，张姨买5双鞋需要25元" -> 25). The first of these
    places that holds a number decides; a text with a number in none of them gives its last number.

    Normalised: NFKC (full-width digits and signs), thousands commas removed, `\\frac{a}{b}` read
    as a/b, a percentage as its fraction; the value is written as an integer ("12"), a terminating
    decimal without trailing zeros ("0.75", also for "3/4"), or a reduced fraction ("1/3").
    """
    text = _THOUSANDS.sub("", _FRAC.sub(r"\1/\2", unicodedata.normalize("NFKC", text)))
    boxed = _BOXED.findall(text)
    if boxed and (value := _first_number(boxed[-1])) is not None:
        return _format(value)
    for marker in (_GSM8K, _ANSWER, _CONCLUSION):
        found = list(marker.finditer(text))
        if found and (value := _number_in_clause(text[found[-1].end():])) is not None:
            return _format(value)
    numbers = list(_NUMBER.finditer(text))
    return _format(_value(numbers[-1])) if numbers else None


def _number_in_clause(rest: str) -> Fraction | None:
    """The stated number of the clause that `rest` starts with (leading separators skipped)."""
    rest = rest.lstrip(" \t\n:：,，是为")
    end = _CLAUSE_END.search(rest)
    clause = rest[: end.start()] if end else rest
    equals = list(_EQUALS.finditer(clause))
    if equals and (value := _first_number(clause[equals[-1].end():])) is not None:
        return value
    numbers = list(_NUMBER.finditer(clause))
    return _value(numbers[-1]) if numbers else None


def _first_number(text: str) -> Fraction | None:
    match = _NUMBER.search(text)
    return _value(match) if match else None


def _value(match: re.Match[str]) -> Fraction:
    value = Fraction(match["int"] + (match["dec"] or ""))
    if match["den"] is not None and Fraction(match["den"]) != 0:
        value /= Fraction(match["den"])
    if match["pct"]:
        value /= 100
    return -value if match["sign"] else value


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    if denominator != 1:  # not a terminating decimal
        return f"{value.numerator}/{value.denominator}"
    places = max(_power(value.denominator, 2), _power(value.denominator, 5))
    scaled = abs(value.numerator) * 10**places // value.denominator  # exact: the decimal terminates
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


def _power(n: int, prime: int) -> int:
    count = 0
    while n % prime == 0:
        n //= prime
        count += 1
    return count


def same_number(a: str, b: str) -> bool:
    """Whether two `final_answer` values are the same number: equal, or one a decimal of at least
    two places and the other a fraction that rounds to it ("0.33" and "1/3"; not "0.3")."""
    if a == b:
        return True
    for written, other in ((a, b), (b, a)):
        places = len(written.partition(".")[2])
        if places >= 2 and "/" in other:
            if round(Fraction(other), places) == Fraction(written):
                return True
    return Fraction(a) == Fraction(b)


# ---------------------------------------------------------------------------------------------
# Reward model


class RewardModelScore:
    """Logit 0 of the reward model in `folder` for each prompt + completion, loaded on the first
    call (AutoModelForSequenceClassification, safetensors only, no remote code) on the policy's
    device: the current CUDA device when there is one (each process's own GPU under accelerate),
    else the CPU."""

    __name__ = "model"

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self.model: Any = None
        self.tokenizer: Any = None
        self.max_length = RM_MAX_LENGTH
        self.batch = RM_BATCH

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from belle.modeling import resolve_dtype

        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.folder, dtype=resolve_dtype("auto"), use_safetensors=True, trust_remote_code=False)
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if model.config.pad_token_id is None:
            self.batch = 1  # without a pad id the model cannot find each row's last token; one row needs none
        elif tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = model.config.pad_token_id
        # the score is read at the last token, so a text over the limit loses its beginning, not its answer
        tokenizer.truncation_side = "left"
        limits = [RM_MAX_LENGTH, getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self.max_length = min(int(n) for n in limits if isinstance(n, (int, float)) and n > 0)
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        logger.info("reward model %s on %s (max %d tokens)", self.folder, device, self.max_length)

    def texts(self, prompts: list, completions: list) -> list[str]:
        """Each prompt + completion as the RM reads it: a conversation rendered with its tokenizer's
        chat template (whole conversation, no generation prompt), or the two strings joined."""
        if prompts and not isinstance(prompts[0], str):
            return [self.tokenizer.apply_chat_template(list(p) + list(c), tokenize=False, add_generation_prompt=False)
                    for p, c in zip(prompts, completions, strict=True)]
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs: Any) -> list[float | None]:
        import torch

        if self.model is None:
            self.load()
        texts = self.texts(prompts, completions)
        scores: list[float | None] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch):
                inputs = self.tokenizer(texts[start:start + self.batch], return_tensors="pt", padding=True,
                                        padding_side="right", truncation=True, max_length=self.max_length,
                                        add_special_tokens=False).to(self.model.device)
                logits = self.model(**inputs).logits  # (rows, num_labels)
                scores.extend(logits[:, 0].float().tolist())
        return scores


# ---------------------------------------------------------------------------------------------
# LLM judge


class JudgeScore:
    """The judge's score in [0, 1] of each completion, see the module docstring. Each call runs
    one event loop with a fresh `LLMClient` (a client belongs to one loop) and asks about every
    distinct (question, completion) of the batch at once, within the client's concurrency; a
    re-run of the same batch is answered from the reply cache."""

    __name__ = "judge"

    def __init__(self, judge: JudgeRewardConfig, *, api_key: str | None = None, backoff_base: float | None = None) -> None:
        self.judge = judge
        self.api_key = api_key
        self.backoff_base = backoff_base  # seconds; tests shorten the retries' waits
        self._prompts: dict[str, str] | None = None
        self._warned: set[str] = set()

    @property
    def prompts(self) -> dict[str, str]:
        if self._prompts is None:
            self._prompts = _judge_prompts(self.judge)
        return self._prompts

    def item(self, prompt: Any, reference: str, klass: str) -> EvalItem:
        """The eval item a judge sees: the prompt's user turns, the reference, the class (the
        default class when the record has none, or when the prompts have none for it)."""
        from belle.eval.evalset import EvalItem, class_key

        if isinstance(prompt, str):
            turns: tuple[str, ...] = (prompt,)
        else:
            turns = tuple(m.get("content") or "" for m in prompt if m.get("role") == "user") or ("",)
        key = class_key(klass or self.judge.default_class)
        if key not in {class_key(k) for k in self.prompts}:
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("no judge prompt for class %r: judged with class %r's", key, self.judge.default_class)
            key = class_key(self.judge.default_class)
        return EvalItem(id="", turns=turns, std_answer=reference or "", klass=key)

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs: Any) -> list[float | None]:
        from belle.eval.judging import judge_messages

        n = len(completions)
        references = kwargs.get("reference") or [""] * n
        classes = kwargs.get("class") or [""] * n
        chats = [judge_messages(self.item(p, r, k), completion_text(c), self.prompts)
                 for p, c, r, k in zip(prompts, completions, references, classes, strict=True)]
        scores = asyncio.run(self._judge_all(chats))
        failed = sum(score is None for score in scores)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("judge/failed", float(failed))
        if failed:
            logger.warning("the judge failed on %d of %d completions; each gets its prompt group's mean", failed, n)
        return neutral_fill(scores, [json.dumps(p, ensure_ascii=False, sort_keys=True) for p in prompts])

    async def _judge_all(self, chats: list[list[dict[str, str]]]) -> list[float | None]:
        """The parsed score of each chat (None: failed after retries or unparsable), each distinct
        chat asked once."""
        from belle.eval.judging import parse_score
        from belle.eval.scoring import ask_judge, judge_params
        from belle.llm import LLMClient, LLMError, LLMFatalError, Reply, fan_out, redact_url

        keys = [json.dumps(chat, ensure_ascii=False) for chat in chats]
        distinct = dict(zip(keys, chats))
        found: dict[str, float | None] = {}
        params = judge_params(1, 0.0, JUDGE_MAX_TOKENS)
        options = self.judge.options()
        extra = {} if self.backoff_base is None else {"backoff_base": self.backoff_base}
        try:
            async with LLMClient(options, api_key=self.api_key, **extra) as client:

                def settle(key: str, outcome: Reply | LLMError) -> None:
                    if isinstance(outcome, LLMError):
                        logger.warning("judge request failed: %s", outcome)
                        found[key] = None
                    else:
                        found[key] = parse_score(outcome.text).score

                await fan_out(distinct, lambda key: ask_judge(client, distinct[key], params), settle,
                              concurrency=options.concurrency)
        except LLMFatalError as error:
            where = redact_url(options.base_url) or "OpenAI"
            raise UsageError(f"reward.judge: the judge {options.model!r} at {where} cannot be used: {error}") from None
        return [found.get(key) for key in keys]


def neutral_fill(scores: list[float | None], groups: list[str]) -> list[float | None]:
    """`scores` with each None replaced by the mean of the other scores of its group (completions
    of the same prompt), or left None when none of its group has a score.

    Neutral: the group's mean stays what it was without the failed one, so the failed completion
    gets zero advantage from this source and every other one keeps its reward minus that mean.
    The scaled advantages do change a little: the group looks one larger and, under GRPO's
    per-group std scaling, less spread (the same squared deviations over one more completion), so
    the others' advantages grow slightly; RLOO's leave-one-out baselines likewise shift them by a
    common factor, keeping their signs and order."""
    by_group: dict[str, list[float]] = {}
    for score, group in zip(scores, groups, strict=True):
        if score is not None:
            by_group.setdefault(group, []).append(score)
    return [score if score is not None else (sum(by_group[g]) / len(by_group[g]) if g in by_group else None)
            for score, g in zip(scores, groups, strict=True)]
