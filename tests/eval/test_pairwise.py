"""Pairwise judging: both orders, counts equal a hand computation, resuming, the CLI (its prompt and
verdict parsing: test_judging.py)."""

import json
import re
from pathlib import Path

import pytest

from belle.cli import UsageError, run_verbs
from belle.eval.judging import PAIRWISE_SYSTEM_PROMPT
from belle.eval.pairwise import PairwiseCounts, combine, length_figures, model_pick, pairwise
from belle.eval.scoring import answer_hash
from belle.llm import LLMOptions
from belle.testing.openai_stub import Fault, serve_stub
from tests.helpers import read_jsonl


def test_orders_map_back_to_models():
    assert model_pick("A", "ab") == "A" and model_pick("A", "ba") == "B" and model_pick("B", "ba") == "A"
    assert model_pick("tie", "ba") == "tie" and model_pick(None, "ba") is None
    assert combine("A", "A") == "A" and combine("B", "B") == "B" and combine("tie", "tie") == "tie"
    assert combine("A", "B") == combine("A", "tie") == combine("tie", "B") == "inconsistent"
    assert combine(None, "A") == combine("tie", None) == "failed"
    counts = PairwiseCounts(n=4, wins_a=1, ties=1, inconsistent=1, failed=1)
    assert counts.win_rate_a == (1 + 0.5 * 2) / 3 and counts.win_rate_b == 0.5 * 2 / 3
    assert PairwiseCounts(n=1, failed=1).win_rate_a is None


# ---------------------------------------------------------------------------------------------
# A scripted judge on the stub server. Answers carry a quality "质量N"; model A's start with 甲,
# B's with 乙. The judge prefers the higher quality and calls equal ones a tie, unless the question
# says otherwise: #first: always [[A]] (pure position bias); #mute: no verdict; #half: a tie when
# 甲 is shown first, else the normal pick; #down: HTTP 500.

SET = [  # (id, class, question, quality of A, quality of B)
    ("q1", "open qa", "问题一", 3, 1),  # A in both orders
    ("q2", "open qa", "问题二", 1, 2),  # B
    ("q3", "open qa", "问题三", 2, 2),  # tie
    ("q4", "open qa", "问题四 #first", 3, 1),  # [[A]] in both orders: A then B, inconsistent
    ("q5", "open qa", "问题五", 3, 0),  # A
    ("m1", "math", "数学一", 3, 1),  # A
    ("m2", "math", "数学二 #mute", 3, 1),  # failed
    ("m3", "math", "数学三 #half", 3, 1),  # tie in order AB, A in order BA: inconsistent
]
# open qa: n 5, A 2, B 1, tie 1, inconsistent 1 -> A (2 + 1) / 5 = .6, B (1 + 1) / 5 = .4
# math:    n 3, A 1, inconsistent 1, failed 1 -> A 1.5 / 2 = .75, B .5 / 2 = .25
# all:     n 8, A 3, B 1, tie 1, inconsistent 2, failed 1 -> A 4.5 / 7, B 2.5 / 7
EXPECTED = {"q1": "A", "q2": "B", "q3": "tie", "q4": "inconsistent", "q5": "A", "m1": "A", "m2": "failed",
            "m3": "inconsistent"}


def section(text: str, name: str) -> str:
    return re.search(f"【{name} 开始】\n(.*?)\n【{name} 结束】", text, re.S)[1]


def scripted_judge(request: dict):
    text = request["messages"][-1]["content"]
    question, first, second = (section(text, n) for n in ("问题", "助手A的回答", "助手B的回答"))
    if "#down" in question:
        return Fault(500)
    if "#first" in question:
        return "第一个更好。\n[[A]]"
    if "#mute" in question:
        return "两个回答都有道理。"
    if "#half" in question and first.startswith("甲"):
        return "差不多。\n[[C]]"
    q1, q2 = (int(re.search(r"质量(\d)", answer)[1]) for answer in (first, second))
    return "理由略。\n" + ("[[A]]" if q1 > q2 else "[[B]]" if q2 > q1 else "[[C]]")


