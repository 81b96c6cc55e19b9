"""`belle eval pairwise A B`: a judge compares two models' answers item by item (MT-bench's pairwise mode).

Each item answered in both files is judged twice, once with A's answer shown first (order AB) and
once with B's first (order BA), since judges favour one position. The judge ends its reply with
`[[A]]` (the first answer shown is better), `[[B]]` (the second) or `[[C]]` (a tie); the prompt and
`parse_verdict`, which reads it, are in `belle.eval.judging`. Each order's verdict is mapped back to a model (in order BA, `[[A]]` picks model B) and
the two are combined into the item's result:

- both orders pick the same model: that model wins ("A" or "B");
- both orders say tie: "tie";
- anything else (different picks, or a pick and a tie): "inconsistent", the verdict depends on
  the order; MT-bench counts these as ties, and so do the win rates, but they are shown apart;
- either reply without a verdict: "failed", left out of the win rates and counted.

win_rate_a = (wins_a + 0.5 * (ties + inconsistent)) / (n - failed), n the items judged; likewise B.

OUTPUT/pairwise.jsonl gets one line per judged item as soon as both its replies are in, so a
killed run resumes where it stopped and a finished one makes no call again:

    {"id", "class", "verdict_ab", "verdict_ba", "result", "raw_ab", "raw_ba", "len_a", "len_b",
     "answer_sha1_a", "answer_sha1_b", "prompt_tokens", "completion_tokens", "cached"}

`verdict_ab` / `verdict_ba` are the models the two orders picked ("A", "B", "tie", or null when
the reply had no verdict), already mapped back from positions; `raw_*` are the judge's replies;
tokens are those of the item's calls made by the run that judged it (a reply from the LLM cache
counts 0: it cost nothing this time); `cached` is how many of its two replies came from the cache;
`len_a` / `len_b` are the answers' lengths in characters after strip (files written before they
existed lack them: those items are left out of the length figures and counted, never given the
lengths of the answers files as they are now, which may have changed since they were judged).
`answer_sha1_*` are `belle.eval.scoring.answer_hash`es of the two answers judged: a re-run after
an answer changed is refused rather than mixing old verdicts into new results (records written
before the hashes were stored are taken as they are). OUTPUT/run.json pins the judge, its base URL,
temperature and max tokens (`PINNED`, checked by `belle.eval.scoring.pin_run_info`, as `belle eval
score` does), so verdicts of two judges never land in one result.

Length bias (judges favour longer answers; alpaca_eval's length-controlled win rate is built on
it), from the combined results: among decisive items (won by A or B) whose answers differ in
length, the share won by the longer one (50% is no length bias; equal lengths are counted apart),
and A's win rate in LENGTH_BINS of len_a - len_b.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import typing
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from tqdm import tqdm

from belle.cli import UsageError
from belle.eval.answers import Answered, read_answers
from belle.eval.evalset import EvalItem
from belle.eval.judging import Verdict, pairwise_messages, parse_verdict
from belle.eval.report import class_order, only_in_lines, save_figure_atomic
from belle.eval.scoring import answer_hash, ask_judge, pin_run_info
from belle.llm import LLMClient, LLMError, LLMFatalError, LLMOptions, Reply, cost_usd, fan_out, resume_message
from belle.records import DataError, jsonl, write_text_atomic

Result = Literal["A", "B", "tie", "inconsistent", "failed"]
# run.json settings a resumed run must share: mixing verdicts of two judges or decodings is refused
PINNED = ("mode", "judge", "judge_base_url", "temperature", "max_tokens")

JUDGMENTS = "pairwise.jsonl"
RESULTS = "pairwise.json"
SUMMARY = "pairwise.md"
PLOT = "pairwise.png"
# A's win rate by len_a - len_b in characters: (label, low, high), low <= difference < high
LENGTH_BINS = (
    ("A much shorter (< -200)", -math.inf, -200),
    ("A shorter (-200..-31)", -200, -30),
    ("about equal (-30..30)", -30, 31),
    ("A longer (31..200)", 31, 201),
    ("A much longer (> 200)", 201, math.inf),
)


# ---------------------------------------------------------------------------------------------
# Combining the two orders


def model_pick(verdict: Verdict | None, order: Literal["ab", "ba"]) -> Verdict | None:
    """The model a verdict picks: in order "ba" model B was shown first, so "A" means model B."""
    if order == "ba" and verdict in ("A", "B"):
        return "B" if verdict == "A" else "A"
    return verdict


def combine(pick_ab: Verdict | None, pick_ba: Verdict | None) -> Result:
    """One item's result from the models its two orders picked (see the module docstring)."""
    if pick_ab is None or pick_ba is None:
        return "failed"
    if pick_ab == pick_ba:
        return pick_ab
    return "inconsistent"


