"""Reports of judged eval runs: per-class means with bootstrap intervals, Score and Score_w/o_others.

A run folder holds `judgments.jsonl`, one line per (item, sample) written by the score step:

    {"id": str, "class": str, "sample": int, "score": float in [0, 1] | null, "raw": str,
     "prompt_tokens": int, "completion_tokens": int, "cached": bool}

(`score` null means the judge's reply had no score we could read), and optionally `run.json`:
`{"model", "judge", "price_input", "price_output"}` with prices in USD per million tokens.

How the figures are made:
- An item's score is the mean of its parsed samples. An item none of whose samples parsed has no
  score: it is left out of every mean and counted as unscored, never taken as 0, which would pull
  its class down for a parsing problem rather than a bad answer. Failed samples of items that
  still have a score are counted too.
- A class's mean is the plain mean of its item scores; its interval is a percentile bootstrap over
  items (resampling items, not samples, since items are what was drawn from the task space).
- `Score` is the macro average of the class means, every class weighted alike however many items
  it has; `Score_w/o_others` leaves out math and code, BELLE's headline figure.
- Sample spread (runs scored with `--samples K`, K >= 2): an item's spread is the sample standard
  deviation (ddof=1, the estimate of the judge's own per-item noise, so runs with different K
  compare) of its parsed samples; `sample_sd` is the mean of it over the items with at least two
  parsed samples, `sample_disagree` the share of those items whose samples differ by more than
  DISAGREE (max - min > 0.2, strictly: a 0.7 and a 0.9 are not a disagreement; a float tolerance
  keeps 0.9 - 0.7 = 0.20000000000000007 out). Items with fewer than two parsed samples are left
  out and counted (`spread_left_out`). Per class over its items, overall over all items (not a
  macro average: this is a property of the judge, not a class-weighted score).
- Tokens and cost count the judge calls actually made (`cached` false), the convention of
  `belle.llm.Usage`: a reply served from the cache cost nothing this time.
- Benchmarks (`bench.json` of `belle eval bench`): a row per task and metric, tagged with the run's
  `--limit` / `--num-fewshot` when given (`bench_rows`), so a partial run never shares a row with a
  full one.
- Several runs: judge formats are compared over the runs with judgments only (a benchmarks-only
  run has none); runs that judged the same answers (equal `answer_sha1` on every common item) get
  a line pointing to `belle eval agree` (`agree_hints`), which correlates their judges.

Reading for a report never writes: a torn last line (no newline after it: the scorer was killed
mid-write) is skipped and the file left alone, since a scorer may still be appending to it
(`belle.records.numbered_records`). Any other bad line is a `DataError` naming `file:line`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shlex
import statistics
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from belle.eval.bench import bench_rows, read_bench
from belle.eval.evalset import CLASSES, OTHERS
from belle.llm import cost_usd
from belle.records import DataError, atomic_output, jsonl, write_text_atomic

logger = logging.getLogger(__name__)

JUDGMENTS = "judgments.jsonl"
DISAGREE = 0.2  # samples of one item whose max - min exceeds this disagree
_EPS = 1e-9
RUN_INFO = "run.json"
MAX_LISTED_IDS = 10  # ids found on one side only (pairwise, agree): this many are printed, all are in the JSON


@dataclass
class ClassResult:
    """One class of one run.

    n: items with a score; mean: their mean score (0..1), None when n == 0; ci_low / ci_high: the
    bootstrap interval of that mean, None when n == 0 or no resamples were asked for;
    parse_failures: items of the class with no parsed sample (not in n); failed_samples: samples
    with no parsed score, including those of items that still have one.
    """

    klass: str
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    parse_failures: int
    failed_samples: int = 0
    sample_sd: float | None = None
    sample_disagree: float | None = None
    spread_items: int = 0
    spread_left_out: int = 0


@dataclass
class Spread:
    """Sample spread of a group of items (see the module docstring): sd: mean per-item sample SD
    (ddof=1) of the parsed samples, None when no item has two; disagree: share of those items whose
    samples span more than DISAGREE; items: items with >= 2 parsed samples; left_out: the others."""

    sd: float | None
    disagree: float | None
    items: int
    left_out: int


@dataclass
class RunReport:
    """Every figure of one run. Scores are 0..1; tokens are summed over judge calls made; cost in USD.

    items: distinct items judged, scored or not; parse_failures: items without a score;
    failed_samples: samples without a score; samples: judgment lines; cached: of which served from
    the cache; confidence: the level of the class intervals; model / judge: from run.json.
    """

    name: str
    classes: dict[str, ClassResult]
    score: float | None
    score_wo_others: float | None
    items: int
    parse_failures: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    failed_samples: int = 0
    samples: int = 0
    cached: int = 0
    confidence: float = 0.95
    model: str | None = None
    judge: str | None = None
    samples_per_item: int = 1
    sample_sd: float | None = None
    sample_disagree: float | None = None
    spread_items: int = 0
    spread_left_out: int = 0
    judge_format: str | None = "delimited"
    """The judge's message format (`belle.eval.judging.JUDGE_FORMATS`); None for a run without judgments."""
    benchmarks: dict[str, float] = field(default_factory=dict)
    """lm-eval figures from the run's bench.json (`belle eval bench`): "TASK METRIC" -> value."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_judgments(path: Path, *, cut_torn: bool = False) -> list[dict[str, Any]]:
    """The validated judgment records of `path`, in file order; `DataError` "file:line: problem" on
    a bad line, a duplicate (id, sample), or an id judged under two classes. Missing token counts
    read as 0 and a missing `cached` as false (a judge that reports no usage). A torn last line is
    skipped, and cut off the file with `cut_torn` (the scorer resuming; see `belle.records.jsonl`)."""
    if not path.is_file():
        raise DataError(f"{path}: no judgments file; run `belle eval score --output {path.parent}` first")
    records: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], int] = {}
    class_of: dict[str, tuple[str, int]] = {}
    for number, record in jsonl.numbered_records(path, cut_torn=cut_torn):
        where = f"{path}:{number}"
        record = _validated(record, where)
        key = (record["id"], record["sample"])
        if key in seen:
            raise DataError(f"{where}: id {key[0]!r} sample {key[1]} was already judged on line {seen[key]}")
        seen[key] = number
        klass, first = class_of.setdefault(record["id"], (record["class"], number))
        if klass != record["class"]:
            raise DataError(f"{where}: id {record['id']!r} has class {record['class']!r} but {klass!r} on line {first}")
        records.append(record)
    return records


def _validated(record: dict[str, Any], where: str) -> dict[str, Any]:
    """The record with defaults filled in; every problem of the line is named in one error."""
    problems = []
    for key in ("id", "class"):
        if not isinstance(record.get(key), str) or not record[key]:
            problems.append(f"{key}: {record.get(key)!r} is not a non-empty string")
    sample = record.get("sample")
    if not _is_int(sample) or sample < 0:
        problems.append(f"sample: {sample!r} is not an integer >= 0")
    if "score" not in record:
        problems.append("score: missing (null marks a parse failure)")
    else:
        score = record["score"]
        if score is not None and not (_is_number(score) and 0 <= score <= 1):
            problems.append(f"score: {score!r} is neither null nor a number in [0, 1]")
    out = dict(record)
    for key in ("prompt_tokens", "completion_tokens"):
        value = out.setdefault(key, 0)
        if not _is_int(value) or value < 0:
            problems.append(f"{key}: {value!r} is not an integer >= 0")
    if not isinstance(out.setdefault("cached", False), bool):
        problems.append(f"cached: {out['cached']!r} is not true or false")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of `run_dir` ({} if absent), its prices checked to be numbers >= 0 or null."""
    path = run_dir / RUN_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: not a JSON object")
    for key in ("price_input", "price_output"):
        price = info.get(key)
        if price is not None and not (_is_number(price) and price >= 0):
            raise DataError(f"{path}: {key}: {price!r} is not a number >= 0 (USD per million tokens)")
    return info