def write_answers(path: Path, model: str | None, rows: list[tuple], prefix: str, which: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for id, klass, question, *qualities in rows:
            record = {"id": id, "class": klass, "question": question, "std_answer": "参考",
                      "answer": f"{prefix}的回答 质量{qualities[which]}", "model": model,
                      "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 7}
            if model is None:
                del record["model"]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    a = write_answers(tmp_path / "a.jsonl", "model-a", [*SET, ("x1", "math", "只有A答了", 1, 1)], "甲", 0)
    b = write_answers(tmp_path / "b.jsonl", None, [("y1", "math", "只有B答了", 1, 1), *SET], "乙", 1)
    return a, b


def judge_options(tmp_path, stub, cache: str | None = None, **kw) -> LLMOptions:
    cache = str(tmp_path / "cache.sqlite") if cache is None else cache
    return LLMOptions(model="judge", base_url=stub.url, cache=cache, max_retries=0, concurrency=4, **kw)


def test_counts_and_win_rates_equal_a_hand_computation(tmp_path, files, capsys):
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        code = pairwise(*files, judge=judge_options(tmp_path, stub, price_input=2.0, price_output=8.0), output=out)
        requests = list(stub.requests)
    assert code == 0
    assert len(requests) == 2 * len(SET)  # both orders of every common item, none for x1 / y1
    records = {r["id"]: r for r in read_jsonl(out / "pairwise.jsonl")}
    assert {k: r["result"] for k, r in records.items()} == EXPECTED
    assert (records["q4"]["verdict_ab"], records["q4"]["verdict_ba"]) == ("A", "B")
    assert (records["m3"]["verdict_ab"], records["m3"]["verdict_ba"]) == ("tie", "A")
    assert records["m2"]["verdict_ab"] is None and records["m2"]["raw_ab"] == "两个回答都有道理。"
    assert all(r["cached"] == 0 for r in records.values())

    results = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))
    assert (results["model_a"], results["model_b"], results["judge"]) == ("model-a", "b", "judge")  # B: the stem
    assert results["classes"] == {
        "open qa": {"n": 5, "wins_a": 2, "wins_b": 1, "ties": 1, "inconsistent": 1, "failed": 0,
                    "win_rate_a": 0.6, "win_rate_b": 0.4},
        "math": {"n": 3, "wins_a": 1, "wins_b": 0, "ties": 0, "inconsistent": 1, "failed": 1,
                 "win_rate_a": 0.75, "win_rate_b": 0.25},
    }
    assert results["overall"] == {"n": 8, "wins_a": 3, "wins_b": 1, "ties": 1, "inconsistent": 2, "failed": 1,
                                  "win_rate_a": 4.5 / 7, "win_rate_b": 2.5 / 7}
    # first-shown picks: q1 1/2, q2 1/2, q4 2/2, q5 1/2, m1 1/2, m3 0/1 (q3, m2: none)
    assert results["position"] == {"picked_first_shown": 6, "decisive_verdicts": 11}
    assert (results["only_a"], results["only_b"], results["unjudged"]) == (["x1"], ["y1"], 0)
    # the stub counts characters: prompt = the two messages, completion = the reply
    prompt = sum(len(m["content"]) for r in requests for m in r["messages"])
    completion = sum(len(r["raw_ab"]) + len(r["raw_ba"]) for r in records.values())
    assert results["judge_tokens"] == {"prompt": prompt, "completion": completion}
    assert results["cost_usd"] == pytest.approx((prompt * 2.0 + completion * 8.0) / 1e6)

    shown = capsys.readouterr().out
    assert "win rate A 64.3%, B 35.7%" in shown and "only in A (1, not judged): x1" in shown
    assert "only in B (1, not judged): y1" in shown


def test_a_judge_that_always_picks_the_first_answer_is_inconsistent_everywhere(tmp_path, files):
    with serve_stub("看起来第一个更好。\n[[A]]") as stub:
        assert pairwise(*files, judge=judge_options(tmp_path, stub, cache="off"), output=tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "pairwise.json").read_text(encoding="utf-8"))
    assert results["overall"] == {"n": 8, "wins_a": 0, "wins_b": 0, "ties": 0, "inconsistent": 8, "failed": 0,
                                  "win_rate_a": 0.5, "win_rate_b": 0.5}
    assert results["position"] == {"picked_first_shown": 16, "decisive_verdicts": 16}