# ---------------------------------------------------------------------------------------------
# Counting


@dataclass
class PairwiseCounts:
    """Results of one class, or of all items.

    n: items judged; wins_a / wins_b: items both orders gave to that model; ties: both orders said
    tie; inconsistent: the orders disagreed; failed: a reply had no verdict (not in the rates);
    win_rate_a = (wins_a + 0.5 * (ties + inconsistent)) / (n - failed), None when n == failed.
    """

    n: int = 0
    wins_a: int = 0
    wins_b: int = 0
    ties: int = 0
    inconsistent: int = 0
    failed: int = 0

    def add(self, result: str) -> None:
        self.n += 1
        field = {"A": "wins_a", "B": "wins_b", "tie": "ties"}.get(result, result)
        setattr(self, field, getattr(self, field) + 1)

    @property
    def rated(self) -> int:
        return self.n - self.failed

    @property
    def win_rate_a(self) -> float | None:
        return (self.wins_a + 0.5 * (self.ties + self.inconsistent)) / self.rated if self.rated else None

    @property
    def win_rate_b(self) -> float | None:
        return (self.wins_b + 0.5 * (self.ties + self.inconsistent)) / self.rated if self.rated else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "win_rate_a": self.win_rate_a, "win_rate_b": self.win_rate_b}


def tally(records: Iterable[dict[str, Any]]) -> tuple[dict[str, PairwiseCounts], PairwiseCounts]:
    """(per-class counts in BELLE's class order, overall counts) of pairwise.jsonl records."""
    by_class: dict[str, PairwiseCounts] = {}
    overall = PairwiseCounts()
    for record in records:
        by_class.setdefault(record["class"], PairwiseCounts()).add(record["result"])
        overall.add(record["result"])
    return {k: by_class[k] for k in class_order(by_class)}, overall


