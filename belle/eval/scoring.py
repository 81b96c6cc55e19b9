"""Scoring answers with an LLM judge, into a run folder that a killed run resumes.

`score_answers` asks the judge about every answer `samples` times (request variant k for sample
k, so each sample has its own cache entry) through the shared client, and appends the item's
judgments to `RUN_DIR/judgments.jsonl` (format in `belle.eval.report`) once all its samples are
in. A re-run reads that file and asks only for what is missing, so a finished run makes no call.
`RUN_DIR/run.json` pins what the judgments depend on (judge, prompts, message format, decoding,
with a run.json from before formats counting as "delimited"); scoring into the
same folder with other settings is refused rather than mixed into one report, and an answer that
changed since it was judged is refused too (each judgment keeps a hash of the answer it saw).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from tqdm import tqdm

from belle.cli import UsageError
from belle.eval import judging
from belle.eval.answers import Answered
from belle.eval.evalset import EvalItem
from belle.eval.judging import judge_messages, missing_prompts, parse_score
from belle.eval.report import JUDGMENTS, RUN_INFO, read_judgments
from belle.llm import OPENAI_BASE_URL, LLMClient, LLMError, LLMOptions, Reply, Usage, fan_out, redact_url
from belle.records import jsonl, write_text_atomic

# Settings that change what the judge says: a run folder keeps one value of each.
PINNED = ("judge", "judge_base_url", "prompts_sha1", "judge_format", "temperature", "max_tokens")
# The longest judge reply (tokens) by message format: BELLE's page asks for 3000.
DEFAULT_MAX_TOKENS = {"delimited": 1024, "belle-page": 3000}


def judge_params(samples: int, temperature: float | None, max_tokens: int | None,
                 judge_format: str = "delimited") -> dict[str, Any]:
    """The judge's chat parameters: temperature 0 for one sample (as repeatable as the judge
    allows; BELLE's page uses 0 too), 0.7 for several (samples that cannot differ average
    nothing), unless given; max_tokens `DEFAULT_MAX_TOKENS[judge_format]` unless given."""
    if temperature is None:
        temperature = 0.0 if samples == 1 else 0.7
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS[judge_format]
    return {"temperature": temperature, "max_tokens": max_tokens}


def check_judge_format(judge_format: str) -> None:
    """`belle.eval.judging.check_judge_format` for input from a user: its `ValueError` as a `UsageError`."""
    try:
        judging.check_judge_format(judge_format)
    except ValueError as e:
        raise UsageError(str(e)) from None


def file_sha1(path: Path) -> str:
    """The hex sha1 of a file's bytes (run.json pins the judge prompts' file by it)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def answer_hash(answer: str) -> str:
    """The first 12 hex digits of the sha1 of `answer` (UTF-8): what a judgment keeps of the answer it saw."""
    return hashlib.sha1(answer.encode("utf-8")).hexdigest()[:12]


def judgment_record(item: EvalItem, answer: str, sample: int, reply: Reply,
                    judge_format: str = "delimited") -> dict[str, Any]:
    """One line of judgments.jsonl: the parsed score (None: a parse failure) and the raw reply.
    A "belle-page" reply gives its score first, so the first score in it counts (see `parse_score`)."""
    parsed = parse_score(reply.text, first=judge_format == "belle-page")
    return {
        "id": item.id, "class": item.klass, "sample": sample, "score": parsed.score, "reason": parsed.reason,
        "raw": reply.text, "answer_sha1": answer_hash(answer), "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens, "cached": reply.cached,
    }


async def ask_judge(client: LLMClient, messages: list[dict[str, str]], params: dict[str, Any], variant: int = 0) -> Reply:
    """The judge's reply to `messages`; a completion endpoint (`--judge-api completion`) gets
    the messages' texts as one (the system prompt, a blank line, the user message; for
    "belle-page", the one message's text as it is)."""
    if client.options.api == "chat":
        return await client.chat(messages, variant=variant, **params)
    return await client.complete("\n\n".join(m["content"] for m in messages), variant=variant, **params)