@pytest.mark.parametrize("favourite", ["甲", "乙"])
def test_a_judge_that_prefers_one_answer_makes_it_win_in_both_orders(tmp_path, files, favourite):
    def judge(request):
        text = request["messages"][-1]["content"]
        return "[[A]]" if section(text, "助手A的回答").startswith(favourite) else "[[B]]"

    with serve_stub(judge) as stub:
        assert pairwise(*files, judge=judge_options(tmp_path, stub, cache="off"), output=tmp_path / "out") == 0
    overall = json.loads((tmp_path / "out" / "pairwise.json").read_text(encoding="utf-8"))["overall"]
    wins = {"wins_a": 8, "wins_b": 0} if favourite == "甲" else {"wins_a": 0, "wins_b": 8}
    assert overall == {"n": 8, **wins, "ties": 0, "inconsistent": 0, "failed": 0,
                       "win_rate_a": 1.0 if favourite == "甲" else 0.0, "win_rate_b": 0.0 if favourite == "甲" else 1.0}


def test_ties_failures_and_the_completion_api(tmp_path, files):
    with serve_stub("不分伯仲。\n[[C]]") as stub:
        options = judge_options(tmp_path, stub, cache="off", api="completion")
        assert pairwise(*files, judge=options, output=tmp_path / "ties") == 0
        assert {r["_path"] for r in stub.requests} == {"/v1/completions"}
        assert PAIRWISE_SYSTEM_PROMPT in stub.requests[0]["prompt"]
    overall = json.loads((tmp_path / "ties" / "pairwise.json").read_text(encoding="utf-8"))["overall"]
    assert overall == {"n": 8, "wins_a": 0, "wins_b": 0, "ties": 8, "inconsistent": 0, "failed": 0,
                       "win_rate_a": 0.5, "win_rate_b": 0.5}

    with serve_stub("两个都不错，我不想选。") as stub:
        assert pairwise(*files, judge=judge_options(tmp_path, stub, cache="off"), output=tmp_path / "mute") == 0
    results = json.loads((tmp_path / "mute" / "pairwise.json").read_text(encoding="utf-8"))
    assert results["overall"] == {"n": 8, "wins_a": 0, "wins_b": 0, "ties": 0, "inconsistent": 0, "failed": 8,
                                  "win_rate_a": None, "win_rate_b": None}  # no verdict is no tie
    markdown = (tmp_path / "mute" / "pairwise.md").read_text(encoding="utf-8")
    assert "| **all** | 8 | 0 | 0 | 0 | 0 | 8 | — | — |" in markdown
    assert (tmp_path / "mute" / "pairwise.png").stat().st_size > 0


def test_a_finished_run_makes_no_calls_again(tmp_path, files):
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        options = judge_options(tmp_path, stub, cache="off")  # the skip comes from pairwise.jsonl, not the cache
        assert pairwise(*files, judge=options, output=out) == 0
        calls, lines = stub.calls, (out / "pairwise.jsonl").read_text(encoding="utf-8")
        first = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))
        assert pairwise(*files, judge=options, output=out) == 0
        assert stub.calls == calls
    # with nothing left to judge no client is made: the judge, now down and without a key, is fine too
    gone = LLMOptions(model="judge", base_url=stub.url, api_key_env="BELLE_TEST_NO_SUCH_KEY", cache="off")
    assert pairwise(*files, judge=gone, output=out) == 0
    assert (out / "pairwise.jsonl").read_text(encoding="utf-8") == lines
    assert json.loads((out / "pairwise.json").read_text(encoding="utf-8")) == first


def cli_argv(files: tuple[Path, Path], out: Path, url: str, *flags: str) -> list[str]:
    return ["pairwise", str(files[0]), str(files[1]), "--output", str(out), "--judge-base-url", url,
            "--judge-cache", "off", *flags]


