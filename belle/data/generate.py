"""`belle data generate`: BELLE's self-instruct, asking an LLM for new Chinese tasks.

Request `i` shows the model `seeds_per_request` seed tasks drawn by a generator seeded with
`(seed, i)`, so a re-run sends the same requests and the LLM cache answers them. Every reply is
parsed, filtered (blacklist, length rules, near-duplicates by character-level ROUGE-L against the
seeds and everything kept so far) and its kept tasks are appended to the output, one flushed line
each, with ids `si-{request}-{item}`. After a reply is fully handled one line goes into
`OUTPUT.progress.jsonl`; a re-run skips the requests listed there and the ids already written, so
a killed run resumes with nothing lost and nothing doubled.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from belle.cli import UsageError
from belle.data.filters import strip_gpt_address, task_rejection
from belle.data.progress import Progress, progress_path, write_report
from belle.data.selfinstruct import Task, build_prompt, default_seed_path, parse_reply, read_seed_tasks
from belle.data.similarity import NearDuplicateIndex
from belle.llm import LLMClient, LLMError, LLMFatalError, LLMOptions, Reply, fan_out, resume_message
from belle.records import jsonl


def generate(
    *,
    llm: LLMOptions,
    output: Path,
    num: int,
    seeds: Path | None = None,
    seeds_per_request: int = 3,
    tasks_per_request: int = 20,
    similarity: float = 0.7,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 3072,
    seed: int = 0,
    max_requests: int | None = None,
) -> int:
    """Generate Chinese instruction data by self-instruct through any OpenAI-compatible endpoint.

    Writes Alpaca-style JSON lines ({"id", "instruction", "input", "output", "category",
    "most_similar_instruction", "similarity"}) to OUTPUT; OUTPUT.progress.jsonl lets a re-run
    resume; OUTPUT.stats.json and OUTPUT.summary.md are written at the end.

    Args:
        output: JSON-lines file to append the kept tasks to.
        num: stop once this many tasks are kept in OUTPUT (earlier runs included).
        seeds: seed tasks in BELLE's zh_seed_tasks.json format; default: belle's own (55 tasks, 5 per category).
        seeds_per_request: seed tasks shown as examples in each request.
        tasks_per_request: length of the numbered list the model completes (examples included).
        similarity: drop a task whose instruction's character-level ROUGE-L with a seed or a kept one is above this.
        temperature: sampling temperature of the requests.
        top_p: nucleus sampling of the requests.
        max_tokens: longest reply, in tokens; the last task of a reply cut at this length is dropped.
        seed: draws the examples of each request; change it to get new requests instead of cached replies.
        max_requests: stop after this many requests even short of --num; default: 10 + 4x what --num needs.
    """
    if num < 1:
        raise UsageError(f"--num must be at least 1, not {num}")
    if seeds_per_request < 1:
        raise UsageError("--seeds-per-request must be at least 1")
    if max_tokens < 1 or (max_requests is not None and max_requests < 1):
        raise UsageError("--max-tokens and --max-requests must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UsageError("--temperature must be at least 0 and --top-p in (0, 1]")
    seed_tasks = _load_seeds(seeds or default_seed_path(), seeds_per_request)
    if not 0 < similarity <= 1:
        raise UsageError("--similarity must be in (0, 1]")
    if tasks_per_request <= seeds_per_request:
        raise UsageError("--tasks-per-request must be larger than --seeds-per-request")
    if max_requests is None:
        max_requests = 10 + 4 * math.ceil(num / (tasks_per_request - seeds_per_request))
    kept_records = jsonl.resume_records(output)
    journal = {entry["request"]: entry for entry in jsonl.resume_records(progress_path(output))}

    job = _Job(seed_tasks, kept_records, journal, output, num, seeds_per_request, tasks_per_request, similarity, seed)
    params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    try:
        stopped = asyncio.run(job.run(llm, params, max_requests))
    except LLMFatalError as e:
        raise UsageError(resume_message(e, f"{job.progress.kept} tasks", output)) from None
    _write_stats(job, stopped, llm, num)
    return 0 if job.progress.kept >= num else 1


def _load_seeds(path: Path, needed: int) -> list[Task]:
    tasks = read_seed_tasks(path)
    if len(tasks) < needed:
        raise UsageError(f"--seeds {path}: {len(tasks)} tasks, fewer than --seeds-per-request {needed}")
    return tasks


class _Job:
    """The state of one self-instruct run: what is kept, what is done, and the files to append to."""

    def __init__(self, seed_tasks, kept_records, journal, output, num, seeds_per_request, tasks_per_request, similarity, seed):
        self.seed_tasks = seed_tasks
        self.output = output
        self.num = num
        self.seeds_per_request = seeds_per_request
        self.tasks_per_request = tasks_per_request
        self.similarity = similarity
        self.seed = seed
        self.index = NearDuplicateIndex(threshold=similarity)
        for task in seed_tasks:
            self.index.add(task.instruction)
        for record in kept_records:
            self.index.add(record["instruction"])
        self.written_ids = {record["id"] for record in kept_records}
        self.categories = Counter(record.get("category") or "unknown" for record in kept_records)
        self.journal = journal
        self.usage = None
        self.partial: int | None = None  # the request whose reply was cut short by --num
        self.progress = Progress(kept=len(kept_records))
        for entry in journal.values():
            self.progress.record(entry)

    def request_prompt(self, request: int) -> str:
        examples = random.Random(f"{self.seed}:{request}").sample(self.seed_tasks, self.seeds_per_request)
        return build_prompt(examples, self.tasks_per_request)

    def pending_requests(self, max_requests: int) -> list[int]:
        done = {r for r, entry in self.journal.items() if not entry.get("failed")}
        return [r for r in range(max_requests) if r not in done]

    def in_flight_wanted(self, concurrency: int) -> int:
        """Requests worth having in flight: enough to reach --num at the yield seen so far."""
        seen = self.progress.units
        per_request = self.progress.kept / seen if seen else (self.tasks_per_request - self.seeds_per_request) / 2
        return max(1, min(concurrency, math.ceil((self.num - self.progress.kept) / max(per_request, 0.5))))

    async def run(self, options: LLMOptions, params: dict[str, Any], max_requests: int) -> str:
        """Send requests until --num tasks are kept or the budget is spent; returns why it stopped."""
        if self.progress.kept >= self.num:
            return "reached --num"
        bar = tqdm(total=self.num, initial=self.progress.kept, desc="tasks kept", unit="task", dynamic_ncols=True)
        bar.set_postfix_str(self.progress.postfix())

        def shown() -> None:
            bar.n = self.progress.kept
            bar.set_postfix_str(self.progress.postfix())

        async with LLMClient(options) as client:
            self.usage = client.usage
            with jsonl.open_append(self.output) as out, jsonl.open_append(progress_path(self.output)) as log:
                try:
                    await fan_out(
                        self.pending_requests(max_requests),
                        lambda request: client.ask(self.request_prompt(request), variant=request, **params),
                        lambda request, reply: self.handle(request, reply, out, log),
                        concurrency=lambda: self.in_flight_wanted(options.concurrency),
                        enough=lambda: self.progress.kept >= self.num, progress=shown)
                finally:
                    bar.close()
        return "reached --num" if self.progress.kept >= self.num else f"spent --max-requests {max_requests}"

    def handle(self, request: int, reply: Reply | LLMError, out, log) -> None:
        """Filter one reply, append its kept tasks, then journal the request as done."""
        if isinstance(reply, LLMError):
            entry = {"request": request, "failed": reply.kind}
            jsonl.append(log, entry)
            self.progress.record(entry)
            return
        parsed = parse_reply(reply.text, self.seeds_per_request + 1, truncated=reply.finish_reason == "length")
        discarded = Counter(parsed.dropped)
        kept_ids = []
        for item, task in enumerate(parsed.tasks):
            record_id = f"si-{request}-{item}"
            if record_id in self.written_ids:  # written by a run killed before it journaled this request
                continue
            record = self.screen(task, discarded)
            if record is None:
                continue
            jsonl.append(out, {"id": record_id, **record})
            self.written_ids.add(record_id)
            self.categories[record["category"] or "unknown"] += 1
            kept_ids.append(record_id)
            self.progress.kept += 1
            if self.progress.kept >= self.num and item < len(parsed.tasks) - 1:
                self.partial = request  # not journaled: a re-run with a larger --num goes on with its other tasks
                return
        entry = {
            "request": request, "kept": kept_ids, "discarded": dict(discarded), "cached": reply.cached,
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
        }
        jsonl.append(log, entry)
        self.progress.record(entry)

    def screen(self, task: Task, discarded: Counter) -> dict[str, Any] | None:
        """The output record of a task that passes every filter, else None with the reason counted."""
        instruction = strip_gpt_address(task.instruction).strip()
        reason = task_rejection(instruction, task.input, task.output)
        if reason:
            discarded[reason] += 1
            return None
        match = self.index.most_similar(instruction)  # None: no earlier text is anywhere near
        if match and match[1] > self.similarity:
            discarded["duplicate"] += 1
            return None
        self.index.add(instruction)
        return {
            "instruction": instruction, "input": task.input, "output": task.output, "category": task.category,
            "most_similar_instruction": self.index.texts[match[0]] if match else None,
            "similarity": round(match[1], 4) if match else 0.0,
        }


def _write_stats(job: _Job, stopped: str, options: LLMOptions, num: int) -> None:
    categories = job.categories
    stats = {
        "output": str(job.output), "model": options.model, "num": num, "stopped": stopped, "partial_request": job.partial,
        **job.progress.to_dict(),
        "categories": dict(categories.most_common()),
        "this_run": job.usage.to_dict() if job.usage else None,
    }
    write_report(job.output, stats, [
        f"# Self-instruct: {job.output}",
        "",
        f"- kept: {job.progress.kept} tasks of {num} wanted ({stopped})",
        *job.progress.summary_lines("requests"),
        *([f"- request {job.partial} was used in part to reach --num: its tokens and discards are counted when a "
           "re-run with a larger --num uses the rest"] if job.partial is not None else []),
        "- categories: " + (", ".join(f"{name} {n}" for name, n in categories.most_common()) or "none kept"),
        f"- this run: {job.usage.summary() if job.usage else 'no requests sent'}",
    ])
