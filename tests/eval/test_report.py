"""The report's figures equal a hand computation on a fixed set of judgments."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from belle.eval.cli import main as eval_main
from belle.eval.report import (ClassResult, RunReport, agree_hints, bootstrap_ci, build_report, item_scores,
                               plot_labels, report_markdown, write_report)
from belle.records import DataError

# Run "a": three classes, two samples per item. Scores are dyadic fractions so every mean below is
# exact in binary floating point and the report must match it with ==.
#   open qa: q1 (1, .5) -> .75; q2 (.5, fail) -> .5; q3 (fail, fail) -> no score
#            mean (.75 + .5) / 2 = .625, n = 2, 1 unscored item, 3 failed samples
#   rewrite: r1 (.25, .25) -> .25; r2 (1, .5) -> .75;  mean .5, n = 2
#   math:    m1 (0, .5) -> .25;   m2 (.5, .5) -> .5;   mean .375, n = 2
# Score = (.625 + .5 + .375) / 3 = .5; Score_w/o_others = (.625 + .5) / 2 = .5625
RUN_A = [
    ("q1", "open qa", (1.0, 0.5)),
    ("q2", "open qa", (0.5, None)),
    ("q3", "open qa", (None, None)),
    ("r1", "rewrite", (0.25, 0.25)),
    ("r2", "rewrite", (1.0, 0.5)),
    ("m1", "math", (0.0, 0.5)),
    ("m2", "math", (0.5, 0.5)),
]
# Run "b": open qa o1 (1, 1) -> 1; code c1 (.5, fail) -> .5.  Score .75, Score_w/o_others 1.
RUN_B = [
    ("o1", "open qa", (1.0, 1.0)),
    ("c1", "code", (0.5, None)),
]
PROMPT, COMPLETION = 100_000, 25_000  # per judge call


def judgment_lines(items, cached_first=False) -> list[dict]:
    lines = []
    for id, klass, scores in items:
        for k, score in enumerate(scores):
            lines.append({"id": id, "class": klass, "sample": k, "score": score, "raw": f"得分: {score}",
                          "prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "cached": False})
    if cached_first:
        # served from the cache: its tokens were paid for elsewhere and must not be counted
        lines[0].update(cached=True, prompt_tokens=999_999, completion_tokens=999_999)
    return lines


def write_run(run_dir: Path, lines: list[dict], info: dict | None = None) -> Path:
    run_dir.mkdir(parents=True)
    with open(run_dir / "judgments.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    if info is not None:
        (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return run_dir


@pytest.fixture
def run_a(tmp_path) -> Path:
    info = {"model": "tiny", "judge": "gpt-4", "price_input": 2.0, "price_output": 8.0}
    return write_run(tmp_path / "a", judgment_lines(RUN_A, cached_first=True), info)


@pytest.fixture
def run_b(tmp_path) -> Path:
    return write_run(tmp_path / "b", judgment_lines(RUN_B))


def test_item_scores_average_parsed_samples_only():
    scores = item_scores(judgment_lines(RUN_A))
    assert scores == {
        "q1": ("open qa", 0.75, 0), "q2": ("open qa", 0.5, 1), "q3": ("open qa", None, 2),
        "r1": ("rewrite", 0.25, 0), "r2": ("rewrite", 0.75, 0),
        "m1": ("math", 0.25, 0), "m2": ("math", 0.5, 0),
    }


def test_report_equals_hand_computation(run_a):
    report = build_report(run_a, bootstrap=200, seed=1)
    assert report.name == "a" and report.model == "tiny" and report.judge == "gpt-4"
    assert list(report.classes) == ["open qa", "rewrite", "math"]  # BELLE's class order
    got = {k: (c.n, c.mean, c.parse_failures, c.failed_samples) for k, c in report.classes.items()}
    assert got == {"open qa": (2, 0.625, 1, 3), "rewrite": (2, 0.5, 0, 0), "math": (2, 0.375, 0, 0)}
    assert report.score == 0.5
    assert report.score_wo_others == 0.5625
    assert (report.items, report.parse_failures, report.failed_samples) == (7, 1, 3)
    assert (report.samples, report.cached) == (14, 1)
    # 13 calls made (one sample came from the cache)
    assert (report.prompt_tokens, report.completion_tokens) == (1_300_000, 325_000)
    # 1.3 M prompt tokens x $2/M + 0.325 M completion tokens x $8/M = 2.6 + 2.6
    assert report.cost_usd == 5.2


def test_unscored_items_are_not_zeros(tmp_path):
    # counting q3 as 0 would give open qa (.75 + .5 + 0) / 3; it must stay (.75 + .5) / 2
    report = build_report(write_run(tmp_path / "r", judgment_lines(RUN_A[:3])), bootstrap=0)
    assert report.classes["open qa"].mean == 0.625
    assert report.score == report.score_wo_others == 0.625


def test_class_with_no_scored_item_is_left_out_of_the_scores(tmp_path):
    lines = judgment_lines([("x", "extract", (None, None)), ("m", "math", (0.5, 0.5))])
    report = build_report(write_run(tmp_path / "r", lines))
    assert report.classes["extract"] == ClassResult("extract", 0, None, None, None, 1, 2, spread_left_out=1)
    assert report.score == 0.5
    assert report.score_wo_others is None  # math alone: nothing left once math and code are out


def test_no_cost_without_both_prices(tmp_path, run_b):
    assert build_report(run_b).cost_usd is None
    half = write_run(tmp_path / "half", judgment_lines(RUN_B), {"price_input": 2.0})
    assert build_report(half).cost_usd is None
    free = write_run(tmp_path / "free", judgment_lines(RUN_B), {"price_input": 0, "price_output": 0})
    assert build_report(free).cost_usd == 0.0


def test_bootstrap_interval():
    values = [0.03, 0.21, 0.48, 0.52, 0.77, 0.94, 0.99, 0.11, 0.36, 0.85, 0.6, 0.47]
    mean = sum(values) / len(values)
    low, high = bootstrap_ci(values, resamples=2000, seed=3, confidence=0.95)
    assert low < mean < high
    assert 0 <= low and high <= 1
    # about the normal interval mean +- 1.96 sd / sqrt(n) (sd with ddof 0, as the bootstrap's)
    half = 1.96 * (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 / len(values) ** 0.5
    assert low == pytest.approx(mean - half, abs=0.03) and high == pytest.approx(mean + half, abs=0.03)
    assert bootstrap_ci(values, resamples=2000, seed=3, confidence=0.95) == (low, high)  # deterministic
    assert bootstrap_ci(values, resamples=2000, seed=4, confidence=0.95) != (low, high)
    narrow = bootstrap_ci(values, resamples=2000, seed=3, confidence=0.5)
    assert low < narrow[0] <= narrow[1] < high
    assert bootstrap_ci([0.1] * 7, resamples=500, seed=0, confidence=0.95) == (0.1, 0.1)  # zero width
    assert bootstrap_ci([], resamples=500, seed=0, confidence=0.95) is None
    assert bootstrap_ci(values, resamples=0, seed=0, confidence=0.95) is None


def test_report_intervals_contain_the_mean_and_are_seeded(run_a):
    first = build_report(run_a, bootstrap=500, seed=7)
    assert build_report(run_a, bootstrap=500, seed=7) == first
    for result in first.classes.values():
        assert result.ci_low <= result.mean <= result.ci_high
    # math: m1 .25, m2 .5: resample means are .25, .375 or .5
    assert first.classes["math"].ci_low == 0.25 and first.classes["math"].ci_high == 0.5
    no_ci = build_report(run_a, bootstrap=0)
    assert all(c.ci_low is None and c.ci_high is None for c in no_ci.classes.values())
    assert no_ci.score == first.score


def test_equal_scores_give_a_zero_width_interval(tmp_path):
    lines = judgment_lines([(f"i{k}", "rewrite", (0.8, 0.8)) for k in range(5)])
    result = build_report(write_run(tmp_path / "r", lines)).classes["rewrite"]
    assert result.ci_low == result.ci_high == result.mean == 0.8


def test_a_class_of_equal_scores_is_reported_and_plotted(tmp_path, capsys):
    # the mean of three 0.8s is 0.8000000000000002, a hair above the zero-width interval [0.8, 0.8]:
    # its error bar came out negative and matplotlib refused to draw the chart
    lines = judgment_lines([(f"i{k}", "rewrite", (0.8,)) for k in range(3)] + [("m1", "math", (0.5,))])
    run_dir = write_run(tmp_path / "r", lines)
    result = build_report(run_dir).classes["rewrite"]
    assert result.mean > result.ci_high == result.ci_low == 0.8
    assert eval_main(["report", str(run_dir)]) == 0
    assert "| rewrite | 0.800 [0.800, 0.800] (n=3) |" in capsys.readouterr().out
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert sorted(p.name for p in run_dir.iterdir()) == ["judgments.jsonl", "report.json", "report.md", "report.png"]


def test_a_failed_write_leaves_the_old_report_whole(tmp_path, run_b):
    write_report([build_report(run_b, bootstrap=0)], run_b)
    before = {name: (run_b / name).read_bytes() for name in ("report.json", "report.md")}
    broken = build_report(run_b, bootstrap=0)
    broken.model = "\ud800"  # a lone surrogate: UTF-8 cannot encode it, so the write fails midway
    with pytest.raises(UnicodeEncodeError):
        write_report([broken], run_b)
    assert {name: (run_b / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run_b.iterdir()) == ["judgments.jsonl", "report.json", "report.md", "report.png"]


def test_two_runs_side_by_side(tmp_path, run_a, run_b):
    reports = [build_report(run_a, bootstrap=100), build_report(run_b, bootstrap=100)]
    out = tmp_path / "out"
    write_report(reports, out)

    md = (out / "report.md").read_text(encoding="utf-8")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| class | a | b |"
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")[1:] for line in table[2:]}
    assert list(rows)[:6] == ["model", "judge", "open qa", "rewrite", "math", "code"]
    assert rows["open qa"][0].startswith("0.625 [") and rows["open qa"][0].endswith("(n=2), 1 unscored")
    assert rows["open qa"][1] == "1.000 [1.000, 1.000] (n=1)"
    assert rows["code"] == ["—", "0.500 [0.500, 0.500] (n=1)"]
    assert rows["rewrite"][1] == "—"
    assert rows["**Score**"] == ["**0.500**", "**0.750**"]
    assert rows["**Score_w/o_others**"] == ["**0.562**", "**1.000**"]
    assert rows["items"] == ["7", "2"]
    assert rows["unscored items (parse failures)"] == ["1", "0"]
    assert rows["failed samples"] == ["3 of 14", "1 of 4"]
    assert rows["judge tokens (prompt + completion)"] == ["1,300,000 + 325,000", "400,000 + 100,000"]
    assert rows["cost (USD)"] == ["$5.2000", "—"]

    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    a, b = data["runs"]
    assert (a["name"], b["name"]) == ("a", "b")
    assert (a["score"], a["score_wo_others"], b["score"], b["score_wo_others"]) == (0.5, 0.5625, 0.75, 1.0)
    assert a["classes"]["open qa"]["mean"] == 0.625 and a["classes"]["open qa"]["parse_failures"] == 1
    assert set(b["classes"]) == {"open qa", "code"}
    assert (a["cost_usd"], b["cost_usd"]) == (5.2, None)
    assert RunReport(**{**a, "classes": {k: ClassResult(**c) for k, c in a["classes"].items()}}) == reports[0]

    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_markdown_without_intervals(run_b):
    md = report_markdown([build_report(run_b, bootstrap=0)])
    assert "| open qa | 1.000 (n=1) |" in md


def test_judge_format_is_reported_and_mixed_formats_are_flagged(tmp_path, run_b):
    page = write_run(tmp_path / "page", judgment_lines(RUN_B), {"judge": "j", "judge_format": "belle-page"})
    old, new = build_report(run_b, bootstrap=0), build_report(page, bootstrap=0)  # no run.json: delimited
    assert (old.judge_format, new.judge_format) == ("delimited", "belle-page")
    assert "judge format" not in report_markdown([old]) and "Not comparable" not in report_markdown([old, old])
    alone = report_markdown([new])
    assert "| judge format | belle-page |" in alone and "Not comparable" not in alone
    mixed = report_markdown([old, new]).splitlines()
    assert mixed[2] == ("Not comparable: these runs were judged with different judge message formats "
                        "(belle-page, delimited), so their scores cannot be set side by side.")
    assert "| judge format | delimited | belle-page |" in mixed
    assert asdict(new)["judge_format"] == "belle-page"  # report.json holds each run's asdict


def test_a_run_without_judgments_has_no_judge_format(tmp_path, run_b):
    page = write_run(tmp_path / "page", judgment_lines(RUN_B), {"judge": "j", "judge_format": "belle-page"})
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"model": "m", "tasks": {"cmmlu": {"acc": 0.5}}}), encoding="utf-8")
    benched, paged, old = (build_report(d, bootstrap=0) for d in (bench, page, run_b))
    assert benched.judge_format is None
    md = report_markdown([benched, paged])
    assert "Not comparable" not in md and "| judge format | — | belle-page |" in md
    assert "judge format" not in report_markdown([benched, old])
    # the chart names each run's format only when the judged runs differ in it
    assert plot_labels([benched, paged]) == ["bench (Score_w/o_others —)", "page (Score_w/o_others 1.000)"]
    assert plot_labels([old, paged, benched]) == ["b [delimited] (Score_w/o_others 1.000)",
                                                  "page [belle-page] (Score_w/o_others 1.000)",
                                                  "bench [no judge] (Score_w/o_others —)"]


def write_bench(run_dir: Path, acc: float, **settings) -> Path:
    """A bench.json of `belle eval bench` on model folder `sft`: cmmlu acc `acc`, with `settings`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"model": "runs/sft", "name": "sft", "tasks": {"cmmlu": {"acc": acc, "acc_stderr": 0.01}},
            "lm_eval_version": "0.4.13", "settings": {"limit": None, "num_fewshot": None, **settings}}
    (run_dir / "bench.json").write_text(json.dumps(data), encoding="utf-8")
    return run_dir