def refused(argv: list[str], capsys) -> str:
    """The one stderr line of a run of `argv` that must exit 2."""
    capsys.readouterr()
    assert run_verbs([pairwise], argv, "belle eval") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_rerun_after_an_answer_changed_is_refused(tmp_path, files, capsys):
    a, b = files
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        assert run_verbs([pairwise], cli_argv(files, out, stub.url, "--judge-model", "judge"), "belle eval") == 0
        lines, calls = (out / "pairwise.jsonl").read_text(encoding="utf-8"), stub.calls
        records = read_jsonl(out / "pairwise.jsonl")
        by_id = {r["id"]: r for r in records}
        assert (by_id["q2"]["answer_sha1_a"], by_id["q2"]["answer_sha1_b"]) == (
            answer_hash("甲的回答 质量1"), answer_hash("乙的回答 质量2"))

        # B's answers regenerated: q2 is now better, but its old verdict must not be counted as if for it
        write_answers(b, "model-b", [(i, k, q, qa, 3 if i == "q2" else qb) for i, k, q, qa, qb in SET], "乙", 1)
        err = refused(cli_argv(files, out, stub.url, "--judge-model", "judge"), capsys)
        assert "1 answer(s) changed since" in err and "B's answer to id 'q2'" in err and "new --output" in err

        # the two files swapped: every answer differs from what its side was judged on
        err = refused(cli_argv((b, a), out, stub.url, "--judge-model", "judge"), capsys)
        assert f"{2 * len(SET)} answer(s) changed since" in err
        assert stub.calls == calls and (out / "pairwise.jsonl").read_text(encoding="utf-8") == lines


def test_a_rerun_with_another_judge_or_its_settings_is_refused(tmp_path, files, capsys):
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        assert run_verbs([pairwise], cli_argv(files, out, stub.url, "--judge-model", "judge", "--limit", "2"),
                         "belle eval") == 0
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        assert {k: info[k] for k in ("mode", "judge", "judge_base_url", "temperature", "max_tokens")} == {
            "mode": "pairwise", "judge": "judge", "judge_base_url": stub.url, "temperature": 0.0, "max_tokens": 1024}
        calls = stub.calls
        # another judge model, even with items left to judge (no --limit): none of its verdicts is mixed in
        err = refused(cli_argv(files, out, stub.url, "--judge-model", "other"), capsys)
        assert "other settings (judge 'judge' -> 'other')" in err and "new --output" in err
        err = refused(cli_argv(files, out, stub.url, "--judge-model", "judge", "--temperature", "0.7"), capsys)
        assert "temperature 0.0 -> 0.7" in err
        assert stub.calls == calls and len(read_jsonl(out / "pairwise.jsonl")) == 2
        # the same judge and settings resume: the rest of the items are judged
        assert run_verbs([pairwise], cli_argv(files, out, stub.url, "--judge-model", "judge"), "belle eval") == 0
        assert stub.calls == 2 * len(SET)
    # a folder a `belle eval score` run wrote is no pairwise folder
    (tmp_path / "scored").mkdir()
    (tmp_path / "scored" / "run.json").write_text(json.dumps(
        {"judge": "judge", "judge_base_url": stub.url, "temperature": 0.0, "max_tokens": 1024}), encoding="utf-8")
    assert "mode None -> 'pairwise'" in refused(cli_argv(files, tmp_path / "scored", stub.url, "--judge-model",
                                                         "judge"), capsys)


def test_failed_calls_leave_items_for_a_rerun(tmp_path, files, capsys):
    a, b = files
    broken = [("d1", "open qa", "挂了一 #down", 3, 1), ("d2", "math", "挂了二 #down", 1, 3)]
    write_answers(a, "model-a", SET + broken, "甲", 0)
    write_answers(b, "model-b", SET + broken, "乙", 1)
    out = tmp_path / "out"
    down = {"#down": True}

    def judge(request):
        if not down["#down"] and "#down" in request["messages"][-1]["content"]:
            return "[[A]]"
        return scripted_judge(request)

    with serve_stub(judge) as stub:  # one server for both runs: the cache key holds its URL
        assert pairwise(a, b, judge=judge_options(tmp_path, stub), output=out) == 1
        assert "2 items were not judged: judge calls failed for good (server_error 2); re-run" in capsys.readouterr().err
        assert {r["id"] for r in read_jsonl(out / "pairwise.jsonl")} == set(EXPECTED)
        assert json.loads((out / "pairwise.json").read_text(encoding="utf-8"))["unjudged"] == 2

        # a kill mid-write leaves a torn last line: it is cut and its item judged again (from the cache)
        data = (out / "pairwise.jsonl").read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        torn_id = json.loads(data[last_start:])["id"]
        (out / "pairwise.jsonl").write_bytes(data[: last_start + 20])

        down["#down"] = False
        calls = stub.calls
        assert pairwise(a, b, judge=judge_options(tmp_path, stub), output=out) == 0
        assert stub.calls - calls == 4  # d1 and d2 in both orders; the torn item's replies come from the cache
    records = read_jsonl(out / "pairwise.jsonl")
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted([*EXPECTED, "d1", "d2"]) and torn_id in ids  # every item once
    by_id = {r["id"]: r for r in records}
    assert by_id[torn_id]["cached"] == 2 and by_id[torn_id]["prompt_tokens"] == 0
    assert by_id["d1"]["result"] == by_id["d2"]["result"] == "inconsistent"
    results = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))
    assert results["overall"]["n"] == 10 and results["overall"]["inconsistent"] == 4 and results["unjudged"] == 0


