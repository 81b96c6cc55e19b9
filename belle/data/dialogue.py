"""`belle data chat`: multi-turn dialogues in which the LLM plays both the user and the assistant.

Each seed is an opening question or a topic (the model first writes the user's opening question on
it). The assistant answers through the chat API with the whole history; the model then plays the
user again and asks a follow-up, for `rounds` rounds. Dialogues run concurrently, each is written
when complete as BELLE's `{"id", "conversations"}` record, and one line per finished dialogue goes
into `OUTPUT.progress.jsonl`, so a killed run resumes where it stopped; replies come back from the
LLM cache, so redoing a half-finished dialogue costs nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from belle.cli import UsageError
from belle.conversation import Conversation, to_belle
from belle.data.filters import blacklisted, claims_gpt_identity
from belle.data.progress import Progress, progress_path, write_report
from belle.data.similarity import NearDuplicateIndex
from belle.llm import LLMClient, LLMError, LLMFatalError, LLMOptions, fan_out, resume_message
from belle.records import DataError, Rejection, file_encoding, iter_json_records, jsonl

OPENING_PROMPT = (
    "请你扮演一位向AI助手求助的普通用户。围绕主题「{topic}」，用中文写出你想问助手的第一个问题。"
    "问题要具体、自然，像真人在聊天框里输入的那样，一到三句话。只输出问题本身，不要解释，也不要加引号或“用户：”之类的前缀。"
)
FOLLOW_UP_PROMPT = (
    "下面是一位用户和AI助手的对话。\n\n{transcript}\n\n"
    "请你继续扮演这位用户，读完助手的上一条回答后，用中文提出下一句话：可以追问细节、要求举例、提出不同看法，"
    "或者转到相关的新问题。语气自然，一到三句话。只输出用户要说的话，不要加“用户：”之类的前缀。"
)
_SPEAKER_PREFIX = re.compile(r"^\s*(?:用户|User|Human|问题|问)\s*[:：]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ChatSeed:
    id: str
    topic: str | None = None
    question: str | None = None


@dataclass(frozen=True)
class _Played:
    """One dialogue as played: its messages, or the filter it failed (`discarded`), and the
    tokens of the calls made for it."""

    messages: list[dict[str, str]]
    discarded: str | None
    tokens: Counter


class _Discard(Exception):
    """A dialogue that fails a filter; `reason` is counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_chat_seeds(path: Path) -> list[ChatSeed]:
    """Seeds from JSON lines `{"id"?, "topic"}` or `{"id"?, "question"}`, or a .txt file with one question per line."""
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    if path.suffix == ".txt":
        lines = path.read_text(encoding=file_encoding(path)).splitlines()
        return [ChatSeed(id=f"{path.stem}-{n}", question=line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    seeds = []
    for line, record in iter_json_records(path):
        where = f"{path}:{line}"
        if isinstance(record, Rejection):
            raise DataError(record.at(where))
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with a 'topic' or a 'question', got {type(record).__name__}")
        texts = {key: record.get(key) for key in ("topic", "question") if record.get(key) is not None}
        if len(texts) != 1 or not isinstance(next(iter(texts.values())), str) or not next(iter(texts.values())).strip():
            raise DataError(f"{where}: needs exactly one of 'topic' or 'question', as a non-empty string")
        seeds.append(ChatSeed(id=str(record.get("id") or f"{path.stem}-{line}"), **{k: v.strip() for k, v in texts.items()}))
    if len({seed.id for seed in seeds}) < len(seeds):
        raise DataError(f"{path}: two seeds share an id")
    return seeds


def chat(
    *,
    llm: LLMOptions,
    seeds: Path,
    output: Path,
    rounds: int = 3,
    per_seed: int = 1,
    system: str | None = None,
    similarity: float = 0.7,
    temperature: float = 0.8,
    max_tokens: int = 1024,
) -> int:
    """Generate multi-turn Chinese dialogues: the LLM plays the user and the assistant for ROUNDS rounds.

    Writes BELLE conversations ({"id", "conversations": [{"from", "value"}], "seed"}) to OUTPUT,
    plus OUTPUT.progress.jsonl (for resuming), OUTPUT.stats.json and OUTPUT.summary.md.

    Args:
        seeds: JSON lines of {"id", "topic"} or {"id", "question"}, or a .txt file of questions.
        output: JSON-lines file to append dialogues to.
        rounds: user-assistant exchanges per dialogue.
        per_seed: dialogues per seed (ids SEED-0, SEED-1, ... when more than one).
        system: system prompt for the assistant's turns (not written to the output).
        similarity: drop a dialogue whose user turns have a character-level ROUGE-L above this with a kept one.
        temperature: sampling temperature of every turn.
        max_tokens: longest turn, in tokens; a dialogue with a turn cut at this length is dropped.
    """
    if llm.api != "chat":
        raise UsageError("belle data chat needs the chat API (--api chat): the assistant answers with the whole history")
    if rounds < 1 or per_seed < 1:
        raise UsageError("--rounds and --per-seed must be at least 1")
    if not 0 < similarity <= 1:
        raise UsageError(f"--similarity must be in (0, 1], not {similarity}")
    if max_tokens < 1 or temperature < 0:
        raise UsageError("--max-tokens must be at least 1 and --temperature at least 0")
    chat_seeds = read_chat_seeds(seeds)
    written = jsonl.resume_records(output)
    journal = {entry["id"]: entry for entry in jsonl.resume_records(progress_path(output))}
    if not chat_seeds:
        raise UsageError(f"--seeds {seeds}: no seeds in this file")
    units = [(seed, k, seed.id if per_seed == 1 else f"{seed.id}-{k}") for seed in chat_seeds for k in range(per_seed)]
    done = {record["id"] for record in written} | {i for i, entry in journal.items() if not entry.get("failed")}
    progress = Progress(kept=len(written))
    for entry in journal.values():
        progress.record(entry)
    index = NearDuplicateIndex(threshold=similarity)
    for record in written:
        index.add(_user_side(record["conversations"]))
    job = _Dialogues(index, similarity, rounds, system, {"temperature": temperature, "max_tokens": max_tokens}, progress)
    todo = [unit for unit in units if unit[2] not in done]
    try:
        usage = asyncio.run(job.run(llm, todo, output, total=len(units)))
    except LLMFatalError as e:
        raise UsageError(resume_message(e, f"{progress.kept} dialogues", output)) from None
    write_report(output, {"output": str(output), "model": llm.model, "seeds": len(chat_seeds), "rounds": rounds,
                          **progress.to_dict(), "this_run": usage.to_dict()}, [
        f"# Multi-turn dialogues: {output}",
        "",
        f"- kept: {progress.kept} dialogues of {len(units)} ({len(chat_seeds)} seeds x {per_seed}), {rounds} rounds each",
        *progress.summary_lines("dialogues"),
        f"- this run: {usage.summary()}",
    ])
    return 0


def _user_side(turns: list[dict[str, str]]) -> str:
    return "\n".join(turn["value"] for turn in turns if turn["from"] == "human")


@dataclass
class _Dialogues:
    """Plays dialogues and keeps those that pass the filters; `index` holds the kept ones' user turns."""

    index: NearDuplicateIndex
    similarity: float
    rounds: int
    system: str | None
    params: dict[str, Any]
    progress: Progress

    async def run(self, options: LLMOptions, todo: list[tuple[ChatSeed, int, str]], output: Path, total: int):
        bar = tqdm(total=total, initial=total - len(todo), desc="dialogues", unit="dialogue", dynamic_ncols=True)

        def shown() -> None:
            bar.update()
            bar.set_postfix_str(f"kept {self.progress.kept}, {self.progress.postfix()}")

        async with LLMClient(options) as client:
            with jsonl.open_append(output) as out, jsonl.open_append(progress_path(output)) as log:

                def settle(unit: tuple[ChatSeed, int, str], played: _Played | LLMError) -> None:
                    entry = self.keep(unit, played, out)
                    jsonl.append(log, entry)
                    self.progress.record(entry)

                try:
                    await fan_out(todo, lambda unit: self.one(client, unit), settle,
                                  concurrency=options.concurrency, progress=shown)
                finally:
                    bar.close()
            return client.usage

    async def one(self, client: LLMClient, unit: tuple[ChatSeed, int, str]) -> _Played:
        """Play one dialogue; raises `LLMError` when a call fails for good."""
        seed, sample, _ = unit
        tokens = Counter()
        try:
            return _Played(await self.play(client, seed, sample, tokens), None, tokens)
        except _Discard as discard:
            return _Played([], discard.reason, tokens)

    def keep(self, unit: tuple[ChatSeed, int, str], played: _Played | LLMError, out) -> dict[str, Any]:
        """Write a played dialogue if it passes the filters; its journal entry."""
        seed, _, dialogue_id = unit
        if isinstance(played, LLMError):
            return {"id": dialogue_id, "failed": played.kind}
        if played.discarded:
            return {"id": dialogue_id, "kept": [], "discarded": {played.discarded: 1}, **played.tokens}
        record = to_belle(Conversation(dialogue_id, played.messages))
        user_side = _user_side(record["conversations"])
        match = self.index.most_similar(user_side)
        if match and match[1] > self.similarity:
            return {"id": dialogue_id, "kept": [], "discarded": {"duplicate": 1}, **played.tokens}
        self.index.add(user_side)
        jsonl.append(out, {**record, "seed": seed.topic or seed.question})
        self.progress.kept += 1
        return {"id": dialogue_id, "kept": [dialogue_id], **played.tokens}

    async def play(self, client: LLMClient, seed: ChatSeed, sample: int, tokens: Counter) -> list[dict[str, str]]:
        """The dialogue's user and assistant messages; raises _Discard when a turn fails a filter."""

        async def turn(ask, *args) -> str:
            reply = await ask(*args, variant=sample, **self.params)
            tokens.update(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
            if reply.finish_reason == "length":
                raise _Discard("truncated")
            if not reply.text.strip():
                raise _Discard("empty_turn")
            return reply.text.strip()

        question = seed.question or _strip_speaker(await turn(client.ask, OPENING_PROMPT.format(topic=seed.topic)))
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages: list[dict[str, str]] = []
        for round_number in range(self.rounds):
            if blacklisted(question):
                raise _Discard("blacklist")
            messages.append({"role": "user", "content": question})
            answer = await turn(client.chat, system + messages)
            if claims_gpt_identity(answer):
                raise _Discard("gpt_identity")
            messages.append({"role": "assistant", "content": answer})
            if round_number + 1 < self.rounds:
                transcript = "\n\n".join(
                    f"{'用户' if m['role'] == 'user' else '助手'}：{m['content']}" for m in messages
                )
                question = _strip_speaker(await turn(client.ask, FOLLOW_UP_PROMPT.format(transcript=transcript)))
        return messages


def _strip_speaker(text: str) -> str:
    """Drop a `用户：` style label the model put before the user's words, and wrapping quotes."""
    return _SPEAKER_PREFIX.sub("", text).strip().strip("“”\"「」").strip()
