"""Answering the pending prompts of a `belle generate` run, locally or through a server, into the
output file: one flushed JSON line per reply, so a killed run loses only the replies in flight.

An output line is the input record plus `id` (when the record had none, its line number),
`reply`, `finish_reason`, `prompt_tokens`, `completion_tokens` and `model`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from belle.chat.backends import sampling_request
from belle.generate.inputs import PromptItem
from belle.generation import Engine, GenerationParams, PromptTooLong, SamplingOptions
from belle.llm import LLMClient, LLMError, LLMOptions, Reply, fan_out
from belle.records import jsonl

RESULT_FIELDS = ("reply", "finish_reason", "prompt_tokens", "completion_tokens", "model")


@dataclass(frozen=True)
class Decoding:
    """Decoding: flags given override the model's generation config (generation_config.json), field by field.

    Unset flags keep what the model's `generation_config.json` says (what `model.generate()` does
    with no arguments: greedy unless it sets do_sample), and 512 new tokens at most. Through
    --api-base, only the flags given are sent, so the server's own defaults apply to the rest.
    """

    FLAT: ClassVar[bool] = True

    temperature: float | None = None
    """Sampling temperature; 0 decodes greedily; default: the model's generation config."""
    top_p: float | None = None
    """Nucleus sampling mass, in (0, 1]; default: the model's generation config."""
    top_k: int | None = None
    """Sample among the k most likely tokens, 0 for all; default: the model's generation config."""
    repetition_penalty: float | None = None
    """Above 1 discourages repetition; default: the model's generation config."""
    max_new_tokens: int | None = None
    """The longest reply, in tokens; default 512."""
    seed: int | None = None
    """Seed of sampling: the same seed gives the same replies."""
    stop: list[str] | None = None
    """Strings that end a reply (left out of it)."""

    def given(self) -> dict[str, Any]:
        """The fields set on the command line, as `GenerationParams` fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return values

    def problems(self) -> list[str]:
        """Every out-of-range flag, worded as `SamplingOptions` words it."""
        given = self.given()
        sampling = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(SamplingOptions)}}
        found = SamplingOptions(**sampling).problems()
        try:
            GenerationParams(**given)
        except ValueError as e:  # seed and stop, which `SamplingOptions` has not
            found += [p for p in str(e).split("; ") if p not in found]
        return found

    def params(self, defaults: GenerationParams) -> GenerationParams:
        """`defaults` (the model's generation config) with the flags given put over it."""
        return dataclasses.replace(defaults, **self.given())

    def request(self, openai_api: bool = False) -> dict[str, Any]:
        """The sampling fields of a request to a server: those of the flags given, worded by
        `sampling_request`, and `max_tokens` always (a completion's default is 16 tokens)."""
        given = self.given()
        full = sampling_request(self.params(GenerationParams()), openai_api)
        names = {"max_new_tokens": "max_tokens"}
        request = {names.get(k, k): full[names.get(k, k)] for k in given if names.get(k, k) in full}
        request["max_tokens"] = full["max_tokens"]
        if "seed" in given:
            request["seed"] = given["seed"]
        return request


@dataclass
class RunResult:
    """What one run did: replies written, tokens they took, their finish reasons, and prompts
    skipped (id -> why: a prompt longer than the context, a request that failed for good)."""

    written: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def pending_items(items: Sequence[PromptItem], output: Path) -> tuple[list[PromptItem], list[dict[str, Any]]]:
    """The items whose id is not in `output` yet, and the records already there (a torn last line
    is cut off: its reply is asked again)."""
    done = jsonl.resume_records(output)
    ids = {str(record.get("id")) for record in done}
    return [item for item in items if item.id not in ids], done


def output_record(item: PromptItem, reply: str, finish_reason: str | None, prompt_tokens: int,
                  completion_tokens: int, model: str) -> dict[str, Any]:
    record = dict(item.record)
    record.setdefault("id", item.line)
    record.update(reply=reply, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                  completion_tokens=completion_tokens, model=model)
    return record


class _Writer:
    """Appends output lines and keeps the run's counts."""

    def __init__(self, out: Any, result: RunResult, model: str, on_item: Callable[[], None] | None):
        self.out, self.result, self.model, self.on_item = out, result, model, on_item

    def reply(self, item: PromptItem, text: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        jsonl.append(self.out, output_record(item, text, finish_reason, prompt_tokens, completion_tokens, self.model))
        self.result.written += 1
        self.result.prompt_tokens += prompt_tokens
        self.result.completion_tokens += completion_tokens
        self.result.finish_reasons[finish_reason or "unknown"] += 1
        self.tick()

    def skip(self, item: PromptItem, why: str) -> None:
        self.result.skipped[item.id] = why
        self.tick()

    def tick(self) -> None:
        if self.on_item:
            self.on_item()


def encode(engine: Engine, item: PromptItem, max_new_tokens: int) -> list[int]:
    """The prompt ids of `item`; `PromptTooLong` when it and the reply cannot fit the context.
    A conversation is never shortened: a batch job answers the history it was given or none."""
    if item.kind == "raw":
        ids = engine.encode_text(item.prompt)
        if not engine.fits(len(ids), max_new_tokens):
            raise PromptTooLong(len(ids), engine.context_length, max_new_tokens)
        return ids
    return engine.fit_chat(list(item.messages), max_new_tokens, drop_oldest=False)[0]


def generate_locally(engine: Engine, items: Sequence[PromptItem], output: Path, params: GenerationParams, *,
                     batch_size: int, on_item: Callable[[], None] | None = None) -> RunResult:
    """Answer `items` with a loaded model through `Engine.generate_all`: prompts sorted by length in
    tokens, `batch_size` decoding together, each line appended as its reply is done."""
    result = RunResult()
    start = time.monotonic()
    with jsonl.open_append(output) as out:
        writer = _Writer(out, result, engine.name, on_item)
        prompts: list[tuple[PromptItem, list[int]]] = []
        for item in items:
            try:
                prompts.append((item, encode(engine, item, params.max_new_tokens)))
            except PromptTooLong as e:
                writer.skip(item, str(e))
        prompts.sort(key=lambda pair: len(pair[1]))
        for index, completion in engine.generate_all([ids for _, ids in prompts], params, batch_size):
            writer.reply(prompts[index][0], completion.text, completion.finish_reason, completion.prompt_tokens,
                         completion.completion_tokens)
    result.seconds = time.monotonic() - start
    return result


def generate_remotely(options: LLMOptions, items: Sequence[PromptItem], output: Path, decoding: Decoding, *,
                      on_item: Callable[[], None] | None = None) -> RunResult:
    """Answer `items` through an OpenAI-compatible server: chat items on /chat/completions, raw ones
    on /completions, `options.concurrency` at a time through `belle.llm.fan_out`, each line appended
    as its reply comes. Raises `LLMFatalError` when no request can succeed (a refused key, an
    unknown model); the replies that came stay in the output and the client's cache."""
    result = RunResult()
    request = decoding.request(openai_api=not options.base_url)

    async def run() -> None:
        async with LLMClient(options) as client:
            with jsonl.open_append(output) as out:
                writer = _Writer(out, result, options.model, on_item)

                async def ask(item: PromptItem) -> Reply:
                    if item.kind == "raw":
                        return await client.complete(item.prompt, **request)
                    return await client.chat(list(item.messages), **request)

                def settle(item: PromptItem, outcome: Reply | LLMError) -> None:
                    if isinstance(outcome, LLMError):
                        writer.skip(item, str(outcome))
                    else:
                        writer.reply(item, outcome.text, outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens)

                await fan_out(items, ask, settle, concurrency=options.concurrency)

    start = time.monotonic()
    try:
        asyncio.run(run())
    finally:
        result.seconds = time.monotonic() - start
    return result
