"""`belle eval agree`: figures equal a hand computation, the CLI end to end, usage errors."""

import json
import math

import pytest

from belle.eval.agreement import agreement
from tests.helpers import write_jsonl

# (id, class, samples of judge A, samples of judge B)
ITEMS = [
    ("i1", "open qa", (0.2,), (0.1,)),
    ("i2", "open qa", (0.4,), (0.3,)),
    ("i3", "open qa", (0.4,), (0.5,)),
    ("i4", "open qa", (0.8,), (0.5,)),
    ("m1", "math", (0.25, 0.75), (0.5,)),  # A's item score: the mean of its samples, .5
    ("m2", "math", (0.5,), (1.0,)),
    ("m3", "math", (None,), (0.7,)),  # no score from A: left out, counted as unscored
]
ONLY_A = [("x1", "code", (0.5,), None)]
ONLY_B = [("y1", "code", None, (0.5,))]

# open qa, by hand. A (.2, .4, .4, .8), B (.1, .3, .5, .5): of the 6 pairs 4 concordant, 0 discordant,
# (i2, i3) tied in A only, (i3, i4) tied in B only. Kendall tau-b = (4 - 0) / sqrt((6 - 1)(6 - 1)) = .8
# Spearman: ranks A (1, 2.5, 2.5, 4), B (1, 2, 3.5, 3.5); centred (-1.5, 0, 0, 1.5), (-1.5, -.5, 1, 1):
#   3.75 / sqrt(4.5 * 4.5) = 5 / 6
# |A - B| (.1, .1, .1, .3): mean .15; A - B (.1, .1, -.1, .3): mean .1 (B is harsher)
# math: A (.5, .5) is constant, so both correlations are undefined; |A - B| (0, .5) -> .25; A - B -> -.25
# all 6 items: A (.2, .4, .4, .8, .5, .5), B (.1, .3, .5, .5, .5, 1): of 15 pairs 9 concordant, 1
#   discordant (i4, m2), 2 tied in A only (i2-i3, m1-m2), 3 in B only (i3-i4, i3-m1, i4-m1):
#   tau-b = 8 / sqrt(13 * 12); Spearman on ranks (1, 2.5, 2.5, 6, 4.5, 4.5) and (1, 2, 4, 4, 4, 6):
#   11.5 / sqrt(16.5 * 15.5); mean |A - B| 1.1 / 6; mean A - B -.1 / 6
EXPECTED = {
    "open qa": {"n": 4, "spearman": 5 / 6, "kendall": 0.8, "mad": 0.15, "mean_diff": 0.1, "unscored": 0},
    "math": {"n": 2, "spearman": None, "kendall": None, "mad": 0.25, "mean_diff": -0.25, "unscored": 1},
}
OVERALL = {"n": 6, "spearman": 11.5 / math.sqrt(16.5 * 15.5), "kendall": 8 / math.sqrt(13 * 12),
           "mad": 1.1 / 6, "mean_diff": -0.1 / 6, "unscored": 1}


def write_run(path, items, which, answers=None):
    lines = []
    for id, klass, *samples in items:
        for k, score in enumerate(samples[which] or ()):
            line = {"id": id, "class": klass, "sample": k, "score": score, "raw": f"得分: {score}",
                    "answer_sha1": (answers or {}).get(id, "sha-" + id)}
            lines.append(line)
    path.mkdir(parents=True)
    write_jsonl(path / "judgments.jsonl", lines)
    return path


@pytest.fixture
def runs(tmp_path):
    return (write_run(tmp_path / "judge-a", ITEMS + ONLY_A, 0), write_run(tmp_path / "judge-b", ONLY_B + ITEMS, 1))


def approx(figures: dict) -> dict:
    return {k: pytest.approx(v) if isinstance(v, float) else v for k, v in figures.items()}


