"""`belle eval agree RUN_A RUN_B`: how far two judges agree on the same answers.

Two run folders of `belle eval score` that judged one answers file with two judges (or two judge
formats, or two samples of one judge) are matched item by item. An item's score is the mean of its
parsed samples (`belle.eval.report.item_scores`). Figures, per class and over all items:

- n: items scored in both runs (an item unscored in either is counted apart, not used);
- spearman: Spearman's rank correlation of the two runs' scores;
- kendall: Kendall's tau-b (scipy's default, corrected for ties: judge scores on a 0..1 grid tie
  a lot, and tau-a would pull toward 0 for ties alone);
- mad: mean absolute difference |A - B|; mean_diff: mean of A - B (positive: judge B is harsher).

A correlation is undefined (None in agree.json, "undefined" in agree.md) with fewer than two items
or when either run gives every item the same score: no ranking to compare.

Items judged by one run only are counted and listed, never silently dropped. Judgments carry a hash
of the answer they saw (`answer_sha1`): an item judged on different answers in the two runs is
refused, since then the judges did not judge the same thing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from belle.cli import UsageError
from belle.eval.report import (JUDGMENTS, class_order, item_scores, judged_answers, only_in_lines, read_judgments,
                               save_figure_atomic)
from belle.records import DataError, write_text_atomic

RESULTS = "agree.json"
SUMMARY = "agree.md"
PLOT = "agree.png"


@dataclass
class Agreement:
    """Agreement of two runs over a group of items: n items scored in both; spearman, kendall
    (tau-b) in [-1, 1] or None when undefined; mad: mean |A - B| and mean_diff: mean A - B, on the
    0..1 score scale, None when n == 0; unscored: items in both runs left out for lacking a score."""

    n: int
    spearman: float | None
    kendall: float | None
    mad: float | None
    mean_diff: float | None
    unscored: int = 0


def agreement(a: list[float], b: list[float], unscored: int = 0) -> Agreement:
    """The `Agreement` of paired scores `a[i]`, `b[i]` (same length)."""
    from scipy.stats import kendalltau, spearmanr

    n = len(a)
    if n == 0:
        return Agreement(0, None, None, None, None, unscored)
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = [p - q for p, q in zip(a, b)]
    defined = n >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0  # else scipy warns and returns NaN
    return Agreement(
        n=n,
        spearman=_defined(spearmanr(x, y).statistic) if defined else None,
        kendall=_defined(kendalltau(x, y).statistic) if defined else None,
        mad=math.fsum(abs(d) for d in diff) / n,
        mean_diff=math.fsum(diff) / n,
        unscored=unscored,
    )


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _read_run(run_dir: Path) -> tuple[dict[str, tuple[str, float | None, int]], dict[str, str]]:
    """(item scores, id -> answer hash where the judgments have one) of a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run folder")
    if not (run_dir / JUDGMENTS).is_file():
        raise UsageError(f"{run_dir}: no {JUDGMENTS}; run `belle eval score --output {run_dir}` first")
    try:
        judgments = read_judgments(run_dir / JUDGMENTS)
    except DataError as e:
        raise UsageError(str(e)) from None
    if not judgments:
        raise UsageError(f"{run_dir / JUDGMENTS}: no judgments")
    return item_scores(judgments), judged_answers(judgments)


