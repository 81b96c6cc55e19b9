#!/usr/bin/env python
"""Speed and memory check of belle's encoding step (conversations -> input_ids + labels).

Speed: `belle.tokenization.encode_batch` over N synthetic Chinese conversations in batches of
1000 (what `datasets.map(batched=True)` does), against the physical limit: one batched
fast-tokenizer call per batch over the same, pre-rendered, piece texts. belle's time includes
rendering the template pieces and assembling ids/labels; the limit's does not. Goal: belle / limit
<= 1.2. For reference, the per-piece path of BELLE's original code (`tokenizer.encode` once per
piece) is timed on a subset against the limit on the same subset.

Memory: peak RSS of a child process running the full Arrow pipeline,
`load_conversations(jsonl)` then `tokenize_dataset(..., max_length=2048)`, over M conversations
written as a BELLE-format JSONL file in a temporary folder (with its own HF_DATASETS_CACHE,
deleted at the end). Goal: the pipeline completes inside a 2 GB (2 * 10**9 bytes) memory cgroup
that counts page cache too, with no process killed; without a writable cgroup the private heap
must stay under 2 GB. The peak is split into anonymous memory (the private heap) and file-backed
pages (the memory-mapped Arrow cache files, which the kernel drops and re-reads under memory
pressure); see benchmarks/README.md for why the limit is enforced rather than RSS read bare.

Usage:
    python benchmarks/bench_tokenize.py                    # 200k speed, 2M memory (~20-30 min)
    python benchmarks/bench_tokenize.py --conversations 20000 --memory-conversations 100000
    python benchmarks/bench_tokenize.py --skip-memory --json results.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_common import finish, machine_info  # noqa: E402  (beside this script)

SPEED_GOAL = 1.2  # belle / limit
MEMORY_GOAL_BYTES = 2 * 10**9
BELLE_PER_PIECE_REFERENCE = 2.2  # BELLE's per-piece path vs the limit, measured on 2 cores

_CJK = re.compile(r"[\u4e00-\u9fff]")


# ---------------------------------------------------------------------------------------------
# Synthetic data


def chinese_pool(seed: int = 0, sampled_chars: int = 2_000_000) -> str:
    """Text to cut message windows from: the Chinese paragraphs of the bundled corpus, then
    `sampled_chars` characters drawn from those paragraphs' own character frequencies.

    The corpus alone is about 11k characters, which a BPE memorizes phrase by phrase (its vocabulary
    stops near 17.5k and a conversation shrinks to a few hundred tokens). Sampled characters keep
    Chinese's skewed character distribution while giving the pair statistics a 32k vocabulary needs.
    """
    from belle.models.tiny import tiny_corpus_lines

    lines = [line.strip() for line in tiny_corpus_lines()]
    corpus = "".join(line for line in lines if len(_CJK.findall(line)) > 0.3 * len(line))
    return corpus + "".join(random.Random(seed).choices(corpus, k=sampled_chars))


def iter_conversations(n: int, seed: int = 0) -> Iterator[list[dict[str, str]]]:
    """`n` conversations of 1-3 rounds; questions 10-120 and answers 30-500 characters (uniform),
    each a window of `chinese_pool()` at a random offset. Deterministic for a given seed, and
    the first k conversations are the same whatever `n` is."""
    pool = chinese_pool(seed)
    ring = pool + pool[:600]  # windows may wrap around the end
    rng = random.Random(seed)

    def window(lo: int, hi: int) -> str:
        length = rng.randint(lo, hi)
        start = rng.randrange(len(pool))
        return ring[start : start + length]

    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": window(10, 120)})
            messages.append({"role": "assistant", "content": window(30, 500)})
        yield messages


def write_belle_jsonl(path: Path, n: int, seed: int) -> int:
    """Stream `n` conversations to `path` in BELLE's format; returns the file size in bytes."""
    from tqdm import tqdm

    names = {"user": "human", "assistant": "assistant"}
    with open(path, "w", encoding="utf-8") as f:
        for i, messages in enumerate(tqdm(iter_conversations(n, seed), total=n, desc="writing jsonl", mininterval=2, unit="conv")):
            record = {"id": f"synthetic-{i}", "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(conversations: list[list[dict[str, str]]], vocab_size: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    from belle.models.tiny import TINY_SPECIAL_TOKENS, train_bpe_tokenizer

    lines = [m["content"] for messages in conversations for m in messages]
    backend = train_bpe_tokenizer(lines, vocab_size, TINY_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def chars_per_token(tokenizer: Any, texts: list[str]) -> float:
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return sum(map(len, texts)) / max(1, sum(map(len, ids)))


# ---------------------------------------------------------------------------------------------
# Speed


def per_piece_encode(messages: list[dict[str, str]], tokenizer: Any, template: Any, bos: str, eos: str, deepcopy: bool) -> tuple[list[int], list[int]]:
    """BELLE's original path: one `tokenizer.encode` call per piece, conversation by conversation
    (BELLE also copied assistant ids with `copy.deepcopy`)."""
    from belle.templates import render_pieces
    from belle.tokenization import IGNORE_INDEX

    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in render_pieces(template, messages, False, bos, eos):
        ids = tokenizer.encode(text, add_special_tokens=False)
        input_ids += ids
        if trained:
            labels += copy.deepcopy(ids) if deepcopy else list(ids)
        else:
            labels += [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def measure_interleaved(methods: dict[str, tuple[Callable[[Any], Any], list[Any]]], repeats: int, label: str) -> dict[str, dict[str, list[float]]]:
    """Time every method over the same batches, interleaved batch by batch.

    The host's CPU capacity drifts (on a shared 2-core VM, two busy threads sometimes get one
    core's worth), so the methods take turns on each batch, the first of them rotating, and every
    repeat is a fresh pass. Results are dropped as they come, as `datasets.map` does after writing
    them. Returns per-repeat totals: wall seconds (`perf_counter`) and CPU seconds of all threads
    (`process_time`), which drift much less.
    """
    from tqdm import tqdm

    names = list(methods)
    count = len(next(iter(methods.values()))[1])
    for name in names:  # warm-up: fills the BPE word cache and starts the tokenizer's thread pool
        run, batches = methods[name]
        for batch in batches[: min(3, count)]:
            run(batch)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [0.0] * repeats, "cpu": [0.0] * repeats} for name in names}
    for r in range(repeats):
        gc.collect()
        for i in tqdm(range(count), desc=f"{label} {r + 1}/{repeats}", leave=False, mininterval=2, unit="batch"):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                run, batches = methods[name]
                cpu, wall = time.process_time(), time.perf_counter()
                run(batches[i])
                times[name]["wall"][r] += time.perf_counter() - wall
                times[name]["cpu"][r] += time.process_time() - cpu
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(
            f"{name} {times[name]['wall'][r]:.2f} s (cpu {times[name]['cpu'][r]:.2f} s)" for name in names), flush=True)
    return times