def length_figures(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Length-bias figures of pairwise records (see the module docstring): longer_won of
    decisive_unequal decisive items with answers of different lengths (longer_share their ratio,
    None when 0), decisive_equal (same length, left out), without_lengths (records with no len_a /
    len_b, left out of everything), and per LENGTH_BINS bin its counts and win rates."""
    bins = [PairwiseCounts() for _ in LENGTH_BINS]
    longer_won = unequal = equal = missing = 0
    for record in records:
        if not isinstance(record.get("len_a"), int) or not isinstance(record.get("len_b"), int):
            missing += 1
            continue
        difference = record["len_a"] - record["len_b"]
        next(b for b, (_, low, high) in zip(bins, LENGTH_BINS) if low <= difference < high).add(record["result"])
        if record["result"] in ("A", "B"):
            if difference == 0:
                equal += 1
            else:
                unequal += 1
                longer_won += (record["result"] == "A") == (difference > 0)
    return {
        "longer_won": longer_won, "decisive_unequal": unequal,
        "longer_share": longer_won / unequal if unequal else None,
        "decisive_equal": equal, "without_lengths": missing,
        "bins": [{"label": label, "low": None if math.isinf(low) else low, "high": None if math.isinf(high) else high,
                  **counts.to_dict()} for (label, low, high), counts in zip(LENGTH_BINS, bins)],
    }


def position_counts(records: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(verdicts that picked the answer shown first, verdicts that picked one of the two) over both
    orders of every record: a judge without position bias picks the first about half the time."""
    first = decisive = 0
    for record in records:
        for order, shown_first in (("ab", "A"), ("ba", "B")):
            pick = record[f"verdict_{order}"]
            if pick in ("A", "B"):
                decisive += 1
                first += pick == shown_first
    return first, decisive


# ---------------------------------------------------------------------------------------------
# The verb


def pairwise(
    answers_a: Path,
    answers_b: Path,
    *,
    judge: LLMOptions,
    output: Path,
    max_tokens: int = 1024,
    temperature: float = 0.0,
    limit: int | None = None,
) -> int:
    """Compare two models' answers with a judge, each item in both orders, and report win rates.

    Items are matched by id; those in only one file are counted, not judged. Writes
    OUTPUT/pairwise.jsonl (one line per judged item, for resuming), OUTPUT/run.json (the judge's
    settings), OUTPUT/pairwise.json (counts and win rates per class and overall), OUTPUT/pairwise.md
    and OUTPUT/pairwise.png. Exit code 1 when judge calls failed for good: a re-run judges the items
    they left.

    Args:
        answers_a: answers file of model A (JSON lines from `belle eval generate`).
        answers_b: answers file of model B, same format.
        output: folder for the results; a re-run with the same folder, judge settings and answers resumes.
        max_tokens: longest judge reply, in tokens.
        temperature: judge sampling temperature.
        limit: judge only the first LIMIT items both files answer (in A's order).
    """
    if max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens}: must be at least 1")
    if temperature < 0:
        raise UsageError(f"--temperature {temperature}: must be 0 or more")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: must be at least 1 (leave it out to judge every item)")
    a, b = _read(answers_a), _read(answers_b)
    pairs, only_a, only_b = match_items(a, b)
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise UsageError(f"{answers_a} and {answers_b} have no item id in common; "
                         "were they answered on the same eval set?")
    names = (_name(a, answers_a), _name(b, answers_b))

    path = Path(output) / JUDGMENTS
    try:
        done = {r["id"]: r for r in (_checked(r, k) for k, r in enumerate(jsonl.resume_records(path), 1))}
    except DataError as e:
        raise UsageError(f"{path}: {e}") from None
    check_unchanged(pairs, done, path)
    params = {"temperature": temperature, "max_tokens": max_tokens}
    pin_run_info(Path(output), {"mode": "pairwise", "judge": judge.model, "judge_base_url": judge.base_url, **params,
                                "model_a": names[0], "model_b": names[1],
                                "price_input": judge.price_input, "price_output": judge.price_output},
                 PINNED, verb="judge")
    todo = [pair for pair in pairs if pair[0].id not in done]
    failures: Counter[str] = Counter()
    if todo:  # nothing left: no client, so a finished run needs neither the key nor the endpoint
        try:
            failures = asyncio.run(_judge_all(judge, todo, params, path, done, total=len(pairs)))
        except LLMFatalError as e:
            raise UsageError("the judge cannot be used: " + resume_message(e, f"{len(done)} items", path)) from None

    judged = {item.id for item, _, _ in pairs}
    # records without len_a / len_b (written before lengths were stored) stay without: the answers
    # files may have changed since, so their lengths would be guesses
    records = [r for r in done.values() if r["id"] in judged]
    results = pairwise_results(records, names=names, files=(answers_a, answers_b), judge=judge,
                               only_a=only_a, only_b=only_b, unjudged=sum(failures.values()))
    write_results(results, Path(output))
    print(summary_text(results, Path(output)))
    if failures:
        kinds = ", ".join(f"{kind} {n}" for kind, n in failures.most_common())
        print(f"{sum(failures.values())} items were not judged: judge calls failed for good ({kinds}); "
              "re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


def check_unchanged(pairs: list[tuple[EvalItem, str, str]], done: dict[str, dict[str, Any]], path: Path) -> None:
    """Raise `UsageError` when an answer of `pairs` differs from the one its record in `done` was
    judged on (`answer_sha1_a` / `answer_sha1_b`); records written before hashes were stored have
    none and are taken as they are."""
    changed = [(item.id, side) for item, answer_a, answer_b in pairs if item.id in done
               for side, answer in (("a", answer_a), ("b", answer_b))
               if done[item.id].get(f"answer_sha1_{side}", answer_hash(answer)) != answer_hash(answer)]
    if changed:
        item_id, side = changed[0]
        raise UsageError(f"{len(changed)} answer(s) changed since {path} judged them (e.g. {side.upper()}'s answer "
                         f"to id {item_id!r}); judge into a new --output")


def _read(path: Path) -> list[Answered]:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such answers file")
    return read_answers(Path(path))


def _name(answered: list[Answered], path: Path) -> str:
    """The model named in the answers file (its first "model" field), else the file's stem."""
    return next((x.model for x in answered if x.model), Path(path).stem)


def match_items(a: list[Answered], b: list[Answered]) -> tuple[list[tuple[EvalItem, str, str]], list[str], list[str]]:
    """(item, answer of A, answer of B) for every id both lists answer, in A's order, plus the ids
    only A has and those only B has. The item is A's, with B's reference answer when A's has none.

    Raise `UsageError` naming the id when the two files hold different questions or classes under one id.
    """
    by_id = {x.item.id: x for x in b}
    pairs, only_a = [], []
    for x in a:
        y = by_id.get(x.item.id)
        if y is None:
            only_a.append(x.item.id)
            continue
        if x.item.turns != y.item.turns or x.item.klass != y.item.klass:
            what = "question" if x.item.turns != y.item.turns else "class"
            raise UsageError(f"id {x.item.id!r} has a different {what} in the two answers files; "
                             "compare answers to the same eval set")
        item = x.item if x.item.std_answer else EvalItem(x.item.id, x.item.turns, y.item.std_answer, x.item.klass)
        pairs.append((item, x.answer, y.answer))
    ids_a = {x.item.id for x in a}
    only_b = [y.item.id for y in b if y.item.id not in ids_a]
    return pairs, only_a, only_b


_RESULTS = ("A", "B", "tie", "inconsistent", "failed")


def _checked(record: dict[str, Any], line: int) -> dict[str, Any]:
    """A resumed record, with the fields the counts need checked."""
    problems = [f"{key}: {record.get(key)!r} is not a non-empty string" for key in ("id", "class")
                if not isinstance(record.get(key), str) or not record[key]]
    if record.get("result") not in _RESULTS:
        problems.append(f"result: {record.get('result')!r} is not one of {', '.join(_RESULTS)}")
    for key in ("verdict_ab", "verdict_ba"):
        if record.get(key) not in ("A", "B", "tie", None):
            problems.append(f"{key}: {record.get(key)!r} is not A, B, tie or null")
    if problems:
        raise DataError(f"record {line}: " + "; ".join(problems)
                        + "; is this folder the output of `belle eval pairwise`?")
    return {"prompt_tokens": 0, "completion_tokens": 0, "cached": 0, **record}


async def _judge_all(options: LLMOptions, todo: list[tuple[EvalItem, str, str]], params: dict[str, Any],
                     path: Path, done: dict[str, dict[str, Any]], total: int) -> Counter[str]:
    """Judge every pair of `todo` in both orders, appending each finished item to `path` and to
    `done`; return the number of items left unjudged by failed calls, by kind of failure."""
    failures: Counter[str] = Counter()
    bar = tqdm(total=total, initial=total - len(todo), desc="pairs judged", unit="item", dynamic_ncols=True)

    def shown() -> None:
        bar.update()
        if failures:
            bar.set_postfix_str(f"failed calls: {sum(failures.values())}")

    async with LLMClient(options) as client:
        with jsonl.open_append(path) as out:

            def settle(pair: tuple[EvalItem, str, str], record: dict[str, Any] | LLMError) -> None:
                if isinstance(record, LLMError):
                    failures[record.kind] += 1
                else:
                    jsonl.append(out, record)
                    done[record["id"]] = record

            try:
                await fan_out(todo, lambda pair: judge_pair(client, *pair, params), settle,
                              concurrency=options.concurrency, progress=shown)
            finally:
                bar.close()
    return failures


async def judge_pair(client: LLMClient, item: EvalItem, answer_a: str, answer_b: str,
                     params: dict[str, Any]) -> dict[str, Any]:
    """Ask the judge in both orders at once; the item's pairwise.jsonl record.

    Raise `LLMError` (the first failure) when either call fails for good, after both have ended,
    so the other reply is cached for the re-run; `LLMFatalError` before any other.
    """
    replies = await asyncio.gather(ask_judge(client, pairwise_messages(item, answer_a, answer_b), params),
                                   ask_judge(client, pairwise_messages(item, answer_b, answer_a), params),
                                   return_exceptions=True)
    errors = [r for r in replies if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, LLMFatalError) or not isinstance(error, LLMError):
            raise error
    if errors:
        raise errors[0]
    ab, ba = typing.cast(list[Reply], replies)
    pick_ab = model_pick(parse_verdict(ab.text), "ab")
    pick_ba = model_pick(parse_verdict(ba.text), "ba")
    made = [r for r in (ab, ba) if not r.cached]
    return {
        "id": item.id, "class": item.klass, "verdict_ab": pick_ab, "verdict_ba": pick_ba,
        "result": combine(pick_ab, pick_ba), "raw_ab": ab.text, "raw_ba": ba.text,
        "len_a": len(answer_a.strip()), "len_b": len(answer_b.strip()),
        "answer_sha1_a": answer_hash(answer_a), "answer_sha1_b": answer_hash(answer_b),
        "prompt_tokens": sum(r.prompt_tokens for r in made),
        "completion_tokens": sum(r.completion_tokens for r in made),
        "cached": 2 - len(made),
    }


# ---------------------------------------------------------------------------------------------
# Results


def pairwise_results(records: list[dict[str, Any]], *, names: tuple[str, str], files: tuple[Path, Path],
                     judge: LLMOptions, only_a: list[str], only_b: list[str], unjudged: int = 0) -> dict[str, Any]:
    """Everything pairwise.json holds (see `write_results`) from the judged items' records."""
    by_class, overall = tally(records)
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    completion_tokens = sum(r["completion_tokens"] for r in records)
    cost = cost_usd(prompt_tokens, completion_tokens, judge.price_input, judge.price_output)
    first, decisive = position_counts(records)
    return {
        "model_a": names[0], "model_b": names[1],
        "answers_a": str(files[0]), "answers_b": str(files[1]),
        "judge": judge.model,
        "classes": {k: c.to_dict() for k, c in by_class.items()},
        "overall": overall.to_dict(),
        "position": {"picked_first_shown": first, "decisive_verdicts": decisive},
        "length": length_figures(records),
        "unjudged": unjudged,
        "only_a": only_a, "only_b": only_b,
        "judge_tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
        "cached_replies": sum(r["cached"] for r in records),
        "cost_usd": cost,
    }


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    """Write pairwise.json (`pairwise_results`' dict: model names, per-class and overall counts with
    win rates, position counts, ids in one file only, judge tokens of calls made and cost in USD),
    pairwise.md (`pairwise_markdown`) and pairwise.png (`plot_results`) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RESULTS, json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out_dir / SUMMARY, pairwise_markdown(results))
    plot_results(results, out_dir / PLOT)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def pairwise_markdown(results: dict[str, Any]) -> str:
    """A table with a row per class and one for all items: counts and both win rates."""
    a, b = results["model_a"], results["model_b"]

    def row(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    def counts(label: str, c: dict[str, Any]) -> str:
        return row([label, c["n"], c["wins_a"], c["wins_b"], c["ties"], c["inconsistent"], c["failed"],
                    _rate(c["win_rate_a"]), _rate(c["win_rate_b"])])

    lines = [
        f"# Pairwise: {a} (A) vs {b} (B)", "",
        f"Judge: {results['judge']}. Every item is judged twice, A's answer shown first and then B's. "
        "A model wins an item when both orders pick it; ties: both orders said tie; inconsistent: the "
        "orders disagreed; failed: a reply had no verdict. Win rate = (wins + half of ties and "
        "inconsistent) / (items - failed).", "",
        row(["class", "items", "A wins", "B wins", "ties", "inconsistent", "failed", "A win rate", "B win rate"]),
        "|---" * 9 + "|",
    ]
    lines += [counts(klass, c) for klass, c in results["classes"].items()]
    lines.append(counts("**all**", results["overall"]))
    first, decisive = results["position"]["picked_first_shown"], results["position"]["decisive_verdicts"]
    tokens = results["judge_tokens"]
    lines += [
        "",
        f"- A: {a} ({results['answers_a']}); B: {b} ({results['answers_b']})",
        f"- position: the judge picked the answer shown first in {first} of {decisive} verdicts that picked one"
        + (f" ({first / decisive:.1%}; 50% is no position bias)" if decisive else ""),
        f"- answered by one file only: {len(results['only_a'])} in A, {len(results['only_b'])} in B (not judged)",
    ]
    if "length" in results:
        lines[-1:-1] = [length_line(results["length"])]
    if results["unjudged"]:
        lines.append(f"- not judged yet (judge calls failed): {results['unjudged']}; a re-run retries them")
    lines.append(f"- judge tokens (calls made): {tokens['prompt']:,} prompt + {tokens['completion']:,} completion"
                 f"; {results['cached_replies']} replies from the cache"
                 + ("" if results["cost_usd"] is None else f"; cost ${results['cost_usd']:,.4f}"))
    if "length" in results:
        lines += ["", "A's win rate by answer length difference (characters after strip, A - B):", "",
                  row(["length difference", "items", "A wins", "B wins", "ties", "inconsistent", "failed",
                       "A win rate"]), "|---" * 8 + "|"]
        lines += [row([b["label"], b["n"], b["wins_a"], b["wins_b"], b["ties"], b["inconsistent"], b["failed"],
                       _rate(b["win_rate_a"])]) for b in results["length"]["bins"]]
    return "\n".join(lines) + "\n"


def length_line(length: dict[str, Any]) -> str:
    """One line on length bias: how often the longer answer won."""
    text = (f"- length: the longer answer won {length['longer_won']} of {length['decisive_unequal']} decisive items "
            "with answers of different length")
    if length["longer_share"] is not None:
        text += f" ({length['longer_share']:.1%}; 50% is no length bias)"
    if length["decisive_equal"]:
        text += f"; {length['decisive_equal']} decisive items had equal lengths"
    if length["without_lengths"]:
        text += f"; {length['without_lengths']} items with no length recorded left out"
    return text


def plot_results(results: dict[str, Any], path: Path) -> None:
    """A horizontal stacked bar per class and one for all items: shares of A wins, ties plus
    inconsistent, and B wins among the items with a verdict (failed ones left out)."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [*results["classes"].items(), ("all", results["overall"])]
    labels = [f"{k} (n={c['n'] - c['failed']}, A {_rate(c['win_rate_a'])})" for k, c in rows]
    shares = []  # (A wins, ties + inconsistent, B wins) per row, each a fraction of the rated items
    for _, c in rows:
        rated = c["n"] - c["failed"]
        parts = (c["wins_a"], c["ties"] + c["inconsistent"], c["wins_b"])
        shares.append([x / rated if rated else math.nan for x in parts])
    length = results.get("length")
    # inches: a third per bar, within a readable page; the length panel below takes 2.6
    fig = Figure(figsize=(8.0, min(12.0, 1.6 + 0.35 * len(rows)) + (2.6 if length else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    if length:
        ax, length_ax = fig.subplots(2, 1, height_ratios=[min(12.0, 1.6 + 0.35 * len(rows)), 2.6])
        _plot_length(length, length_ax)
    else:
        ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]  # classes top down, "all" at the bottom
    left = [0.0] * len(rows)
    segments = (f"A wins: {results['model_a']}", "tie or inconsistent", f"B wins: {results['model_b']}")
    for k, (label, color) in enumerate(zip(segments, ("#4C72B0", "#BBBBBB", "#DD8452"))):
        widths = [s[k] for s in shares]
        bars = ax.barh(y, widths, left=left, color=color, label=label, height=0.7)
        ax.bar_label(bars, labels=[f"{w:.0%}" if w >= 0.06 else "" for w in widths], label_type="center", fontsize=8)
        left = [x + (0.0 if math.isnan(w) else w) for x, w in zip(left, widths)]
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items with a verdict")
    ax.set_title(f"{results['model_a']} vs {results['model_b']} (judge: {results['judge']})")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(rows)), ncol=3)
    save_figure_atomic(fig, path)


def _plot_length(length: dict[str, Any], ax: Any) -> None:
    """A's win rate per length-difference bin, a bar each labelled with its rated items."""
    bins = length["bins"]
    rates = [math.nan if b["win_rate_a"] is None else b["win_rate_a"] for b in bins]
    bars = ax.bar(range(len(bins)), rates, color="#4C72B0")
    ax.bar_label(bars, labels=[f"n={b['n'] - b['failed']}" for b in bins], fontsize=8)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(bins)), [b["label"].replace(" (", "\n(") for b in bins], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("A win rate")
    share = "" if length["longer_share"] is None else f"; longer answer won {length['longer_share']:.0%}"
    ax.set_title(f"Win rate of A by answer length difference (characters){share}", fontsize=10)


def summary_text(results: dict[str, Any], out_dir: Path) -> str:
    """The few lines printed at the end of a run."""
    c = results["overall"]
    lines = [
        f"{results['model_a']} (A) vs {results['model_b']} (B), judge {results['judge']}: {c['n']} items judged",
        f"  A wins {c['wins_a']}, B wins {c['wins_b']}, ties {c['ties']}, inconsistent {c['inconsistent']}, "
        f"failed {c['failed']}",
        f"  win rate A {_rate(c['win_rate_a'])}, B {_rate(c['win_rate_b'])} (ties and inconsistent count half)",
    ]
    if "length" in results:
        lines.append("  " + length_line(results["length"])[2:])
    lines += ["  " + line for line in only_in_lines(results["only_a"], results["only_b"], "not judged")]
    lines.append(f"  results: {out_dir / RESULTS}, {out_dir / SUMMARY}, {out_dir / PLOT}")
    return "\n".join(lines)
