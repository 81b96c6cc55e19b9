#!/usr/bin/env python
"""Speed and recall of belle's near-duplicate filter (`belle.data.similarity`) on Chinese instructions.

The issue's goal: the filter handles 100,000 Chinese instructions in minutes, not hours. Measured
on N synthetic instructions (default 100,000) with a planted share of near duplicates:

(a) incremental, as self-instruct uses it: for each instruction `NearDuplicateIndex.most_similar`,
    then `add` it when its score is not above 0.7 (exact comparison up to 5,000 kept texts, MinHash
    LSH candidates above that). Goal: under 10 minutes.
(b) bulk, as `belle data dedup` uses it: `find_duplicates(texts, 0.7)` over the same N (and over
    --records M as well, to show how it scales). Goal: under 10 minutes.
(c) recall of the LSH against exact search on a sample of --sample instructions (default 5,000):
    of the pairs whose character-level ROUGE-L is above 0.7, the share that become LSH candidates;
    and of the instructions exact greedy deduplication removes, the share `find_duplicates` and the
    LSH path of `NearDuplicateIndex` remove too.

"Planted caught": of the planted near duplicates whose source was kept and which score above 0.7
against it, the share removed.

Usage:
    python benchmarks/bench_dedup.py                        # 100k: about 2 minutes on 2 cores
    python benchmarks/bench_dedup.py --records 1000000      # also find_duplicates over 1M (+5 minutes)
    python benchmarks/bench_dedup.py --instructions 20000 --json bench_dedup.json
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_common import finish, machine_info  # noqa: E402  (beside this script)

GOAL_SECONDS = 600
THRESHOLD = 0.7

# Our own task templates; {p} is filled with 1-4 phrases of the bundled corpus, {n} with a number.
ZH_TEMPLATES = [
    "请根据下面的内容写一段总结：{p}", "把这句话改写得更正式一些：{p}", "“{p}”这句话想表达什么意思？",
    "用一句话概括以下内容：{p}", "找出下面这段话里的关键词：{p}", "以“{p}”开头，续写一个小故事。",
    "为什么说{p}？请解释原因。", "判断下面的说法是否正确，并说明理由：{p}", "给下面的句子换一种说法：{p}",
    "{p}。请把这段话翻译成英文。", "如果{p}，应该注意些什么？", "请为这段话起一个标题：{p}",
    "下面这段话的语气是积极的还是消极的？{p}", "把下面的内容整理成{n}个要点：{p}", "{p}，这样做有什么好处？",
    "请用简单的语言向小朋友解释：{p}", "写一首短诗，主题是：{p}", "列出{n}条和下面内容有关的建议：{p}",
    "根据这段描述，猜一猜说话的人是谁：{p}", "{p}。这段话里有没有错别字？", "请扮演一位老师，点评这段话：{p}",
    "把这段话缩写到{n}十个字以内：{p}", "这段话适合发在朋友圈吗？为什么？{p}", "给这段话加上合适的标点：{p}",
    "从下面的内容里提一个问题，再回答它：{p}", "{p}——请从反面说说你的看法。", "为下面的内容设计{n}道选择题：{p}",
    "假如你是主人公，接下来会怎么做？{p}", "这段话用了哪些修辞手法？{p}", "请把下面的话说得更委婉一点：{p}",
]
EN_TEMPLATES = [
    "Summarize the following in one sentence: {p}", "Rewrite this more formally: {p}",
    "List {n} keywords from this text: {p}", "Is the tone of this passage positive or negative? {p}",
]
FULL_WIDTH = {c: chr(ord(c) + 0xFEE0) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"}
PUNCTUATION_SWAPS = [("，", ","), ("。", "."), ("：", ":"), ("？", "?"), ("“", '"'), ("”", '"'), ("！", "!")]
_CJK = re.compile(r"[\u4e00-\u9fff]")


def corpus_phrases() -> tuple[list[str], list[str], list[str]]:
    """(Chinese phrases, two-character words, English phrases) cut from the bundled corpus at
    punctuation: all-ideograph phrases of 4+ characters, English ones of 3+ words, no repeats."""
    from belle.models.tiny import tiny_corpus_lines

    zh, en = [], []
    for line in tiny_corpus_lines():
        if len(_CJK.findall(line)) > 0.3 * len(line):
            zh += [p for p in re.split(r"[，。；：！？、“”（）\s]+", line) if len(p) >= 4 and len(_CJK.findall(p)) == len(p)]
        else:
            en += [p.strip() for p in re.split(r"[.,;:!?]", line) if len(p.split()) >= 3]
    zh, en = list(dict.fromkeys(zh)), list(dict.fromkeys(en))
    words = list(dict.fromkeys(p[i : i + 2] for p in zh for i in range(0, len(p) - 1, 2)))
    return zh, words, en


def synthetic_instructions(n: int, duplicate_share: float = 0.1, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """`n` instructions and {index: source index} of the planted near duplicates.

    95% Chinese: one of 30 templates filled with 2-4 Chinese phrases of the bundled corpus
    (weights 2:3:2), in each of which one two-character word is swapped for another corpus word,
    so the ~900 phrases give many distinct texts that still share templates and phrases the way
    generated instructions do. 5% English: 4 templates, 1-2 English corpus phrases. A `duplicate_share` of the instructions are planted
    copies of an earlier one (uniform): 30% differ only in punctuation, full-width letters and
    digits, and spaces (exact duplicates after `normalize`); 70% have 1-3 characters replaced,
    inserted or deleted. Deterministic for a given seed.
    """
    rng = random.Random(seed)
    zh, words, en = corpus_phrases()
    characters = "".join(zh)

    def phrase(pool: list[str]) -> str:
        p = rng.choice(pool)
        if pool is zh:
            at = rng.randrange(len(p) - 1)
            p = p[:at] + rng.choice(words) + p[at + 2 :]
        return p

    texts: list[str] = []
    planted: dict[int, int] = {}
    for i in range(n):
        if i >= 10 and rng.random() < duplicate_share:
            source = rng.randrange(i)
            text = texts[source]
            if rng.random() < 0.3:
                for a, b in PUNCTUATION_SWAPS:
                    if rng.random() < 0.5:
                        text = text.replace(a, b)
                text = "".join(FULL_WIDTH.get(c, c) if rng.random() < 0.5 else c for c in text)
                text = " " * rng.randint(0, 2) + text.replace("，", "， ", rng.randint(0, 1)) + " " * rng.randint(0, 2)
            else:
                chars = list(text)
                for _ in range(rng.randint(1, 3)):
                    at, op = rng.randrange(len(chars)), rng.random()
                    if op < 0.4:
                        chars[at] = rng.choice(characters)
                    elif op < 0.7 or len(chars) < 8:
                        chars.insert(at, rng.choice(characters))
                    else:
                        del chars[at]
                text = "".join(chars)
            planted[i] = source
        elif rng.random() < 0.05:
            text = rng.choice(EN_TEMPLATES).format(p=", ".join(phrase(en) for _ in range(rng.randint(1, 2))), n=rng.randint(3, 9))
        else:
            count = rng.choices((2, 3, 4), weights=(2, 3, 2))[0]
            text = rng.choice(ZH_TEMPLATES).format(p="，".join(phrase(zh) for _ in range(count)), n=rng.randint(3, 9))
        texts.append(text)
    return texts, planted


# ---------------------------------------------------------------------------------------------


def planted_caught(texts: list[str], planted: dict[int, int], removed: list[bool]) -> tuple[int, int]:
    """(caught, eligible): planted duplicates whose source was kept and that score above THRESHOLD
    against it, and how many of those were removed."""
    from belle.data.similarity import rouge_l

    eligible = [i for i, source in planted.items() if not removed[source] and rouge_l(texts[i], texts[source]) > THRESHOLD]
    return sum(removed[i] for i in eligible), len(eligible)


def incremental(texts: list[str], exact_limit: int = 5000, progress: bool = True) -> tuple[float, list[bool]]:
    """Self-instruct's loop over `texts`: (seconds, removed flags)."""
    from tqdm import tqdm

    from belle.data.similarity import NearDuplicateIndex

    index = NearDuplicateIndex(threshold=THRESHOLD, exact_limit=exact_limit)
    removed = []
    start = time.perf_counter()
    for text in tqdm(texts, desc=f"incremental (exact_limit {exact_limit})", disable=not progress, mininterval=2, unit="text"):
        match = index.most_similar(text)
        duplicate = match is not None and match[1] > THRESHOLD
        removed.append(duplicate)
        if not duplicate:
            index.add(text)
    return time.perf_counter() - start, removed