async def judge_answer(client: LLMClient, item: EvalItem, answer: str, prompts: dict[str, str], *,
                       samples: int = 1, params: dict[str, Any], first_sample: int = 0,
                       judge_format: str = "delimited") -> list[dict[str, Any]]:
    """Judgment records of samples `first_sample .. samples - 1` of one answer, in sample order,
    asked in `judge_format` (see `belle.eval.judging.judge_messages`).

    Raises `LLMError` when a call fails for good, `KeyError` when the class has no prompt."""
    messages = judge_messages(item, answer, prompts, judge_format)
    replies = await asyncio.gather(*(ask_judge(client, messages, params, k) for k in range(first_sample, samples)))
    return [judgment_record(item, answer, k, reply, judge_format)
            for k, reply in zip(range(first_sample, samples), replies)]


@dataclass
class ScoreResult:
    """What one scoring run did: items judged now, items already judged before, items whose
    judge call failed for good (id -> error; a re-run retries them), samples judged now with no
    readable score, and the client's usage (None when nothing was asked)."""

    judged: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    parse_failures: int = 0
    usage: Usage | None = None


def check_prompts(answered: Sequence[Answered], prompts: dict[str, str]) -> None:
    """Raise `UsageError` naming the classes of `answered` that `prompts` has no prompt for."""
    missing = missing_prompts((a.item for a in answered), prompts)
    if missing:
        raise UsageError(f"no judge prompt for class(es) {', '.join(map(repr, missing))}; "
                         f"prompts have: {', '.join(sorted(prompts))}")


def score_answers(answered: Sequence[Answered], prompts: dict[str, str], judge: LLMOptions, run_dir: Path, *,
                  samples: int = 1, temperature: float | None = None, max_tokens: int | None = None,
                  judge_format: str = "delimited", api_key: str | None = None, prompts_sha1: str = "",
                  on_progress: Callable[[int, int], None] | None = None, show_progress: bool = True) -> ScoreResult:
    """Judge every answer `samples` times into `run_dir` (see the module docstring).

    `judge_format` is the judge's message format (`JUDGE_FORMATS`), which also sets the default
    `max_tokens` (`judge_params`); `prompts_sha1` names the prompt file's content in run.json; `on_progress(done, total)` is
    called after each item with counts of this run's items. Raises `UsageError` for settings that
    cannot work (a class with no prompt, a folder scored with other settings, changed answers),
    `LLMFatalError` when the judge refuses the key or does not exist.
    """
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, not {samples}")
    if judge.problems():
        raise UsageError("; ".join(judge.problems()))
    check_judge_format(judge_format)
    check_prompts(answered, prompts)
    params = judge_params(samples, temperature, max_tokens, judge_format)
    models = sorted({a.model for a in answered if a.model})
    pin_run_info(run_dir, {
        "judge": judge.model, "prompts_sha1": prompts_sha1, "judge_format": judge_format,
        "temperature": params["temperature"], "max_tokens": params["max_tokens"], "model": ", ".join(models) or None, "judge_base_url": redact_url(judge.base_url),
        "price_input": judge.price_input, "price_output": judge.price_output,
    }, hint=_score_hint)
    path = run_dir / JUDGMENTS
    todo = _todo(answered, path, samples)
    result = ScoreResult(skipped=len(answered) - len(todo))
    if todo:
        asyncio.run(_judge_all(todo, prompts, judge, path, samples, params, judge_format, api_key, result,
                               on_progress, show_progress))
    return result


def pin_run_info(run_dir: Path, info: dict[str, Any], pinned: Sequence[str] = PINNED, *, verb: str = "score",
                 hint: Callable[[dict[str, Any], dict[str, Any]], str] | None = None) -> None:
    """Write `run_dir`/run.json from `info` (which has every key of `pinned`), or check that the one
    there was made with the same `pinned` settings and merge `info` into it.

    Raise `UsageError` naming each pinned setting that differs, followed by `hint(old, info)`, and
    telling to `verb` ("score", "judge") into a new --output; also for a run.json that is no JSON object.
    """
    path = run_dir / RUN_INFO
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        if not isinstance(old, dict):
            raise UsageError(f"{path}: not a JSON object; {verb} into a new --output")
        changed = [f"{key} {_pinned(key, old.get(key))!r} -> {_pinned(key, info[key])!r}" for key in pinned
                   if _pinned(key, old.get(key)) != _pinned(key, info[key])]
        if changed:
            raise UsageError(f"{run_dir} was {verb}d with other settings ({'; '.join(changed)}"
                             f"{hint(old, info) if hint else ''}); {verb} into a new --output, "
                             "or use the same settings to resume")
        info = {**old, **{k: v for k, v in info.items() if v is not None}}
    info["judge_base_url"] = redact_url(info.get("judge_base_url"))  # an older run.json may hold it whole
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")