def test_benchmarks_only_report_and_partial_runs_get_rows_of_their_own(tmp_path):
    full = write_bench(tmp_path / "full", 0.5)
    limited = write_bench(tmp_path / "limited", 0.75, limit=4)
    shots = write_bench(tmp_path / "shots", 0.25, limit=4, num_fewshot=0)
    reports = [build_report(d, bootstrap=0) for d in (full, limited, shots)]
    assert [r.benchmarks for r in reports] == [{"cmmlu acc": 0.5}, {"cmmlu acc (limit 4)": 0.75},
                                               {"cmmlu acc (limit 4, 0-shot)": 0.25}]
    assert report_markdown(reports) == (
        "# Eval report\n\n| benchmark | full | limited | shots |\n|---|---|---|---|\n"
        "| model | runs/sft | runs/sft | runs/sft |\n| cmmlu acc | 0.500 | — | — |\n"
        "| cmmlu acc (limit 4) | — | 0.750 | — |\n| cmmlu acc (limit 4, 0-shot) | — | — | 0.250 |\n")


def test_benchmarks_beside_judge_scores_and_a_model_that_differs(run_a, run_b):
    write_bench(run_a, 0.5)  # benchmarked as "sft", judged on the answers of "tiny"
    write_bench(run_b, 0.75, num_fewshot=5)  # run.json-less: bench.json names the model
    a, b = (build_report(d, bootstrap=0) for d in (run_a, run_b))
    assert (a.model, b.model) == ("tiny (benchmarks: sft)", "runs/sft")
    md = report_markdown([a, b])
    assert "| **Score** | **0.500** | **0.750** |" in md and "| model | tiny (benchmarks: sft) | runs/sft |" in md
    benchmarks = "\n| cmmlu acc | 0.500 | — |\n| cmmlu acc (5-shot) | — | 0.750 |\n| judge samples per item | 2 | 2 |\n"
    assert benchmarks in md and md.index("| cost (USD) |") < md.index(benchmarks)