def _ratios(times: dict[str, dict[str, list[float]]], name: str, base: str) -> dict[str, float]:
    """`name` / `base`: of the best wall times (the goal), the median per-repeat wall ratio, and
    of the best CPU times."""
    a, b = times[name], times[base]
    per_repeat = sorted(x / y for x, y in zip(a["wall"], b["wall"]))
    return {
        "ratio": min(a["wall"]) / min(b["wall"]),
        "ratio_median_repeat": per_repeat[len(per_repeat) // 2],
        "cpu_ratio": min(a["cpu"]) / min(b["cpu"]),
    }


def speed_benchmark(args: argparse.Namespace, conversations: list[list[dict[str, str]]], tokenizer: Any) -> dict[str, Any]:
    from belle.templates import get_template, render_pieces
    from belle.tokenization import encode_batch

    template = get_template("belle")
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    size = args.batch_size
    batches = [conversations[i : i + size] for i in range(0, len(conversations), size)]
    texts = [[text for messages in batch for text, _ in render_pieces(template, messages, False, bos, eos)] for batch in batches]
    pieces = sum(map(len, texts))
    chars = sum(len(t) for batch in texts for t in batch)
    sample = texts[: max(1, len(texts) // 10)]  # tokens per conversation, estimated on a tenth
    sampled_tokens = sum(len(ids) for batch in sample for ids in tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"])
    sampled_chars = sum(len(t) for batch in sample for t in batch)

    # Same output as the per-piece path, on a sample: the benchmark measures equal work.
    check = conversations[: min(1000, len(conversations))]
    batched = encode_batch(check, tokenizer, template, max_length=None)
    for messages, encoded in zip(check, batched):
        ids, labels = per_piece_encode(messages, tokenizer, template, bos, eos, deepcopy=False)
        if (ids, labels) != (encoded.input_ids, encoded.labels):
            raise AssertionError("encode_batch disagrees with per-piece encoding; the benchmark would compare unequal work")

    def belle_batch(batch: list[list[dict[str, str]]]) -> Any:
        return encode_batch(batch, tokenizer, template, max_length=None)

    def limit_batch(batch_texts: list[str]) -> Any:
        return tokenizer(batch_texts, add_special_tokens=False, return_attention_mask=False)

    # datasets.map holds one batch of Python objects at a time; here all N conversations and their
    # texts sit in the heap, and every full cyclic-GC pass would walk them (measured: +12% on the
    # limit, +16% on belle at 200k). Freezing them leaves the collector what a real map leaves it.
    if not args.no_gc_freeze:
        gc.collect()
        gc.freeze()
    n = len(conversations)
    per_conversation = chars / sampled_chars * sampled_tokens / n
    print(f"\nspeed: {n:,} conversations, {pieces:,} pieces, {chars:,} characters, "
          f"~{per_conversation:,.0f} tokens per conversation, batches of {size}", flush=True)
    belle, limit = "belle encode_batch", "limit"
    times = measure_interleaved({belle: (belle_batch, batches), limit: (limit_batch, texts)}, args.repeats, "speed")

    sub_n = min(args.per_piece_conversations, n)
    sub_batches = [conversations[i : i + size] for i in range(0, sub_n, size)]

    def per_piece_batch(batch: list[list[dict[str, str]]]) -> Any:
        return [per_piece_encode(m, tokenizer, template, bos, eos, deepcopy=False) for m in batch]

    def belle_verbatim_batch(batch: list[list[dict[str, str]]]) -> Any:
        return [per_piece_encode(m, tokenizer, template, bos, eos, deepcopy=True) for m in batch]

    print(f"\nreference: per-piece path on the first {sub_n:,} conversations", flush=True)
    per_piece, verbatim = "per-piece encode", "per-piece + deepcopy"
    sub_times = measure_interleaved(
        {limit: (limit_batch, texts[: len(sub_batches)]), per_piece: (per_piece_batch, sub_batches), verbatim: (belle_verbatim_batch, sub_batches)},
        args.repeats,
        "per-piece",
    )
    if not args.no_gc_freeze:
        gc.unfreeze()
    return {
        "conversations": n,
        "gc_freeze": not args.no_gc_freeze,
        "batch_size": size,
        "pieces": pieces,
        "characters": chars,
        "tokens_per_conversation_est": round(per_conversation, 1),
        "repeats": args.repeats,
        "belle_seconds": times[belle]["wall"],
        "belle_cpu_seconds": times[belle]["cpu"],
        "limit_seconds": times[limit]["wall"],
        "limit_cpu_seconds": times[limit]["cpu"],
        "belle_conv_per_s": n / min(times[belle]["wall"]),
        "limit_conv_per_s": n / min(times[limit]["wall"]),
        # CPU seconds per wall second of the limit: how many cores the tokenizer's threads got.
        "limit_parallelism": sum(times[limit]["cpu"]) / sum(times[limit]["wall"]),
        **_ratios(times, belle, limit),
        "per_piece_conversations": sub_n,
        "per_piece_limit_seconds": sub_times[limit]["wall"],
        "per_piece_seconds": sub_times[per_piece]["wall"],
        "per_piece_deepcopy_seconds": sub_times[verbatim]["wall"],
        "per_piece_conv_per_s": sub_n / min(sub_times[per_piece]["wall"]),
        "per_piece_limit_conv_per_s": sub_n / min(sub_times[limit]["wall"]),
        **{f"per_piece_{k}": v for k, v in _ratios(sub_times, per_piece, limit).items()},
        **{f"per_piece_deepcopy_{k}": v for k, v in _ratios(sub_times, verbatim, limit).items()},
    }


# ---------------------------------------------------------------------------------------------
# Memory (runs in a child process: `--child-memory WORKDIR`)


def _status_kib(pid: int | str, fields: tuple[str, ...]) -> dict[str, int]:
    values = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values


def _descendants(pid: int) -> list[int]:
    """`pid`'s child processes, their children, and so on (datasets' num_proc workers)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        return out
    return out + [d for c in out for d in _descendants(c)]


class RssPeaks:
    """Samples /proc a few times a second for the peaks of VmRSS, RssAnon (private heap) and
    RssFile (pages of memory-mapped files, here mostly the Arrow cache files, which the kernel can
    drop and re-read at will), each summed over this process and its descendants (num_proc
    workers; shared file pages are then counted once per process, an overestimate)."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, interval: float = 0.2):
        self.peak_kib = dict.fromkeys(self.FIELDS, 0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids = [os.getpid(), *_descendants(os.getpid())]
        for key in self.FIELDS:
            total = sum(_status_kib(pid, self.FIELDS)[key] for pid in pids)
            self.peak_kib[key] = max(self.peak_kib[key], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def memory_cgroup(limit_bytes: int) -> Path | None:
    """A new memory cgroup under this process's own, limited to `limit_bytes`, page cache included;
    None where there is no memory controller this user may write to (then nothing is enforced)."""
    membership = Path("/proc/self/cgroup")
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    v2_memory = unified.exists() and "memory" in unified.read_text().split()
    for line in membership.read_text().splitlines() if membership.exists() else []:
        _, controllers, own = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            base, limit_file = Path("/sys/fs/cgroup/memory") / own.lstrip("/"), "memory.limit_in_bytes"
        elif controllers == "" and v2_memory:
            base, limit_file = Path("/sys/fs/cgroup") / own.lstrip("/"), "memory.max"
        else:
            continue
        group = base / f"belle-bench-{os.getpid()}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit_bytes))
            return group
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def oom_kills(group: Path) -> int:
    """How many processes the kernel killed in `group` for exceeding its limit."""
    for name in ("memory.oom_control", "memory.events"):
        if (group / name).exists():
            for line in (group / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def child_memory(workdir: Path, num_proc: int | None, cgroup: str | None) -> None:
    """The measured process: load the JSONL into Arrow, encode it, report peak RSS as JSON."""
    if cgroup:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    from transformers import PreTrainedTokenizerFast

    from belle.dataset import load_conversations, tokenize_dataset
    from belle.templates import get_template

    imports_kib = _status_kib("self", ("VmHWM",))["VmHWM"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(workdir / "tokenizer"))
    with RssPeaks() as peaks:
        start = time.perf_counter()
        conversations = load_conversations(str(workdir / "conversations.jsonl"))
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        samples, stats = tokenize_dataset(conversations, tokenizer, get_template("belle"), max_length=2048, num_proc=num_proc)
        tokenize_s = time.perf_counter() - start
    result = {
        "records": stats.records,
        "samples": stats.samples,
        "rejected": stats.rejected,
        "dropped": stats.dropped,
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "load_seconds": load_s,
        "tokenize_seconds": tokenize_s,
        # The peak RSS of this process image. ru_maxrss is not used for it: on Linux it keeps the
        # high-water mark of the memory the process had before exec, and subprocess forks (vforks)
        # from the parent, so it would report the parent's peak if that is higher.
        "vmhwm_self_kib": _status_kib("self", ("VmHWM",))["VmHWM"],
        "ru_maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "ru_maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "vmhwm_after_imports_kib": imports_kib,
        "peak_rss_tree_kib": peaks.peak_kib["VmRSS"],
        "peak_rss_anon_kib": peaks.peak_kib["RssAnon"],
        "peak_rss_file_kib": peaks.peak_kib["RssFile"],
    }
    print("CHILD_RESULT " + json.dumps(result), flush=True)


def memory_benchmark(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    n = args.memory_conversations
    workdir = Path(tempfile.mkdtemp(prefix="belle-bench-tokenize-", dir=args.tmp_dir))
    try:
        print(f"\nmemory: {n:,} conversations through load_conversations + tokenize_dataset in {workdir}", flush=True)
        tokenizer.save_pretrained(str(workdir / "tokenizer"))
        jsonl_bytes = write_belle_jsonl(workdir / "conversations.jsonl", n, args.seed)
        print(f"  wrote {jsonl_bytes / 1e9:.2f} GB of JSONL", flush=True)
        env = {**os.environ, "HF_DATASETS_CACHE": str(workdir / "hf_datasets_cache"), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, str(Path(__file__).resolve()), "--child-memory", str(workdir)]
        if args.num_proc:
            command += ["--num-proc", str(args.num_proc)]
        group = None if args.no_memory_limit else memory_cgroup(MEMORY_GOAL_BYTES)
        if group:
            command += ["--cgroup", str(group)]
            print(f"  the child runs in memory cgroup {group}, limited to {MEMORY_GOAL_BYTES:,} bytes (page cache included)", flush=True)
        else:
            print("  no writable memory cgroup: the 2 GB limit is not enforced, only measured", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        wall = time.perf_counter() - start
        kills = oom_kills(group) if group else 0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child failed with exit status {proc.returncode} ({kills} OOM kills):\n{proc.stdout[-4000:]}")
        result = json.loads(lines[-1][len("CHILD_RESULT "):])
        disk = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if group:
            group.rmdir()
    own_peak_kib = result["vmhwm_self_kib"]
    if not own_peak_kib:  # no /proc (not Linux): ru_maxrss, in bytes on macOS
        own_peak_kib = result["ru_maxrss_self_kib"] // (1024 if sys.platform == "darwin" else 1)
    peak = max(own_peak_kib, result["peak_rss_tree_kib"]) * 1024
    result.update({
        "conversations": n,
        "num_proc": args.num_proc,
        "jsonl_bytes": jsonl_bytes,
        "disk_bytes_used": disk,
        "wall_seconds": wall,
        "memory_limit_enforced": group is not None,
        "oom_kills": kills,
        # This process's VmHWM, or with num_proc workers the sampled peak of the sum over them.
        "peak_rss_bytes": peak,
        "peak_anon_bytes": result["peak_rss_anon_kib"] * 1024,
    })
    print(f"  load {result['load_seconds']:.0f} s, tokenize {result['tokenize_seconds']:.0f} s, "
          f"{result['samples']:,} samples, {result['tokens']:,} tokens, disk used {disk / 1e9:.1f} GB", flush=True)
    print(f"  peak RSS {peak / 1e6:,.0f} MB (after imports {result['vmhwm_after_imports_kib'] * 1024 / 1e6:,.0f} MB, "
          f"peak anonymous {result['peak_rss_anon_kib'] * 1024 / 1e6:,.0f} MB, peak file-backed {result['peak_rss_file_kib'] * 1024 / 1e6:,.0f} MB)", flush=True)
    return result


# ---------------------------------------------------------------------------------------------


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("metric", "value", "goal", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*lines, *(fmt.format(*r) for r in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=200_000, help="conversations for the speed test")
    parser.add_argument("--memory-conversations", type=int, default=2_000_000, help="conversations for the memory test")
    parser.add_argument("--skip-memory", action="store_true", help="run the speed test only")
    parser.add_argument("--skip-speed", action="store_true", help="run the memory test only")
    parser.add_argument("--num-proc", type=int, default=None, help="num_proc for tokenize_dataset in the memory test")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement; the best counts")
    parser.add_argument("--per-piece-conversations", type=int, default=20_000, help="subset for the per-piece reference")
    parser.add_argument("--train-conversations", type=int, default=20_000, help="conversations whose texts train the BPE")
    parser.add_argument("--vocab-size", type=int, default=32_000)
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave the benchmark's own data in the collector's view")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", default=None, help="where the memory test writes its JSONL and Arrow cache")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-memory-limit", action="store_true", help="measure the memory test without a 2 GB cgroup")
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cgroup", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_memory:
        child_memory(Path(args.child_memory), args.num_proc, args.cgroup)
        return 0

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, transformers {info['transformers']}, "
          f"tokenizers {info['tokenizers']}, datasets {info['datasets']}, TOKENIZERS_PARALLELISM={info['tokenizers_parallelism']}")
    results: dict[str, Any] = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "child_memory"}}

    n_generate = max(args.conversations if not args.skip_speed else 0, args.train_conversations)
    start = time.perf_counter()
    conversations = list(iter_conversations(n_generate, args.seed))
    print(f"generated {len(conversations):,} conversations in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    tokenizer = build_tokenizer(conversations[: args.train_conversations], args.vocab_size)
    heldout = REPO / "data" / "samples" / "heldout_zh.txt"
    heldout_lines = [line for line in heldout.read_text(encoding="utf-8").splitlines() if line.strip()] if heldout.is_file() else []
    synthetic_cpt = chars_per_token(tokenizer, [m["content"] for c in conversations[-1000:] for m in c])
    results["tokenizer"] = {
        "vocab_size": len(tokenizer),
        "requested_vocab_size": args.vocab_size,
        "train_conversations": args.train_conversations,
        "train_seconds": time.perf_counter() - start,
        "chars_per_token_synthetic": synthetic_cpt,
        "chars_per_token_heldout_zh": chars_per_token(tokenizer, heldout_lines) if heldout_lines else None,
    }
    t = results["tokenizer"]
    print(f"tokenizer: byte-level BPE, vocab {t['vocab_size']:,} (asked {args.vocab_size:,}), trained on "
          f"{args.train_conversations:,} conversations in {t['train_seconds']:.1f} s; characters per token "
          f"{synthetic_cpt:.2f} on synthetic text" + (f", {t['chars_per_token_heldout_zh']:.2f} on heldout_zh.txt" if heldout_lines else ""))

    rows: list[tuple[str, str, str, str]] = [("tokenizer vocab size", f"{t['vocab_size']:,}", f"{args.vocab_size:,}", "-")]
    ok = True
    if not args.skip_speed:
        speed = speed_benchmark(args, conversations[: args.conversations], tokenizer)
        results["speed"] = speed
        passed = speed["ratio"] <= SPEED_GOAL
        ok &= passed
        rows += [
            (f"belle encode_batch ({speed['conversations']:,} conv)", f"{speed['belle_conv_per_s']:,.0f} conv/s", "-", "-"),
            ("limit: one batched tokenizer call", f"{speed['limit_conv_per_s']:,.0f} conv/s", "-", "-"),
            ("belle / limit (best wall times)", f"{speed['ratio']:.3f}x", f"<= {SPEED_GOAL}x", "PASS" if passed else "FAIL"),
            ("  median per-repeat / CPU-time ratio", f"{speed['ratio_median_repeat']:.3f}x / {speed['cpu_ratio']:.3f}x", "-", "-"),
            ("  cores the limit's tokenizer threads got", f"{speed['limit_parallelism']:.2f}", "-", "-"),
            (f"per-piece encode / limit ({speed['per_piece_conversations']:,} conv)", f"{speed['per_piece_ratio']:.2f}x",
             f"reference (BELLE ~{BELLE_PER_PIECE_REFERENCE}x)", "-"),
            ("  + copy.deepcopy as BELLE did", f"{speed['per_piece_deepcopy_ratio']:.2f}x", "reference", "-"),
        ]
    del conversations
    gc.collect()
    if not args.skip_memory:
        memory = memory_benchmark(args, tokenizer)
        results["memory"] = memory
        # Inside the cgroup, peak RSS is bounded by the limit only if the pipeline's own memory fits
        # (the kernel reclaims clean mapped pages first and kills the process otherwise); without
        # one, the private heap is what would have to fit.
        enforced = memory["memory_limit_enforced"]
        peak = memory["peak_rss_bytes"] if enforced else memory["peak_anon_bytes"]
        passed = peak < MEMORY_GOAL_BYTES and memory["oom_kills"] == 0
        ok &= passed
        goal = f"< {MEMORY_GOAL_BYTES / 1e9:.0f} GB"
        where = "in a 2 GB cgroup" if enforced else "no limit enforced"
        rows += [
            (f"peak RSS, {memory['conversations']:,} conv pipeline ({where})", f"{memory['peak_rss_bytes'] / 1e6:,.0f} MB",
             goal if enforced else "-", ("PASS" if passed else "FAIL") if enforced else "-"),
            ("  of it file-backed (mmapped Arrow, reclaimable)", f"{memory['peak_rss_file_kib'] * 1024 / 1e6:,.0f} MB", "-", "-"),
            ("  peak anonymous (private heap)", f"{memory['peak_anon_bytes'] / 1e6:,.0f} MB",
             "-" if enforced else goal, "-" if enforced else ("PASS" if passed else "FAIL")),
            ("  OOM kills", str(memory["oom_kills"]), "0", "PASS" if memory["oom_kills"] == 0 else "FAIL"),
            ("pipeline throughput (load + encode)",
             f"{memory['conversations'] / (memory['load_seconds'] + memory['tokenize_seconds']):,.0f} conv/s", "-", "-"),
        ]
    print("\n" + table(rows))
    return finish(results, ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