def test_a_refused_key_is_a_usage_error(tmp_path, files):
    with serve_stub(Fault(401)) as stub:
        with pytest.raises(UsageError, match="cannot be used.*HTTP 401.*re-run resumes"):
            pairwise(*files, judge=judge_options(tmp_path, stub, cache="off"), output=tmp_path / "out")


def test_mismatched_items(tmp_path, files):
    a, b = files
    other = [(id, klass, question + "？" if id == "q3" else question, qa, qb) for id, klass, question, qa, qb in SET]
    write_answers(b, "model-b", other, "乙", 1)
    options = LLMOptions(model="judge", base_url="http://127.0.0.1:9/v1", cache="off")
    with pytest.raises(UsageError, match="id 'q3' has a different question"):
        pairwise(a, b, judge=options, output=tmp_path / "out")
    write_answers(b, "model-b", [("z", "math", "别的题", 1, 1)], "乙", 1)
    with pytest.raises(UsageError, match="no item id in common"):
        pairwise(a, b, judge=options, output=tmp_path / "out")
    with pytest.raises(UsageError, match="no such answers file"):
        pairwise(a, tmp_path / "missing.jsonl", judge=options, output=tmp_path / "out")
    (tmp_path / "out").mkdir()
    write_answers(b, "model-b", SET, "乙", 1)
    (tmp_path / "out" / "pairwise.jsonl").write_text('{"id": "q1", "class": "open qa", "result": "A wins"}\n')
    with pytest.raises(UsageError, match="result: 'A wins'.*belle eval pairwise"):
        pairwise(a, b, judge=options, output=tmp_path / "out")


def test_cli(tmp_path, files, capsys):
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        argv = ["pairwise", str(files[0]), str(files[1]), "--output", str(out), "--judge-model", "judge",
                "--judge-base-url", stub.url, "--judge-cache", str(tmp_path / "cache.sqlite"),
                "--judge-price-input", "1", "--judge-price-output", "2", "--limit", "5"]
        assert run_verbs([pairwise], argv, "belle eval") == 0
        assert stub.calls == 10
        assert all(r["temperature"] == 0.0 and r["max_tokens"] == 1024 for r in stub.requests)
    assert "win rate A 60.0%, B 40.0%" in capsys.readouterr().out  # the open qa items q1..q5
    results = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))
    assert list(results["classes"]) == ["open qa"] and results["cost_usd"] > 0
    markdown = (out / "pairwise.md").read_text(encoding="utf-8")
    assert "# Pairwise: model-a (A) vs b (B)" in markdown
    assert "| open qa | 5 | 2 | 1 | 1 | 1 | 0 | 60.0% | 40.0% |" in markdown
    assert "| **all** | 5 | 2 | 1 | 1 | 1 | 0 | 60.0% | 40.0% |" in markdown
    assert (out / "pairwise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert run_verbs([pairwise], ["pairwise", str(files[0]), str(files[1]), "--output", str(out),
                                  "--judge-model", "judge", "--limit", "0"], "belle eval") == 2
    assert "--limit 0" in capsys.readouterr().err


# Length bias by hand: (result, len_a, len_b); difference len_a - len_b decides the bin
LENGTH_RECORDS = [
    ("A", 100, 20),  # +80: A longer; the longer won
    ("B", 10, 300),  # -290: A much shorter; the longer (B) won
    ("A", 50, 400),  # -350: A much shorter; the shorter won
    ("B", 40, 40),  # 0: about equal; decisive with equal lengths, left out of the share
    ("tie", 500, 100),  # +400: A much longer; not decisive
    ("inconsistent", 230, 200),  # +30: still about equal (the bin ends at 30)
    ("failed", 62, 31),  # +31: A longer (from 31); not rated
    ("A", None, None),  # a record without lengths: left out of everything
]