def hashed(lines: list[dict], answers: dict[str, str]) -> list[dict]:
    """`lines` with the answer hash each judgment saw (`answers`: id -> a stand-in hash)."""
    return [{**line, "answer_sha1": answers[line["id"]]} for line in lines]


def test_report_points_to_agree_for_runs_judged_on_the_same_answers(tmp_path, capsys):
    same = {"o1": "h1", "c1": "h2"}
    judge1 = write_run(tmp_path / "judge1", hashed(judgment_lines(RUN_B), same), {"judge": "j1"})
    judge2 = write_run(tmp_path / "judge 2", hashed(judgment_lines(RUN_B[:1]), same), {"judge": "j2"})
    other = write_run(tmp_path / "other", hashed(judgment_lines(RUN_B), {"o1": "h1", "c1": "changed"}))
    unhashed = write_run(tmp_path / "unhashed", judgment_lines(RUN_B))  # judged before hashes were stored

    (hint,) = agree_hints([judge1, judge2])
    assert hint == (f"judge1 and judge 2 judged the same answers (common items: 1): `belle eval agree {judge1} '{judge2}'` "
                    "shows how far their judges agree (rank correlation and mean difference per class).")
    assert agree_hints([judge1, other]) == [] and agree_hints([judge1, unhashed]) == [] and agree_hints([judge1]) == []
    hints = agree_hints([judge1, other, judge2])  # judge 2 judged only o1, whose answer "other" shares
    assert [h.split(" judged")[0] for h in hints] == ["judge1 and judge 2", "other and judge 2"]

    assert eval_main(["report", str(judge1), str(judge2), str(unhashed), "--output", str(tmp_path / "out")]) == 0
    assert hint in capsys.readouterr().out
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8").endswith(hint + "\n")