def test_figures_equal_a_hand_computation(runs, tmp_path, belle_main):
    out = tmp_path / "out"
    done = belle_main("eval", "agree", *runs, "--output", out)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "agree.json").read_text(encoding="utf-8"))
    assert (results["run_a"], results["run_b"]) == ("judge-a", "judge-b")
    assert list(results["classes"]) == ["open qa", "math"]
    for klass, figures in EXPECTED.items():
        assert results["classes"][klass] == approx(figures)
    assert results["overall"] == approx(OVERALL)
    assert (results["only_a"], results["only_b"], results["answers_checked"]) == (["x1"], ["y1"], 7)

    table = (out / "agree.md").read_text(encoding="utf-8")
    assert table in done.stdout
    assert "| open qa | 4 | 0.833 | 0.800 | 0.150 | +0.100 | 0 |" in table
    assert "| math | 2 | undefined | undefined | 0.250 | -0.250 | 1 |" in table
    assert "| **all** | 6 | 0.719 | 0.641 | 0.183 | -0.017 | 1 |" in table
    assert "judged by one run only: 1 in A, 1 in B" in table
    assert "only in A (1, left out): x1" in done.stdout and "only in B (1, left out): y1" in done.stdout
    assert (out / "agree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_output_is_run_a(runs, belle_main):
    assert belle_main("eval", "agree", *runs).returncode == 0
    assert {"agree.json", "agree.md", "agree.png"} <= {p.name for p in runs[0].iterdir()}
    assert not (runs[1] / "agree.json").exists()


def test_constant_or_tiny_input_is_undefined_not_a_crash():
    assert agreement([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]).spearman is None
    assert agreement([0.1, 0.2, 0.3], [0.7, 0.7, 0.7]).kendall is None
    one = agreement([0.3], [0.5])
    assert (one.n, one.spearman, one.kendall, one.mad, one.mean_diff) == (1, None, None, pytest.approx(0.2),
                                                                          pytest.approx(-0.2))
    assert agreement([], []).mad is None
    assert agreement([0.1, 0.9], [0.9, 0.1]).kendall == pytest.approx(-1.0)


def test_usage_errors(runs, tmp_path, belle_main):
    a, b = runs

    def error(*args):
        done = belle_main("eval", "agree", *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "no such run folder" in error(a, tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    assert "no judgments.jsonl" in error(tmp_path / "bare", b)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "judgments.jsonl").write_text("")
    assert "no judgments" in error(a, tmp_path / "empty")
    other = write_run(tmp_path / "other", ONLY_B, 1)
    assert "no item id in common" in error(a, other)
    changed = write_run(tmp_path / "changed", ITEMS, 1, answers={"i3": "another answer"})
    assert "1 items were judged on different answers" in error(a, changed) and "'i3'" in error(a, changed)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "judgments.jsonl").write_text('{"id": "i1"}\n')
    assert "judgments.jsonl:1" in error(a, tmp_path / "bad")


@pytest.mark.slow
def test_two_stub_judges_through_the_cli(tmp_path, belle_main):
    """Score one answers file with two stub judges (2 samples each), then agree on them."""
    from belle.testing.openai_stub import serve_stub

    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"id": f"q{k}", "class": "open qa", "question": f"问题{k}", "std_answer": "参考", "answer": f"回答{k}"}
        for k in range(3)])
    for name, reply in (("a", "理由略。得分: 0.8"), ("b", "理由略。得分: 0.5")):
        with serve_stub(reply) as stub:
            done = belle_main("eval", "score", "--answers", answers, "--output", tmp_path / name, "--samples", 2,
                              "--judge-model", "judge", "--judge-base-url", stub.url, "--judge-cache", "off")
        assert done.returncode == 0, done.stderr
        assert "judge samples: mean per-item SD 0.000, 0.0% of 3 items disagree by more than 0.2" in done.stdout
    done = belle_main("eval", "agree", tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert "| **all** | 3 | undefined | undefined | 0.300 | +0.300 | 0 |" in done.stdout


def test_ids_on_one_side_only_are_listed_up_to_a_limit():
    from belle.eval.report import MAX_LISTED_IDS, only_in_lines

    many = [f"x{k}" for k in range(MAX_LISTED_IDS + 2)]
    assert only_in_lines(many, [], "left out") == [
        f"only in A ({MAX_LISTED_IDS + 2}, left out): {', '.join(many[:MAX_LISTED_IDS])}, ... (2 more)"]
    assert only_in_lines([], ["y1"], "not judged") == ["only in B (1, not judged): y1"]
    assert only_in_lines([], [], "left out") == []