def bulk(texts: list[str], progress: bool = True) -> tuple[float, list[bool]]:
    from belle.data.similarity import find_duplicates

    start = time.perf_counter()
    result = find_duplicates(texts, THRESHOLD, progress=progress)
    return time.perf_counter() - start, [r is not None for r in result]


def exact_greedy(texts: list[str]) -> list[bool]:
    """The reference: greedy removal comparing every text with every kept one (O(n^2))."""
    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    from belle.data.similarity import normalize

    norms = [normalize(t) for t in texts]
    kept: list[str] = []
    kept_lengths: list[int] = []
    removed = []
    for norm in norms:
        if kept:
            lcs = process.cdist([norm], kept, scorer=LCSseq.similarity, dtype=np.int32)[0]
            total = len(norm) + np.asarray(kept_lengths)
            score = np.where(total > 0, 2 * lcs / np.maximum(total, 1), 1.0).max()
        duplicate = bool(kept) and bool(score > THRESHOLD)
        removed.append(duplicate)
        if not duplicate:
            kept.append(norm)
            kept_lengths.append(len(norm))
    return removed


def pair_recall(texts: list[str]) -> dict[str, Any]:
    """All pairs of `texts`: how many score above THRESHOLD, and the share of those that share an
    LSH band (the defaults of belle.data.similarity); and how many pairs the LSH makes candidates."""
    import numpy as np
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    from belle.data.similarity import MinHasher, normalize

    norms = list(dict.fromkeys(normalize(t) for t in texts))  # distinct: exact duplicates are found by hash
    lengths = np.fromiter(map(len, norms), np.int64)
    lcs = process.cdist(norms, norms, scorer=LCSseq.similarity, dtype=np.int32, workers=-1)
    score = 2 * lcs / np.maximum(lengths[:, None] + lengths[None, :], 1)
    upper = np.triu(np.ones(score.shape, bool), 1)
    near = (score > THRESHOLD) & upper
    keys, _ = MinHasher().band_keys(norms)
    candidate = np.zeros(score.shape, bool)
    for k in range(keys.shape[1]):
        candidate |= keys[:, k][:, None] == keys[:, k][None, :]
    candidate &= upper
    return {
        "distinct_texts": len(norms),
        "pairs": int(upper.sum()),
        "near_pairs": int(near.sum()),
        "near_pairs_found": int((near & candidate).sum()),
        "pair_recall": float((near & candidate).sum() / max(1, near.sum())),
        "candidate_pairs": int(candidate.sum()),
        "candidate_precision": float((near & candidate).sum() / max(1, candidate.sum())),
    }