def test_malformed_line_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "r", judgment_lines(RUN_B))
    with open(run / "judgments.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "o2", "class": "open qa", \n')
    with pytest.raises(DataError, match=r"judgments\.jsonl:5: malformed JSON"):
        build_report(run)


def test_line_separators_inside_a_reply_do_not_split_the_line(tmp_path):
    lines = judgment_lines(RUN_B)
    lines[0]["raw"] = "得分: 1\u2028理由\x85很好\u2029"
    assert build_report(write_run(tmp_path / "r", lines)).samples == 4


def test_non_utf8_line_names_its_line(tmp_path):
    run = write_run(tmp_path / "r", judgment_lines(RUN_B))
    with open(run / "judgments.jsonl", "ab") as f:
        f.write(b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"judgments\.jsonl:5: not UTF-8"):
        build_report(run)


@pytest.mark.parametrize("change, problem", [
    ({"score": 1.5}, "score: 1.5 is neither null"),
    ({"score": "0.8"}, "score: '0.8' is neither null"),
    ({"sample": -1}, "sample: -1"),
    ({"id": ""}, "id: ''"),
    ({"prompt_tokens": 1.5}, "prompt_tokens: 1.5"),
    ({"cached": "no"}, "cached: 'no'"),
    ({"class": "rewrite"}, "id 'o1' has class 'rewrite' but 'open qa' on line 1"),
    ({"sample": 0}, "id 'o1' sample 0 was already judged on line 1"),
])
def test_bad_records_name_their_line(tmp_path, change, problem):
    lines = judgment_lines(RUN_B)
    lines[1].update(change)
    with pytest.raises(DataError) as error:
        build_report(write_run(tmp_path / "r", lines))
    assert "judgments.jsonl:2: " in str(error.value) and problem in str(error.value)


def test_missing_score_key_is_an_error(tmp_path):
    lines = judgment_lines(RUN_B)
    del lines[0]["score"]
    with pytest.raises(DataError, match=r"judgments\.jsonl:1: score: missing"):
        build_report(write_run(tmp_path / "r", lines))


def test_missing_judgments_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/judgments\.jsonl: no judgments file"):
        build_report(tmp_path / "empty")
    with pytest.raises(DataError, match="no such run folder"):
        build_report(tmp_path / "absent")


def test_torn_last_line_is_skipped_and_left_alone(tmp_path, run_b):
    path = run_b / "judgments.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "o2", "class": "open qa", "sam')  # a scorer killed mid-write
    before = path.read_bytes()
    assert build_report(run_b).items == 2
    assert path.read_bytes() == before  # a report never writes into a run's judgments


def test_bad_run_json(tmp_path):
    run = write_run(tmp_path / "r", judgment_lines(RUN_B), {"price_input": -1, "price_output": 2})
    with pytest.raises(DataError, match=r"run\.json: price_input: -1"):
        build_report(run)


# Sample spread, by hand (sample SD, ddof=1; "disagree": max - min > 0.2 strictly):
#   a1 open qa (.7, .9, .8): mean .8, SD sqrt((.01 + .01 + 0) / 2) = .1; range .2 is not > .2
#   a2 open qa (.5, 1, fail): SD .5 / sqrt(2); range .5 disagrees
#   a3 open qa (.6, fail, fail): one parsed sample, left out
#   b1 math (.2, .2, .2): SD 0, agrees;  b2 math (fail x3): left out
# open qa: SD (.1 + .5 / sqrt 2) / 2, disagree 1 / 2, 2 items, 1 left out; math: 0, 0 / 1, 1, 1
# overall (all items, not the mean of classes): SD (.1 + .5 / sqrt 2 + 0) / 3, disagree 1 / 3, 3 items, 2 left out
SPREAD = [
    ("a1", "open qa", (0.7, 0.9, 0.8)),
    ("a2", "open qa", (0.5, 1.0, None)),
    ("a3", "open qa", (0.6, None, None)),
    ("b1", "math", (0.2, 0.2, 0.2)),
    ("b2", "math", (None, None, None)),
]


def test_sample_spread_equals_a_hand_computation(tmp_path):
    report = build_report(write_run(tmp_path / "k3", judgment_lines(SPREAD)), bootstrap=0)
    qa, math_ = report.classes["open qa"], report.classes["math"]
    assert report.samples_per_item == 3
    assert qa.sample_sd == pytest.approx((0.1 + 0.5 / 2 ** 0.5) / 2)
    assert (qa.sample_disagree, qa.spread_items, qa.spread_left_out) == (0.5, 2, 1)
    assert (math_.sample_sd, math_.sample_disagree, math_.spread_items, math_.spread_left_out) == (0.0, 0.0, 1, 1)
    assert report.sample_sd == pytest.approx((0.1 + 0.5 / 2 ** 0.5) / 3)
    assert report.sample_disagree == pytest.approx(1 / 3)
    assert (report.spread_items, report.spread_left_out) == (3, 2)

    write_report([report], tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["runs"][0]
    assert data["sample_disagree"] == pytest.approx(1 / 3) and data["classes"]["open qa"]["spread_left_out"] == 1
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| judge samples per item | 3 |" in md
    assert "| sample SD (mean per item) | 0.151 (n=3, 2 left out) |" in md
    assert "| samples disagree (max - min > 0.2) | 33.3% |" in md
    assert "| sample SD: open qa | 0.227, 50.0% disagree (n=2) |" in md
    assert "| sample SD: math | 0.000, 0.0% disagree (n=1) |" in md


def test_one_sample_per_item_has_no_spread_rows(tmp_path):
    lines = judgment_lines([("a", "math", (0.5,)), ("b", "math", (1.0,))])
    report = build_report(write_run(tmp_path / "k1", lines), bootstrap=0)
    assert (report.samples_per_item, report.sample_sd, report.sample_disagree) == (1, None, None)
    assert (report.spread_items, report.spread_left_out) == (0, 2)
    assert "sample SD" not in report_markdown([report])