def agreement_results(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Everything agree.json holds: run names, per-class and overall `Agreement`s, ids in one run
    only, and the paired scores per class (for the plot). `UsageError` for unusable input."""
    scores_a, hashes_a = _read_run(run_a)
    scores_b, hashes_b = _read_run(run_b)
    common = [item for item in scores_a if item in scores_b]
    if not common:
        raise UsageError(f"{run_a} and {run_b} have no item id in common; did they judge the same answers?")
    changed = [item for item in common if item in hashes_a and item in hashes_b and hashes_a[item] != hashes_b[item]]
    if changed:
        raise UsageError(f"{len(changed)} items were judged on different answers in the two runs (first: "
                         f"{changed[0]!r}); agreement needs both judges to score the same answers file")
    for item in common:
        if scores_a[item][0] != scores_b[item][0]:
            raise UsageError(f"id {item!r} has class {scores_a[item][0]!r} in {run_a} but "
                             f"{scores_b[item][0]!r} in {run_b}; were they judged on the same eval set?")

    pairs: dict[str, list[tuple[str, float, float]]] = {}
    unscored: dict[str, int] = {}
    for item in common:
        klass, a, b = scores_a[item][0], scores_a[item][1], scores_b[item][1]
        pairs.setdefault(klass, [])
        if a is None or b is None:
            unscored[klass] = unscored.get(klass, 0) + 1
        else:
            pairs[klass].append((item, a, b))

    def figures(rows: list[tuple[str, float, float]], left_out: int) -> dict[str, Any]:
        return asdict(agreement([a for _, a, _ in rows], [b for _, _, b in rows], left_out))

    classes = class_order(pairs)
    everything = [row for klass in classes for row in pairs[klass]]
    return {
        "run_a": Path(run_a).resolve().name, "run_b": Path(run_b).resolve().name,
        "dirs": [str(run_a), str(run_b)],
        "classes": {k: figures(pairs[k], unscored.get(k, 0)) for k in classes},
        "overall": figures(everything, sum(unscored.values())),
        "only_a": [item for item in scores_a if item not in scores_b],
        "only_b": [item for item in scores_b if item not in scores_a],
        "answers_checked": sum(item in hashes_a and item in hashes_b for item in common),
        "scores": {k: [[item, a, b] for item, a, b in pairs[k]] for k in classes},
    }


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "undefined"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def agreement_markdown(results: dict[str, Any]) -> str:
    """A table with a row per class and one for all items."""
    a, b = results["run_a"], results["run_b"]

    def row(label: str, f: dict[str, Any]) -> str:
        cells = [label, str(f["n"]), _num(f["spearman"]), _num(f["kendall"]),
                 "—" if f["mad"] is None else _num(f["mad"]), "—" if f["mean_diff"] is None else _num(f["mean_diff"], True),
                 str(f["unscored"])]
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [
        f"# Judge agreement: {a} (A) vs {b} (B)", "",
        "Items scored in both runs (n); Spearman and Kendall (tau-b) correlation of the two runs' item scores; "
        "mean |A - B| and mean A - B on the 0..1 scale (positive: B is the harsher judge); unscored: items "
        "without a score in one run, left out. A correlation is undefined below two items or when one run "
        "gives every item the same score.", "",
        "| class | n | Spearman | Kendall tau-b | mean abs diff | mean diff (A - B) | unscored |",
        "|---" * 7 + "|",
    ]
    lines += [row(klass, f) for klass, f in results["classes"].items()]
    lines.append(row("**all**", results["overall"]))
    lines += ["", f"- judged by one run only: {len(results['only_a'])} in A, {len(results['only_b'])} in B (left out)"]
    return "\n".join(lines) + "\n"


def plot_agreement(results: dict[str, Any], path: Path) -> None:
    """Small multiples, one panel per class: judge A's item score against judge B's, with the
    diagonal (perfect agreement); points are jittered by up to 0.015 and half transparent, since
    judge scores on a 0.1 grid fall on the same spots."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = list(results["scores"])
    cols = min(4, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig = Figure(figsize=(3.0 * cols, 3.0 * rows + 0.4), layout="constrained")  # inches
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)
    for i, klass in enumerate(classes):
        ax = fig.add_subplot(rows, cols, i + 1)
        points = np.asarray([(a, b) for _, a, b in results["scores"][klass]], dtype=np.float64).reshape(-1, 2)
        jitter = rng.uniform(-0.015, 0.015, size=points.shape)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        ax.scatter(points[:, 0] + jitter[:, 0], points[:, 1] + jitter[:, 1], s=14, alpha=0.5)
        f = results["classes"][klass]
        ax.set_title(f"{klass} (n={f['n']}, ρ {_num(f['spearman'])})", fontsize=9)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_aspect("equal")
        ax.set_xlabel(f"A: {results['run_a']}", fontsize=8)
        ax.set_ylabel(f"B: {results['run_b']}", fontsize=8)
    fig.suptitle("Item scores of judge A vs judge B (dashed: agreement)")
    save_figure_atomic(fig, path)


def agree(run_a: Path, run_b: Path, *, output: Path | None = None) -> int:
    """Compare two judges that scored the same answers: correlation and differences per class.

    Items are matched by id; items judged by one run only are counted and listed. Writes
    OUTPUT/agree.json (every figure), OUTPUT/agree.md (a table, classes as rows) and
    OUTPUT/agree.png (judge A vs judge B, one panel per class), and prints the table.

    Args:
        run_a: run folder of judge A (from `belle eval score`, with judgments.jsonl).
        run_b: run folder of judge B, scored on the same answers.
        output: folder for the files; default: RUN_A.
    """
    results = agreement_results(Path(run_a), Path(run_b))
    out_dir = Path(output) if output is not None else Path(run_a)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / RESULTS, json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    markdown = agreement_markdown(results)
    write_text_atomic(out_dir / SUMMARY, markdown)
    plot_agreement(results, out_dir / PLOT)
    print(markdown)
    for line in only_in_lines(results["only_a"], results["only_b"], "left out"):
        print(line)
    print(f"wrote {RESULTS}, {SUMMARY} and {PLOT} to {out_dir}")
    return 0