def test_length_figures_equal_a_hand_computation():
    records = [{"id": f"r{k}", "class": "open qa", "result": result,
                **({} if len_a is None else {"len_a": len_a, "len_b": len_b})}
               for k, (result, len_a, len_b) in enumerate(LENGTH_RECORDS)]
    length = length_figures(records)
    # decisive with different lengths: r0, r1, r2; the longer won r0 and r1
    assert (length["longer_won"], length["decisive_unequal"], length["decisive_equal"]) == (2, 3, 1)
    assert length["longer_share"] == 2 / 3 and length["without_lengths"] == 1
    bins = {b["label"].split(" (")[0]: b for b in length["bins"]}
    assert list(bins) == ["A much shorter", "A shorter", "about equal", "A longer", "A much longer"]
    got = {k: (b["n"], b["wins_a"], b["wins_b"], b["ties"], b["inconsistent"], b["failed"], b["win_rate_a"])
           for k, b in bins.items()}
    assert got == {
        "A much shorter": (2, 1, 1, 0, 0, 0, 0.5),
        "A shorter": (0, 0, 0, 0, 0, 0, None),
        "about equal": (2, 0, 1, 0, 1, 0, 0.25),
        "A longer": (2, 1, 0, 0, 0, 1, 1.0),
        "A much longer": (1, 0, 0, 1, 0, 0, 0.5),
    }
    assert (bins["A much shorter"]["low"], bins["A much shorter"]["high"]) == (None, -200)
    assert length_figures([])["longer_share"] is None


def test_lengths_are_stored_and_old_records_without_them_are_counted_not_guessed(tmp_path, files, capsys):
    a, b = files
    out = tmp_path / "out"
    with serve_stub(scripted_judge) as stub:
        assert pairwise(a, b, judge=judge_options(tmp_path, stub, cache="off"), output=out) == 0
    records = read_jsonl(out / "pairwise.jsonl")
    assert all((r["len_a"], r["len_b"]) == (len("甲的回答 质量3"), len("乙的回答 质量1")) for r in records)
    length = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))["length"]
    # q1, q2, q5, m1 are decisive, all with answers of equal length
    assert (length["longer_won"], length["decisive_unequal"], length["decisive_equal"]) == (0, 0, 4)
    assert length["longer_share"] is None and length["without_lengths"] == 0

    # a folder written before answer hashes and run.json were stored, and before lengths too but for
    # q1, whose record keeps them; A's answer to q1 and q2 has since grown by 200 characters: the old
    # records are taken as they are (nothing to compare the answers with), and the new lengths must
    # not be filed under verdicts on the old answers
    hashes = ("answer_sha1_a", "answer_sha1_b")
    old = [{k: v for k, v in r.items() if k not in hashes + (() if r["id"] == "q1" else ("len_a", "len_b"))}
           for r in records]
    (out / "pairwise.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in old),
                                        encoding="utf-8")
    (out / "run.json").unlink()
    lines = (out / "pairwise.jsonl").read_text(encoding="utf-8")
    grown = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
    for record in grown:
        if record["id"] in ("q1", "q2"):
            record["answer"] += "长" * 200
    a.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in grown), encoding="utf-8")
    capsys.readouterr()
    gone = LLMOptions(model="judge", base_url=stub.url, cache="off")  # the judge is down: any call fails
    assert pairwise(a, b, judge=gone, output=out) == 0  # nothing to judge again
    assert (out / "pairwise.jsonl").read_text(encoding="utf-8") == lines  # never rewritten
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["judge"] == "judge"  # pinned from now on
    length = json.loads((out / "pairwise.json").read_text(encoding="utf-8"))["length"]
    # only q1 has lengths: the stored, equal ones; every other record is counted without lengths
    assert length["without_lengths"] == len(records) - 1
    assert (length["longer_won"], length["decisive_unequal"], length["decisive_equal"]) == (0, 0, 1)
    assert sum(b["n"] for b in length["bins"]) == 1
    about_equal = next(b for b in length["bins"] if b["label"].startswith("about equal"))
    assert about_equal["n"] == 1
    shown = capsys.readouterr().out
    assert f"{len(records) - 1} items with no length recorded left out" in shown
    markdown = (out / "pairwise.md").read_text(encoding="utf-8")
    assert "| A longer (31..200) | 0 |" in markdown
    assert "- position: the judge picked" in markdown  # position bias stays