def _score_hint(old: dict[str, Any], info: dict[str, Any]) -> str:
    """Why a re-run of `belle eval score` may differ from `old` without the user asking for it."""
    hint = ("; the default temperature is 0 for one sample and 0.7 for several"
            if old.get("temperature") != info["temperature"] else "")
    if _pinned("judge_format", old.get("judge_format")) != info["judge_format"]:
        hint += "; the default --max-tokens follows --judge-format (delimited 1024, belle-page 3000)"
    return hint


def _pinned(key: str, value: Any) -> Any:
    """`value` of run.json's `key` as the pinned-settings check compares it: a judge base URL
    redacted (run.json never holds its secrets) and without a trailing slash, None as OpenAI's;
    no judge format (a run.json from before formats) as "delimited"."""
    if key == "judge_base_url" and (value is None or isinstance(value, str)):
        return redact_url((value or OPENAI_BASE_URL).rstrip("/"))
    if key == "judge_format" and value is None:
        return "delimited"
    return value


def _todo(answered: Sequence[Answered], path: Path, samples: int) -> list[tuple[Answered, int]]:
    """(answer, first sample still to ask) for every answer with samples missing in `path`."""
    records = read_judgments(path, cut_torn=True) if path.exists() else []
    have: dict[str, int] = {}
    seen: dict[str, str] = {}
    for record in records:
        have[record["id"]] = max(have.get(record["id"], 0), record["sample"] + 1)
        seen[record["id"]] = record.get("answer_sha1", "")
    changed = [a.item.id for a in answered if a.item.id in seen and seen[a.item.id] != answer_hash(a.answer)]
    if changed:
        raise UsageError(f"{len(changed)} answer(s) changed since {path} judged them (e.g. id {changed[0]!r}); "
                         "score into a new --output")
    return [(a, have.get(a.item.id, 0)) for a in answered if have.get(a.item.id, 0) < samples]


async def _judge_all(todo: list[tuple[Answered, int]], prompts: dict[str, str], judge: LLMOptions, path: Path,
                     samples: int, params: dict[str, Any], judge_format: str, api_key: str | None,
                     result: ScoreResult,
                     on_progress: Callable[[int, int], None] | None, show_progress: bool) -> None:
    scores: list[float] = []
    settled = 0
    bar = tqdm(total=len(todo), desc="judging", unit="item", dynamic_ncols=True, disable=not show_progress)

    def shown() -> None:
        nonlocal settled
        settled += 1
        bar.update()
        bar.set_postfix_str(f"mean {sum(scores) / len(scores):.3f}" if scores else "", refresh=False)
        if on_progress:
            on_progress(settled, len(todo))

    async with LLMClient(judge, api_key=api_key) as client:
        result.usage = client.usage
        with jsonl.open_append(path) as out:

            def settle(unit: tuple[Answered, int], records: list[dict[str, Any]] | LLMError) -> None:
                answer = unit[0]
                if isinstance(records, LLMError):
                    result.failed[answer.item.id] = str(records)
                    return
                for record in records:
                    jsonl.append(out, record)
                    if record["score"] is None:
                        result.parse_failures += 1
                    else:
                        scores.append(record["score"])
                result.judged += 1

            def ask(unit: tuple[Answered, int]) -> Awaitable[list[dict[str, Any]]]:
                answer, first = unit
                return judge_answer(client, answer.item, answer.answer, prompts, samples=samples, params=params,
                                    first_sample=first, judge_format=judge_format)

            try:
                await fan_out(todo, ask, settle, concurrency=judge.concurrency, progress=shown)
            finally:
                bar.close()