# ---------------------------------------------------------------------------------------------
# Figures


def item_scores(judgments: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, float | None, int]]:
    """id -> (class, mean of its parsed samples or None when none parsed, number of failed samples).

    Items keep the order in which they first appear."""
    parsed: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    class_of: dict[str, str] = {}
    for record in judgments:
        item = record["id"]
        klass = class_of.setdefault(item, record["class"])
        if klass != record["class"]:
            raise DataError(f"id {item!r} is judged under two classes: {klass!r} and {record['class']!r}")
        parsed.setdefault(item, [])
        failed.setdefault(item, 0)
        if record["score"] is None:
            failed[item] += 1
        else:
            parsed[item].append(float(record["score"]))
    # fsum: the correctly rounded sum, so a mean of exact values is the exact mean when representable
    return {item: (class_of[item], math.fsum(scores) / len(scores) if scores else None, failed[item])
            for item, scores in parsed.items()}


def item_samples(judgments: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """id -> its parsed sample scores in file order (empty when none parsed)."""
    parsed: dict[str, list[float]] = {}
    for record in judgments:
        scores = parsed.setdefault(record["id"], [])
        if record["score"] is not None:
            scores.append(float(record["score"]))
    return parsed


def sample_spread(samples: Iterable[list[float]]) -> Spread:
    """The `Spread` of items given as lists of their parsed sample scores."""
    sds, disagree, left_out = [], 0, 0
    for scores in samples:
        if len(scores) < 2:
            left_out += 1
            continue
        sds.append(statistics.stdev(scores))  # exact sums: equal samples give exactly 0
        disagree += max(scores) - min(scores) > DISAGREE + _EPS
    if not sds:
        return Spread(None, None, 0, left_out)
    return Spread(math.fsum(sds) / len(sds), disagree / len(sds), len(sds), left_out)


def bootstrap_ci(values: list[float], *, resamples: int, seed: int, confidence: float) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values`: `resamples` draws of len(values) with
    replacement; the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of their means.
    None when there are no values or no resamples."""
    if not values or resamples < 1:
        return None
    x = np.asarray(values, dtype=np.float64)
    if np.ptp(x) == 0:  # every resample is the same; skip the float noise of summing copies
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)  # (resamples,)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def class_order(classes: Iterable[str]) -> list[str]:
    """BELLE's classes in their usual order, then any others alphabetically."""
    known = {klass: i for i, klass in enumerate(CLASSES)}
    return sorted(set(classes), key=lambda k: (known.get(k, len(known)), k))


def _macro(means: Iterable[float | None]) -> float | None:
    present = [m for m in means if m is not None]
    return math.fsum(present) / len(present) if present else None


def build_report(run_dir: Path, *, bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> RunReport:
    """The report of one run folder (see the module docstring for every figure).

    bootstrap: resamples per class interval (0: no intervals); seed: makes the intervals
    reproducible, each class drawing from its own stream so adding a class moves no other's
    interval; confidence: the interval's level, in (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be 0 or more resamples, got {bootstrap}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    bench = read_bench(run_dir)  # a folder with bench.json alone reports its benchmarks only
    judgments = read_judgments(run_dir / JUDGMENTS) if bench is None or (run_dir / JUDGMENTS).is_file() else []
    info = read_run_info(run_dir)
    scores = item_scores(judgments)
    samples = item_samples(judgments)

    per_class: dict[str, list[float]] = {}
    unscored: dict[str, int] = {}
    failed: dict[str, int] = {}
    for klass, score, failures in scores.values():
        per_class.setdefault(klass, [])
        if score is None:
            unscored[klass] = unscored.get(klass, 0) + 1
        else:
            per_class[klass].append(score)
        failed[klass] = failed.get(klass, 0) + failures

    classes = {}
    for klass in class_order(per_class):
        values = per_class[klass]
        ci = bootstrap_ci(values, resamples=bootstrap, seed=_class_seed(seed, klass), confidence=confidence)
        spread = sample_spread(samples[item] for item, (k, _, _) in scores.items() if k == klass)
        classes[klass] = ClassResult(
            klass=klass, n=len(values), mean=math.fsum(values) / len(values) if values else None,
            ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
            parse_failures=unscored.get(klass, 0), failed_samples=failed[klass],
            sample_sd=spread.sd, sample_disagree=spread.disagree, spread_items=spread.items,
            spread_left_out=spread.left_out)
    overall = sample_spread(samples.values())
    per_item: dict[str, int] = {}
    for record in judgments:
        per_item[record["id"]] = per_item.get(record["id"], 0) + 1

    made = [r for r in judgments if not r["cached"]]
    prompt_tokens = sum(r["prompt_tokens"] for r in made)
    completion_tokens = sum(r["completion_tokens"] for r in made)
    cost = cost_usd(prompt_tokens, completion_tokens, info.get("price_input"), info.get("price_output"))
    return RunReport(
        name=run_dir.resolve().name,
        classes=classes,
        score=_macro(c.mean for c in classes.values()),
        score_wo_others=_macro(c.mean for k, c in classes.items() if k not in OTHERS),
        items=len(scores),
        parse_failures=sum(unscored.values()),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        failed_samples=sum(failed.values()),
        samples=len(judgments),
        cached=len(judgments) - len(made),
        confidence=confidence,
        model=_run_model(info, bench),
        judge=_str_or_none(info.get("judge")),
        samples_per_item=max(per_item.values(), default=1),
        sample_sd=overall.sd,
        sample_disagree=overall.disagree,
        spread_items=overall.items,
        spread_left_out=overall.left_out,
        judge_format=str(info.get("judge_format") or "delimited") if judgments else None,
        benchmarks=bench_rows(bench) if bench else {},
    )


def _class_seed(seed: int, klass: str) -> list[int]:
    # crc32, not hash(): str hashes change from one process to the next
    return [seed, zlib.crc32(klass.encode("utf-8"))]


def _run_model(info: dict[str, Any], bench: dict[str, Any] | None) -> str | None:
    """run.json's model (the answers'), else bench.json's; both when bench.json's `name` (written by
    bench since it compares names) is not the answers' model, as a folder benchmarked first and
    scored on another model's answers after would show."""
    answers = _str_or_none(info.get("model"))
    if answers is None:
        return _str_or_none((bench or {}).get("model"))
    benched = (bench or {}).get("name")
    return f"{answers} (benchmarks: {benched})" if isinstance(benched, str) and benched != answers else answers


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# Writing


def write_report(reports: list[RunReport], out_dir: Path, notes: Sequence[str] = ()) -> None:
    """Write report.json (every figure of every run), report.md (one table, classes as rows and
    runs as columns, then `notes`, a line each) and report.png (per-class bars, one per run, with
    interval error bars)."""
    if not reports:
        raise ValueError("write_report needs at least one run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"runs": [asdict(report) for report in reports]}
    write_text_atomic(out_dir / "report.json", json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", report_markdown(reports, notes))
    _plot(reports, out_dir / "report.png")


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _cell(result: ClassResult | None) -> str:
    if result is None:
        return "—"
    if result.mean is None:
        text = "— (n=0)"
    elif result.ci_low is None:
        text = f"{result.mean:.3f} (n={result.n})"
    else:
        text = f"{result.mean:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}] (n={result.n})"
    if result.parse_failures:
        text += f", {result.parse_failures} unscored"
    return text


def _row(label: str, cells: Iterable[str]) -> str:
    return "| " + " | ".join([label, *(c.replace("|", "\\|") for c in cells)]) + " |"


def report_markdown(reports: list[RunReport], notes: Sequence[str] = ()) -> str:
    """The markdown table of `reports`: a row per class (mean [CI] (n)), then the summary rows, the
    benchmark rows and the sample spread rows, then `notes` (e.g. `agree_hints`), a line each; runs
    with benchmarks only get the benchmark rows alone."""
    if all(r.samples == 0 for r in reports) and any(r.benchmarks for r in reports):
        lines = ["# Eval report", "", _row("benchmark", (r.name for r in reports)), "|" + "---|" * (len(reports) + 1),
                 *([_row("model", (r.model or "—" for r in reports))] if any(r.model for r in reports) else []),
                 *_benchmark_rows(reports)]
    else:
        lines = _judged_lines(reports)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _benchmark_rows(reports: list[RunReport]) -> list[str]:
    return [_row(label, (_f(r.benchmarks.get(label)) for r in reports))
            for label in dict.fromkeys(label for r in reports for label in r.benchmarks)]


def _judged_lines(reports: list[RunReport]) -> list[str]:
    """The report's lines for runs with judgments: header, judge rows, benchmark rows, spread rows."""
    levels = sorted({round(r.confidence * 100, 6) for r in reports})
    level = "/".join(f"{x:g}%" for x in levels)
    formats = judge_formats(reports)
    mixed = ([f"Not comparable: these runs were judged with different judge message formats "
              f"({', '.join(formats)}), so their scores cannot be set side by side.", ""]
             if len(formats) > 1 else [])
    lines = ["# Eval report", "", *mixed,
             f"Class cells: mean judge score (0..1) [{level} bootstrap interval over items] (items scored). "
             f"Score: macro average over classes; Score_w/o_others: without {' and '.join(OTHERS)}.", "",
             *(_SPREAD_NOTE if any(r.samples_per_item >= 2 for r in reports) else []),
             _row("class", (r.name for r in reports)), "|" + "---|" * (len(reports) + 1)]
    if any(r.model for r in reports):
        lines.append(_row("model", (r.model or "—" for r in reports)))
    if any(r.judge for r in reports):
        lines.append(_row("judge", (r.judge or "—" for r in reports)))
    if formats and formats != ["delimited"]:
        lines.append(_row("judge format", (r.judge_format or "—" for r in reports)))
    for klass in class_order(k for r in reports for k in r.classes):
        lines.append(_row(klass, (_cell(r.classes.get(klass)) for r in reports)))
    lines += [
        _row("**Score**", (f"**{_f(r.score)}**" for r in reports)),
        _row("**Score_w/o_others**", (f"**{_f(r.score_wo_others)}**" for r in reports)),
        _row("items", (str(r.items) for r in reports)),
        _row("unscored items (parse failures)", (str(r.parse_failures) for r in reports)),
        _row("failed samples", (f"{r.failed_samples} of {r.samples}" for r in reports)),
        _row("judge tokens (prompt + completion)", (f"{r.prompt_tokens:,} + {r.completion_tokens:,}" for r in reports)),
        _row("cached samples", (str(r.cached) for r in reports)),
        _row("cost (USD)", ("—" if r.cost_usd is None else f"${r.cost_usd:,.4f}" for r in reports)),
    ]
    lines += _benchmark_rows(reports)
    if any(r.samples_per_item >= 2 for r in reports):
        lines += [
            _row("judge samples per item", (str(r.samples_per_item) for r in reports)),
            _row("sample SD (mean per item)", (_spread_cell(r.sample_sd, r) for r in reports)),
            _row(f"samples disagree (max - min > {DISAGREE:g})", (_share(r.sample_disagree) for r in reports)),
        ]
        for klass in class_order(k for r in reports for k in r.classes):
            lines.append(_row(f"sample SD: {klass}", (_class_spread(r.classes.get(klass)) for r in reports)))
    return lines


def judge_formats(reports: Iterable[RunReport]) -> list[str]:
    """The judge formats of the runs that have judgments, sorted, each once."""
    return sorted({r.judge_format for r in reports if r.judge_format is not None})


def answer_hashes(run_dir: Path) -> dict[str, str]:
    """id -> the `answer_sha1` of the answer its judgments saw, for the items whose judgments carry
    one (judgments written before the hash was stored have none); {} for a run without judgments."""
    path = Path(run_dir) / JUDGMENTS
    return judged_answers(read_judgments(path)) if path.is_file() else {}


def judged_answers(judgments: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """id -> `answer_sha1` of judgment records that carry one."""
    return {r["id"]: r["answer_sha1"] for r in judgments if isinstance(r.get("answer_sha1"), str)}


def agree_hints(run_dirs: Sequence[Path]) -> list[str]:
    """A line for each pair of runs that judged the same answers (items in common whose answer
    hashes are equal in both, none differing), pointing to `belle eval agree` for how far their
    judges agree. Items without a hash in either run are not compared; a pair none of whose common
    items can be compared gets no line."""
    hashes = [answer_hashes(run_dir) for run_dir in run_dirs]
    lines = []
    for i, j in itertools.combinations(range(len(run_dirs)), 2):
        common = hashes[i].keys() & hashes[j].keys()
        if common and all(hashes[i][item] == hashes[j][item] for item in common):
            a, b = (Path(run_dirs[k]) for k in (i, j))
            lines.append(f"{a.resolve().name} and {b.resolve().name} judged the same answers (common items: {len(common)}): "
                         f"`belle eval agree {shlex.quote(str(a))} {shlex.quote(str(b))}` shows how far their "
                         "judges agree (rank correlation and mean difference per class).")
    return lines


_SPREAD_NOTE = [
    "Sample SD: the standard deviation (ddof=1) of an item's parsed judge samples, averaged over the items "
    "with two or more (left out: items with fewer); samples disagree: the share of those items whose samples "
    f"span more than {DISAGREE:g}. A judge that moves by 0.1 or more rereading the same answer, or disagrees "
    "on a fifth of the items, adds noise the size of most gaps between models.", ""]


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _spread_cell(sd: float | None, r: RunReport) -> str:
    if sd is None:
        return "—"
    return f"{sd:.3f} (n={r.spread_items}" + (f", {r.spread_left_out} left out)" if r.spread_left_out else ")")


def _class_spread(result: ClassResult | None) -> str:
    if result is None or result.sample_sd is None:
        return "—"
    return f"{result.sample_sd:.3f}, {_share(result.sample_disagree)} disagree (n={result.spread_items})"


def _plot(reports: list[RunReport], path: Path) -> None:
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = class_order(k for r in reports for k in r.classes)
    width = 0.8 / len(reports)
    # inches: about a quarter per bar plus room between classes, kept within a readable page
    fig = Figure(figsize=(min(16.0, max(6.0, 1 + len(classes) * (0.25 * len(reports) + 0.4))), 5.0),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    label_of = plot_labels(reports)
    for i, report in enumerate(reports):
        results = [report.classes.get(k) for k in classes]
        means = np.array([np.nan if r is None or r.mean is None else r.mean for r in results])
        # a class the run lacks, or one with no scored item, gets no bar (NaN), not a bar at 0
        low = np.array([np.nan if r is None or r.ci_low is None else r.mean - r.ci_low for r in results])
        high = np.array([np.nan if r is None or r.ci_high is None else r.ci_high - r.mean for r in results])
        # clipped at 0: equal scores make a zero-width interval, and the mean of three 0.8s is
        # 0.8000000000000002, a hair above it, which matplotlib refuses as a negative error bar
        low, high = np.clip(low, 0, None), np.clip(high, 0, None)
        label = label_of[i]
        ax.bar(x + (i - (len(reports) - 1) / 2) * width, means, width, label=label,
               yerr=np.vstack([low, high]), capsize=2)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean judge score")
    has_ci = any(c.ci_low is not None for r in reports for c in r.classes.values())
    level = f"{reports[0].confidence * 100:g}%"
    ax.set_title("Judge score per class" + (f" ({level} bootstrap intervals)" if has_ci else ""))
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(len(reports), 2))
    save_figure_atomic(fig, path)


def plot_labels(reports: list[RunReport]) -> list[str]:
    """The chart's legend label of each run: its name and Score_w/o_others, and its judge format
    when the judged runs do not all share one."""
    show_format = len(judge_formats(reports)) > 1
    return [f"{r.name}" + (f" [{r.judge_format or 'no judge'}]" if show_format else "")
            + f" (Score_w/o_others {_f(r.score_wo_others)})" for r in reports]


def only_in_lines(only_a: Sequence[str], only_b: Sequence[str], note: str) -> list[str]:
    """`only in A (N, NOTE): id, id, ... (M more)`, and the same for B, for each side with ids; at
    most MAX_LISTED_IDS ids are named."""
    lines = []
    for side, ids in (("A", only_a), ("B", only_b)):
        if ids:
            more = f", ... ({len(ids) - MAX_LISTED_IDS} more)" if len(ids) > MAX_LISTED_IDS else ""
            lines.append(f"only in {side} ({len(ids)}, {note}): {', '.join(ids[:MAX_LISTED_IDS])}{more}")
    return lines


def save_figure_atomic(fig: Any, path: Path) -> None:
    """Save the matplotlib figure `fig` as a PNG at `path` (120 dpi), whole or not at all."""
    with atomic_output(path, binary=True) as f:
        fig.savefig(f, dpi=120, format="png")
