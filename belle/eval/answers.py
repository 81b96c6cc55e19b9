"""Model answers to an eval set: generating them (a local model, or any OpenAI-compatible endpoint)
and reading them back for the judge.

An answers file is an eval set with the model's answer added, one JSON line per item:

    {"id", "class", "question": str | [turn, ...], "std_answer", "answer": str, "model": str,
     "turn_answers": [str, ...] (multi-turn items: the reply to every turn; "answer" is the last),
     "finish_reason", "prompt_tokens", "completion_tokens"}

so any file in BELLE's eval format plus an `answer` field can be scored too. Generation appends
one flushed line per item; a re-run skips the ids already written, so a killed run resumes with
nothing lost or doubled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from belle import jsonl
from belle.eval.evalset import EvalItem, read_eval_records
from belle.generation import Engine, GenerationParams, PromptTooLong
from belle.llm import LLMClient, LLMError, LLMFatalError, LLMOptions

# The decoding of BELLE's own eval inference: all but greedy, with its repetition penalty.
EVAL_DECODING = GenerationParams(temperature=0.001, top_p=0.85, top_k=30, repetition_penalty=1.2, max_new_tokens=1024)


@dataclass(frozen=True)
class Answered:
    """One line of an answers file: the item, the model's (last) answer, and the model's name."""

    item: EvalItem
    answer: str
    model: str | None


def read_answers(path: Path) -> list[Answered]:
    """Read an answers file; `DataError` listing every bad record as `file:line: field: problem`.

    Items follow `read_eval_set`'s rules (an id is derived when there is none); `answer` must be
    a string, and may be empty (the judge then scores an empty answer).
    """
    return [Answered(item, record["answer"], record.get("model") if isinstance(record.get("model"), str) else None)
            for item, record in read_eval_records(path, _answer_problems)]


def _answer_problems(record: dict[str, Any]) -> list[tuple[str, str]]:
    answer = record.get("answer")
    if answer is None:
        return [("answer", "missing (is this an eval set rather than an answers file?)")]
    if not isinstance(answer, str):
        return [("answer", f"must be a string (got {type(answer).__name__})")]
    return []


def answer_record(item: EvalItem, replies: Sequence[str], model: str, finish_reason: str | None,
                  prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The answers-file line of `item`, answered turn by turn with `replies`."""
    record: dict[str, Any] = {
        "id": item.id, "class": item.klass,
        "question": item.turns[0] if len(item.turns) == 1 else list(item.turns),
        "std_answer": item.std_answer, "answer": replies[-1], "model": model,
    }
    if len(item.turns) > 1:
        record["turn_answers"] = list(replies)
    record.update(finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return record


@dataclass
class AnswerRun:
    """What one generate run did: items answered, and items skipped (id -> why: a prompt longer
    than the context, an endpoint that failed for good)."""

    answered: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def pending_items(items: Sequence[EvalItem], output: Path) -> tuple[list[EvalItem], int]:
    """The items not yet in `output` (cutting a torn last line), and how many are."""
    done = {record.get("id") for record in jsonl.resume_records(output)}
    pending = [item for item in items if item.id not in done]
    return pending, len(items) - len(pending)


def _history(system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def answer_locally(engine: Engine, items: Sequence[EvalItem], output: Path, params: GenerationParams, *,
                   batch_size: int = 8, system: str = "", on_item: Callable[[], None] | None = None) -> AnswerRun:
    """Answer `items` with a loaded model in left-padded batches of `batch_size`, appending each
    batch's lines to `output` (the file's order is the batches', not the set's).

    Items are batched by prompt length so that a batch pads little. A multi-turn item is answered
    turn by turn, each turn seeing the model's earlier replies; the turns of a batch's items go
    together. An item whose prompt does not fit the context is skipped and named in the result.
    """
    run = AnswerRun()
    lengths = {item.id: len(engine.encode_chat(_history(system) + [{"role": "user", "content": item.turns[0]}]))
               for item in items}
    ordered = sorted(items, key=lambda item: lengths[item.id])
    with jsonl.open_append(output) as out:
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start:start + batch_size]
            histories = {item.id: _history(system) for item in batch}
            replies: dict[str, list[str]] = {item.id: [] for item in batch}
            usage = {item.id: [None, 0, 0] for item in batch}  # finish_reason, prompt tokens, completion tokens
            for turn in range(max(len(item.turns) for item in batch)):
                active, prompts = [], []
                for item in batch:
                    if item.id in run.skipped or turn >= len(item.turns):
                        continue
                    histories[item.id].append({"role": "user", "content": item.turns[turn]})
                    try:
                        ids, _ = engine.fit_chat(histories[item.id], params.max_new_tokens)
                    except PromptTooLong as e:
                        run.skipped[item.id] = str(e)
                        continue
                    active.append(item)
                    prompts.append(ids)
                if not active:
                    continue
                for item, completion in zip(active, engine.generate_batch(prompts, params)):
                    histories[item.id].append({"role": "assistant", "content": completion.text})
                    replies[item.id].append(completion.text)
                    usage[item.id][0] = completion.finish_reason
                    usage[item.id][1] += completion.prompt_tokens
                    usage[item.id][2] += completion.completion_tokens
            for item in batch:
                if item.id not in run.skipped:
                    jsonl.append(out, answer_record(item, replies[item.id], engine.name, *usage[item.id]))
                    run.answered += 1
                if on_item:
                    on_item()
    return run


def answer_remotely(options: LLMOptions, items: Sequence[EvalItem], output: Path, params: GenerationParams, *,
                    name: str | None = None, system: str = "", on_item: Callable[[], None] | None = None) -> AnswerRun:
    """Answer `items` through an OpenAI-compatible endpoint (vLLM, `belle serve`, a hosted model),
    `options.concurrency` items at a time, appending each line as its item finishes; the answers
    are recorded as model `name`, default `options.model`.

    Sampling goes as temperature, top_p and max_tokens, plus top_k and repetition_penalty (which
    vLLM and `belle serve` honour) to any endpoint but OpenAI's, which refuses them. An item whose
    request fails for good is skipped and named in the result; a re-run asks again (the client's
    cache keeps what came back).
    """
    request: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens}
    if options.base_url:  # OpenAI's own API refuses parameters it does not know
        request.update(top_k=params.top_k, repetition_penalty=params.repetition_penalty)
    if params.stop:
        request["stop"] = list(params.stop)

    async def answer(client: LLMClient, item: EvalItem) -> tuple[EvalItem, dict[str, Any] | str]:
        """(item, its answers-file line), or (item, why it failed) when a request failed for good."""
        history, replies, tokens, reply = _history(system), [], [0, 0], None
        try:
            for turn in item.turns:
                history.append({"role": "user", "content": turn})
                reply = await client.chat(history, **request)
                history.append({"role": "assistant", "content": reply.text})
                replies.append(reply.text)
                tokens[0] += reply.prompt_tokens
                tokens[1] += reply.completion_tokens
        except LLMFatalError:
            raise
        except LLMError as e:
            return item, str(e)
        return item, answer_record(item, replies, name or options.model, reply.finish_reason, *tokens)

    async def run_all() -> AnswerRun:
        run = AnswerRun()
        async with LLMClient(options) as client:
            futures = [asyncio.ensure_future(answer(client, item)) for item in items]
            with jsonl.open_append(output) as out:
                try:
                    for next_done in asyncio.as_completed(futures):
                        item, result = await next_done
                        if isinstance(result, str):
                            run.skipped[item.id] = result
                        else:
                            jsonl.append(out, result)
                            run.answered += 1
                        if on_item:
                            on_item()
                finally:
                    for future in futures:
                        future.cancel()
                    await asyncio.gather(*futures, return_exceptions=True)
        return run

    return asyncio.run(run_all())