def agreement(reference: list[bool], other: list[bool]) -> dict[str, float]:
    both = sum(a and b for a, b in zip(reference, other))
    return {"recall": both / max(1, sum(reference)), "precision": both / max(1, sum(other))}


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", type=int, default=100_000, help="instructions for (a) and (b)")
    parser.add_argument("--records", type=int, default=None, help="also run find_duplicates over this many (e.g. 1000000)")
    parser.add_argument("--sample", type=int, default=5000, help="instructions for the recall check (c)")
    parser.add_argument("--duplicate-share", type=float, default=0.1, help="share of planted near duplicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    progress = not args.no_progress

    import rapidfuzz

    info = machine_info()
    info["rapidfuzz"] = rapidfuzz.__version__
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}, rapidfuzz {info['rapidfuzz']}")
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    ok = True
    rows: list[tuple[str, ...]] = []

    start = time.perf_counter()
    texts, planted = synthetic_instructions(max(args.instructions, args.records or 0), args.duplicate_share, args.seed)
    print(f"generated {len(texts):,} instructions ({len(planted):,} planted near duplicates) in {time.perf_counter() - start:.1f} s; "
          f"mean length {sum(map(len, texts)) / len(texts):.1f} characters")
    n = args.instructions
    head, head_planted = texts[:n], {i: s for i, s in planted.items() if i < n}

    def report(name: str, key: str, count: int, seconds: float, removed: list[bool], goal: bool, planted_pairs: dict[int, int]) -> None:
        nonlocal ok
        caught, eligible = planted_caught(texts, planted_pairs, removed)
        passed = seconds < GOAL_SECONDS
        if goal:
            ok &= passed
        results[key] = {"texts": count, "seconds": seconds, "per_second": count / seconds, "kept": count - sum(removed),
                        "removed": sum(removed), "planted_caught": caught, "planted_eligible": eligible}
        print(f"{name}: {seconds:.1f} s, {count / seconds:,.0f} texts/s, kept {count - sum(removed):,}, planted caught {caught:,}/{eligible:,}", flush=True)
        rows.append((name, f"{count:,}", f"{seconds:,.1f} s", f"{count / seconds:,.0f}", f"{count - sum(removed):,}",
                     f"{caught:,}/{eligible:,} ({caught / max(1, eligible):.1%})",
                     f"< {GOAL_SECONDS // 60} min" if goal else "-", ("PASS" if passed else "FAIL") if goal else "-"))

    seconds, removed = incremental(head, progress=progress)
    report("(a) NearDuplicateIndex, incremental", "incremental", n, seconds, removed, True, head_planted)
    seconds, removed = bulk(head, progress)
    report("(b) find_duplicates", "bulk", n, seconds, removed, True, head_planted)
    if args.records and args.records != n:
        seconds, removed = bulk(texts[: args.records], progress)
        report("(b) find_duplicates", "bulk_records", args.records, seconds, removed, False, planted)
    print("\n" + table(rows, ("path", "texts", "time", "texts/s", "kept", "planted caught", "goal", "result")))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process so far: {results['peak_rss_mb']:,.0f} MB (the texts included)")

    sample = texts[: args.sample]
    print(f"\n(c) recall against exact search on the first {len(sample):,} instructions", flush=True)
    start = time.perf_counter()
    reference = exact_greedy(sample)
    exact_seconds = time.perf_counter() - start
    pairs = pair_recall(sample)
    _, lsh_index = incremental(sample, exact_limit=0, progress=False)
    _, lsh_bulk = bulk(sample, progress=False)
    results["recall"] = {**pairs, "exact_greedy_seconds": exact_seconds, "exact_removed": sum(reference),
                         "index_lsh": agreement(reference, lsh_index), "find_duplicates": agreement(reference, lsh_bulk)}
    r = results["recall"]
    print(table([
        ("pairs above 0.7 that share an LSH band", f"{pairs['near_pairs_found']:,}/{pairs['near_pairs']:,}", f"{pairs['pair_recall']:.2%}"),
        ("candidate pairs (LSH) that are above 0.7", f"{pairs['near_pairs_found']:,}/{pairs['candidate_pairs']:,} of {pairs['pairs']:,} pairs",
         f"{pairs['candidate_precision']:.2%}"),
        ("removed by exact greedy search", f"{sum(reference):,}", f"{exact_seconds:.1f} s"),
        ("NearDuplicateIndex, LSH from the start: recall / precision", "-",
         f"{r['index_lsh']['recall']:.2%} / {r['index_lsh']['precision']:.2%}"),
        ("find_duplicates: recall / precision", "-", f"{r['find_duplicates']['recall']:.2%} / {r['find_duplicates']['precision']:.2%}"),
    ], ("check", "count", "value")))
    return finish(results, ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
