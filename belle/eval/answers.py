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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from belle.chat.backends import ChatBackend, LocalBackend, RemoteBackend
from belle.cli import UsageError
from belle.eval.evalset import EvalItem, read_eval_records
from belle.generation import Engine, GenerationParams, SamplingOptions
from belle.llm import LLMOptions
from belle.records import jsonl

# The decoding of BELLE's own eval inference: all but greedy, with its repetition penalty.
EVAL_DECODING = GenerationParams(temperature=0.001, top_p=0.85, top_k=30, repetition_penalty=1.2, max_new_tokens=1024)
EVAL_SAMPLING = SamplingOptions.of(EVAL_DECODING)  # the same, as the eval verbs' flag defaults
REMOTE_BATCHES = 4  # a remote batch is this many times the endpoint's concurrency


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


def answer_items(backend: ChatBackend, model: str, items: Sequence[EvalItem], output: Path,
                 params: GenerationParams, *, batch_size: int = 8, system: str = "", name: str | None = None,
                 on_item: Callable[[], None] | None = None) -> AnswerRun:
    """Answer `items` with `backend`'s `model` in batches of `batch_size`, appending each batch's
    lines to `output` as model `name` (default `model`); the file's order is the batches', not the set's.

    Items are batched by prompt length (where the backend counts tokens) so that a batch pads
    little. A multi-turn item is answered turn by turn, each turn seeing the model's earlier
    replies; the turns of a batch's items go to the backend together. An item that got no reply
    (a prompt over the context, a request that failed for good) is skipped and named in the
    result; a re-run asks again. `LLMFatalError` (a refused key, an unknown model) propagates.
    """
    run = AnswerRun()
    lengths = {item.id: backend.prompt_tokens(model, _history(system) + [{"role": "user", "content": item.turns[0]}])
               for item in items}
    ordered = sorted(items, key=lambda item: lengths[item.id])
    with jsonl.open_append(output) as out:
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start:start + batch_size]
            histories = {item.id: _history(system) for item in batch}
            replies: dict[str, list[str]] = {item.id: [] for item in batch}
            usage = {item.id: [None, 0, 0] for item in batch}  # finish_reason, prompt tokens, completion tokens
            for turn in range(max(len(item.turns) for item in batch)):
                active = [item for item in batch if item.id not in run.skipped and turn < len(item.turns)]
                for item in active:
                    histories[item.id].append({"role": "user", "content": item.turns[turn]})
                outcomes = backend.complete(model, [histories[item.id] for item in active], params)
                for item, outcome in zip(active, outcomes):
                    if isinstance(outcome, str):
                        run.skipped[item.id] = outcome
                        continue
                    histories[item.id].append({"role": "assistant", "content": outcome.text})
                    replies[item.id].append(outcome.text)
                    usage[item.id][0] = outcome.finish_reason
                    usage[item.id][1] += outcome.prompt_tokens
                    usage[item.id][2] += outcome.completion_tokens
            for item in batch:
                if item.id not in run.skipped:
                    jsonl.append(out, answer_record(item, replies[item.id], name or model, *usage[item.id]))
                    run.answered += 1
                if on_item:
                    on_item()
    return run


def answer_locally(engine: Engine, items: Sequence[EvalItem], output: Path, params: GenerationParams, *,
                   batch_size: int = 8, system: str = "", on_item: Callable[[], None] | None = None) -> AnswerRun:
    """`answer_items` with a loaded model, in left-padded batches, recorded under the engine's name."""
    return answer_items(LocalBackend({engine.name: engine}), engine.name, items, output, params,
                        batch_size=batch_size, system=system, on_item=on_item)


def answer_remotely(options: LLMOptions, items: Sequence[EvalItem], output: Path, params: GenerationParams, *,
                    name: str | None = None, system: str = "", on_item: Callable[[], None] | None = None) -> AnswerRun:
    """`answer_items` through an OpenAI-compatible endpoint (vLLM, `belle serve`, a hosted model),
    `options.concurrency` requests at a time in batches of `REMOTE_BATCHES` times that; the answers
    are recorded as model `name`, default `options.model`.

    Sampling goes as `belle.chat.backends.sampling_request` words it (no top_k or
    repetition_penalty to OpenAI's own API). The client's cache keeps every reply that came, so a
    killed or re-run run asks nothing twice.
    """
    problems = options.problems()
    if problems:  # before a batch of 0 items is asked for
        raise UsageError("; ".join(problems))
    backend = RemoteBackend(options, names=[options.model])
    try:
        return answer_items(backend, options.model, items, output, params, batch_size=REMOTE_BATCHES * options.concurrency,
                            system=system, name=name, on_item=on_item)
    finally:
        backend.close()


def stream_answer(backend: ChatBackend, model: str, item: EvalItem, params: GenerationParams, *,
                  system: str = "") -> Iterator[list[str]]:
    """`model`'s replies to `item`'s turns as they are generated, for a page to show one item:
    yields the replies so far (the last one growing), at least once per turn. Turn k is answered
    after the user turns and the model's own replies before it, as `answer_items` answers it.
    Raises what `backend.stream` raises (`PromptTooLong` when a turn cannot fit the context)."""
    history = _history(system)
    replies: list[str] = []
    for turn in item.turns:
        history.append({"role": "user", "content": turn})
        stream = backend.stream(model, history, params)
        replies.append("")
        try:
            for delta in stream:
                replies[-1] += delta
                yield list(replies)
        finally:
            stream.close()
        yield list(replies)
        history.append({"role": "assistant", "content": replies[-1]})
