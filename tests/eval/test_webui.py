"""`belle eval webui`: the page's pure functions in process, then the real CLI in a subprocess with a
stub judge, driven in headless Chromium: a question by class, shuffle, paste, score, a parse
failure, Generate with the tiny model, an answers file with its report and downloads, a bad file,
and an API key typed in the page that reaches the judge and no file, log or browser storage."""

import dataclasses
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from belle.chat.backends import LocalBackend
from belle.cli import UsageError
from belle.eval.answers import stream_answer
from belle.eval.cli import main as eval_main
from belle.eval.webui import (
    ALL, class_choices, fenced, find_question, items_of_class, judge_one, judge_options, llm_error_message,
    question_choices,
    question_text, score_file, shuffle_pick, verdict_markdown,
)
from belle.llm import LLMError, LLMOptions
from belle.records import DataError
from belle.testing.openai_stub import Fault, serve_stub
from tests.chat.conftest import start_cli
from tests.helpers import FakeStream

ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "sk-test-Zq8vK3mW9xR2"  # typed into the page's key field
REASON = "回答正确，但略显简略。"
NO_SCORE = "我无法判断这个回答。"


def judge_reply(request: dict) -> str:
    """The stub judge: no score for an answer containing NOSCORE, else 0.7 with `REASON`."""
    return NO_SCORE if "NOSCORE" in request["messages"][-1]["content"] else f"{REASON}\n得分: 0.7"


@pytest.fixture(scope="module")
def stub():
    with serve_stub(judge_reply) as stub:
        yield stub


def write_answers(path: Path, items, answers: dict[str, str]) -> Path:
    """An answers file: the eval-set records of `answers`' ids, each with its answer."""
    by_id = {item.id: item for item in items}
    with path.open("w", encoding="utf-8") as out:
        for item_id, answer in answers.items():
            item = by_id[item_id]
            question = item.turns[0] if len(item.turns) == 1 else list(item.turns)
            out.write(json.dumps({"id": item.id, "class": item.klass, "question": question, "std_answer": item.std_answer,
                                  "answer": answer, "model": "tiny"}, ensure_ascii=False) + "\n")
    return path


ANSWERS = {"zh-open_qa-01": "叶绿素分解，黄色色素显现。", "zh-open_qa-02": "100 摄氏度。",
           "zh-math-01": "NOSCORE", "zh-math-02": "答案是 42。", "zh-code-01": "print('hi')"}


# In process: the page's pure functions.


def test_classes_and_questions_by_class(items):
    choices = class_choices(items)
    assert choices[0] == (f"{ALL} (63)", ALL)
    assert choices[1:4] == [("open qa (7)", "open qa"), ("brainstorming (6)", "brainstorming"), ("rewrite (6)", "rewrite")]
    assert len(choices) == 11
    math = items_of_class(items, "math")
    assert len(math) == 7 and {item.klass for item in math} == {"math"}
    assert items_of_class(items, ALL) == items
    assert items_of_class(items, "translation") == []
    labels = dict((value, label) for label, value in question_choices(items_of_class(items, "open qa")))
    assert labels["zh-open_qa-02"] == "zh-open_qa-02 · 在标准大气压下，纯水的沸点是多少摄氏度？"
    assert labels["zh-open_qa-07"] == "zh-open_qa-07 · 我想开始练习跑步，新手每周跑几次比较合适？ (2 turns)"
    assert labels["zh-open_qa-01"] == "zh-open_qa-01 · 为什么秋天很多树叶会变黄？"
    long = next(label for label, _ in question_choices(items) if label.endswith("…"))
    assert len(long.split(" · ", 1)[1]) == 41


def test_shuffle_stays_in_the_class_and_moves(items):
    rng = random.Random(0)
    current = "zh-math-01"
    seen = set()
    for _ in range(50):
        item = shuffle_pick(items, "math", current, rng)
        assert item.klass == "math" and item.id != current
        seen.add(item.id)
        current = item.id
    assert len(seen) == 7  # every question of the class comes up
    assert {shuffle_pick(items, ALL, None, rng).klass for _ in range(200)} == {item.klass for item in items}
    one = items_of_class(items, "math")[:1]
    assert shuffle_pick(one, "math", one[0].id, rng) == one[0]  # the only question of its class
    with pytest.raises(ValueError, match="no questions of class 'translation'"):
        shuffle_pick(items, "translation", None, rng)


def test_question_text_shows_every_turn(items):
    single = next(item for item in items if item.id == "zh-open_qa-01")
    assert question_text(single) == single.turns[0]
    multi = next(item for item in items if item.id == "zh-open_qa-07")
    assert question_text(multi) == f"[Turn 1] {multi.turns[0]}\n\n[Turn 2] {multi.turns[1]}"


def test_find_question_by_id_or_exact_text(items):
    single = next(item for item in items if item.id == "zh-open_qa-01")
    multi = next(item for item in items if item.id == "zh-open_qa-07")
    assert find_question(items, single.id) is single and find_question(items, single.turns[0]) is single
    assert find_question(items, question_text(multi)) is multi
    with pytest.raises(UsageError, match="no question with id or text 'zh-open_qa-0'"):
        find_question(items, "zh-open_qa-0")
    with pytest.raises(UsageError, match="no question with id or text"):
        find_question(items, single.turns[0] + " ")  # exact text only
    twice = [single, dataclasses.replace(single, id="copy", klass="generation")]
    with pytest.raises(UsageError, match="2 questions have the text .*ids zh-open_qa-01, copy"):
        find_question(twice, single.turns[0])


def test_verdict_shows_the_score_and_reason_or_the_raw_reply():
    record = {"score": 0.7, "reason": REASON, "raw": f"{REASON}\n得分: 0.7", "prompt_tokens": 120,
              "completion_tokens": 20, "cached": False}
    shown = verdict_markdown(record, "gpt-4o")
    assert shown.startswith("### Score: 0.70\n") and REASON in shown and "120 + 20 tokens" in shown and "gpt-4o" in shown
    assert "from the cache" in verdict_markdown({**record, "cached": True}, "gpt-4o")
    failed = verdict_markdown({**record, "score": None, "reason": NO_SCORE, "raw": NO_SCORE}, "gpt-4o")
    assert failed.startswith("### No score") and NO_SCORE in failed and "never as 0" in failed
    assert "Score:" not in failed
    assert "(the judge gave no reason)" in verdict_markdown({**record, "reason": ""}, "j")


def test_fences_outlast_backticks_inside():
    assert fenced("x") == "```text\nx\n```"
    assert fenced("a ```` b") == "`````text\na ```` b\n`````"


def test_judge_options_come_from_the_page():
    base = LLMOptions(model="gpt-4o", base_url="https://example.com/v1", cache="off", concurrency=3)
    options = judge_options(base, " judge-2 ", "https://example.com/v1/ ")
    assert (options.model, options.base_url, options.cache, options.concurrency) == \
        ("judge-2", "https://example.com/v1", "off", 3)
    options = judge_options(base, "judge-2", "  ", api_key="sk-visitor")  # empty: OpenAI's, with the visitor's key
    assert (options.base_url, options.api_key_env) == ("https://api.openai.com/v1", "")


def test_judge_one_uses_the_typed_key_or_the_environment(items, prompts, stub, monkeypatch):
    item = items_of_class(items, "math")[0]
    options = LLMOptions(model="judge", base_url=stub.url, cache="off", api_key_env="BELLE_TEST_JUDGE_KEY")
    monkeypatch.setenv("BELLE_TEST_JUDGE_KEY", "sk-from-env")
    record = judge_one(item, "答案是 42。", prompts, options, KEY)
    assert (record["id"], record["score"], record["reason"]) == (item.id, 0.7, REASON)
    assert stub.requests[-1]["_headers"]["authorization"] == f"Bearer {KEY}"
    assert "答案是 42。" in stub.requests[-1]["messages"][-1]["content"]
    judge_one(item, "答案是 42。", prompts, options, None)
    assert stub.requests[-1]["_headers"]["authorization"] == "Bearer sk-from-env"
    assert judge_one(item, "NOSCORE", prompts, options)["score"] is None
    with pytest.raises(LLMError, match="model"):
        judge_one(item, "x", prompts, judge_options(options, "", stub.url))
    with pytest.raises(KeyError, match="no judge prompt for class 'math'"):
        judge_one(item, "x", {"code": "评分标准"}, options)
    judge_one(item, "答案是 42。", prompts, options, KEY, judge_format="belle-page")
    sent = stub.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": f"{prompts['math']} {item.turns[0]} 标准回答:{item.std_answer}"
                                                            "  模型回答：' 答案是 42。'。请针对模型回答给出得分，顺便给出理由："}]
    assert (sent["temperature"], sent["max_tokens"]) == (0.0, 3000)


def test_a_refused_typed_key_is_named_as_such(items, prompts):
    item = items_of_class(items, "math")[0]
    with serve_stub(Fault(401)) as refusing:
        options = LLMOptions(model="judge", base_url=refusing.url, cache="off", api_key_env="BELLE_TEST_JUDGE_KEY")
        with pytest.raises(LLMError) as e:
            judge_one(item, "42", prompts, options, KEY)
    assert llm_error_message(e.value, key_from_field=True) == "the judge endpoint refused the API key typed in the page (HTTP 401)"
    assert "$BELLE_TEST_JUDGE_KEY" in llm_error_message(e.value, key_from_field=False)
    assert KEY not in str(e.value)


def test_score_file_writes_the_run_and_its_report(items, prompts, stub, tmp_path):
    answers = write_answers(tmp_path / "answers.jsonl", items, ANSWERS)
    options = LLMOptions(model="judge", base_url=stub.url, cache="off")
    progress = []
    run = score_file(answers, prompts, options, tmp_path / "work", samples=2, api_key=KEY,
                     on_progress=lambda done, total: progress.append((done, total)))
    assert run.run_dir.parent == tmp_path / "work" and "answers" in run.run_dir.name
    assert progress[-1] == (5, 5)
    lines = (run.run_dir / "judgments.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10  # 5 answers x 2 samples
    assert [path.name for path in run.files] == ["report.json", "report.md", "report.png", "judgments.jsonl"]
    assert all(path.is_file() for path in run.files) and run.chart == run.run_dir / "report.png"
    assert "Score_w/o_others" in run.report and "| math | 0.700 [0.700, 0.700] (n=1), 1 unscored |" in run.report
    assert "5 judged, 0 failed, 2 sample(s) without a readable score" in run.status
    again = score_file(answers, prompts, options, tmp_path / "work")
    assert again.run_dir != run.run_dir  # every upload gets a fresh run folder


def test_score_file_rejects_bad_files_and_settings(items, prompts, stub, tmp_path):
    options = LLMOptions(model="judge", base_url=stub.url, cache="off")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "你好", "class": "open qa"}\n{"question": "x", "class": "math", "answer": 3}\n',
                   encoding="utf-8")
    with pytest.raises(DataError) as e:
        score_file(bad, prompts, options, tmp_path / "work")
    assert f"{bad}:1: answer: missing" in str(e.value) and f"{bad}:2: answer: must be a string (got int)" in str(e.value)
    answers = write_answers(tmp_path / "answers.jsonl", items, {"zh-math-01": "42"})
    with pytest.raises(UsageError, match="no judge prompt for class"):
        score_file(answers, {"code": "评分标准"}, options, tmp_path / "work")
    with pytest.raises(UsageError, match="samples must be between 1 and 10"):
        score_file(answers, prompts, options, tmp_path / "work", samples=0)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


class FakeEngine:
    """Replies "回答N" to the N-th turn, one character at a time, and records the histories."""

    context_length = 2048

    def __init__(self):
        self.histories, self.streams = [], []

    def chat(self, messages, params):
        self.histories.append([dict(m) for m in messages])
        self.streams.append(FakeStream(f"回答{len(self.histories)}"))
        return self.streams[-1]


def test_generation_answers_each_turn_after_the_earlier_replies(items):
    item = next(item for item in items if item.id == "zh-open_qa-07")
    engine = FakeEngine()
    steps = list(stream_answer(LocalBackend({"fake": engine}), "fake", item, params=None))
    assert steps[0] == ["回"] and steps[-1] == ["回答1", "回答2"]
    assert engine.histories == [
        [{"role": "user", "content": item.turns[0]}],
        [{"role": "user", "content": item.turns[0]}, {"role": "assistant", "content": "回答1"},
         {"role": "user", "content": item.turns[1]}],
    ]
    assert all(stream.cancelled for stream in engine.streams)


def test_bad_set_or_flags_are_usage_errors(tmp_path, capsys):
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"question": "你好"}\n', encoding="utf-8")
    argv = ["webui", "--judge-model", "judge", "--judge-cache", "off"]  # each call fails before the page starts
    assert eval_main(argv + ["--eval-set", str(bad)]) == 2
    assert f"{bad}:1: class: missing" in capsys.readouterr().err
    assert eval_main(argv + ["--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert eval_main(argv + ["--max-new-tokens", "0"]) == 2
    assert "max_new_tokens must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        eval_main(argv + ["--judge-format", "belle"])
    assert e.value.code == 2 and "invalid choice: 'belle'" in capsys.readouterr().err


# The real CLI, in headless Chromium.


@pytest.fixture(scope="module")
def web(tiny_model_dir, stub):
    """`belle eval webui` with the tiny model and the stub judge; its run folders, judge cache and
    Gradio's files under one temporary folder, so that a test can search everything it wrote."""
    root = Path(tempfile.mkdtemp(prefix="belle-webui-test-"))
    try:
        with start_cli("eval", "webui", "--judge-model", "judge", "--judge-base-url", stub.url,
                       "--judge-api-key-env", "BELLE_TEST_NO_SUCH_KEY", "--judge-cache", str(root / "cache.sqlite"),
                       "--model", str(tiny_model_dir), "--max-new-tokens", "8", "--workdir", str(root / "work"),
                       "--judge-format", "delimited",
                       env={"GRADIO_TEMP_DIR": str(root / "gradio")}) as server:
            yield SimpleNamespace(url=server.url, root=root, work=root / "work", log=server.log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def page(browser, web):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(web.url, wait_until="domcontentloaded")
    page.locator("#question-text textarea").wait_for()
    yield page
    page.close()


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.locator("ul[role=listbox] li", has_text=option).first.click()


def shown_question(page) -> str:
    return page.locator("#question-text textarea").input_value()


def settled_question(page, items, timeout_s: float = 30) -> str:
    """The id of the question the page shows, once the question box shows the one the dropdown
    names and the answer box is empty: every update a choice of class or question sent is in."""
    by_id = {item.id: item for item in items}
    deadline = time.monotonic() + timeout_s
    while True:
        item = by_id.get(page.locator("#question input").input_value().split(" · ")[0])
        if item and shown_question(page) == question_text(item) and not page.locator("#answer textarea").input_value():
            return item.id
        assert time.monotonic() < deadline, "the question did not settle"
        time.sleep(0.1)


def score_answer(page, answer: str, key: str = "") -> str:
    """Paste `answer`, type `key`, click Score; the verdict's text once it is there."""
    page.locator("#answer textarea").fill(answer)
    page.locator("#judge-key input").fill(key)
    page.locator("#score").click()
    verdict = page.locator("#verdict .md")  # the markdown alone, without the queue's status line
    # An earlier verdict stays in the page while this one is pending, hidden (its text reads ""): wait
    # for a heading that shows.
    page.wait_for_function("() => document.querySelector('#verdict .md h3')?.innerText.trim().length > 0")
    return verdict.inner_text()


def score_upload(page, path: Path, samples: int = 1, key: str = "") -> None:
    page.get_by_role("tab", name="Answers file").click()
    shown = page.locator("#answers-file", has_text=path.name)
    for attempt in range(3):  # a file set before the tab's component listens for it is dropped (seen under load)
        file_input = page.locator("#answers-file input[type=file]")
        if attempt == 0 or file_input.count():  # gone once the component holds the file, which it may show late
            file_input.set_input_files(str(path))
        try:
            shown.wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.locator("#samples input").fill(str(samples))
    page.locator("#judge-key input").fill(key)
    page.locator("#score-file").click()
    page.locator("#status :is(h3, p)").first.wait_for()


def save_screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


@pytest.mark.slow
def test_page_is_local_and_keeps_no_run_history(web):
    deadline = time.monotonic() + 10  # the page answers a moment before `launch` prints its address
    while "belle eval webui: " not in (log := web.log.read_text(encoding="utf-8")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"belle eval webui: {web.url}/; run folders go to {web.work}" in log and "gradio.live" not in log
    config = httpx.get(f"{web.url}/config").json()
    assert config["run_history"] is False  # it would keep every request's inputs, the key field's among them


@pytest.mark.slow
def test_browser_question_by_class_shuffle_and_score(page, stub, items):
    choose(page, "class", "math (7)")
    page.wait_for_function("() => document.querySelector('#question input').value.startsWith('zh-math-01')")
    assert settled_question(page, items) == "zh-math-01"
    page.locator("#shuffle").click()
    page.wait_for_function("() => !document.querySelector('#question input').value.startsWith('zh-math-01')")
    shuffled = settled_question(page, items)
    assert shuffled.startswith("zh-math-") and shuffled != "zh-math-01"
    reference = next(item.std_answer for item in items if item.id == shuffled)
    assert page.locator("#reference textarea").input_value() == reference

    verdict = score_answer(page, "答案是 42。", KEY)
    assert "Score: 0.70" in verdict and REASON in verdict
    assert stub.requests[-1]["_headers"]["authorization"] == f"Bearer {KEY}"
    turns = next(item.turns for item in items if item.id == shuffled)
    assert all(turn in stub.requests[-1]["messages"][-1]["content"] for turn in turns)
    save_screenshot(page, "webui_single.png")

    verdict = score_answer(page, "NOSCORE")
    assert "No score" in verdict and NO_SCORE in verdict and "Score: 0" not in verdict
    assert stub.requests[-1]["_headers"]["authorization"] == "Bearer EMPTY"  # no key typed, none in the env
    assert len(stub.requests[-1]["messages"]) == 2  # the page started with --judge-format delimited

    choose(page, "judge-format", "belle-page")
    assert "Score: 0.70" in score_answer(page, "答案是 43。")
    (message,) = stub.requests[-1]["messages"]
    assert message["role"] == "user" and message["content"].endswith("模型回答：' 答案是 43。'。请针对模型回答给出得分，顺便给出理由：")
    assert stub.requests[-1]["max_tokens"] == 3000


@pytest.mark.slow
def test_browser_generates_a_multi_turn_answer(page, items):
    choose(page, "class", "open qa (7)")
    page.wait_for_function("() => document.querySelector('#question input').value.startsWith('zh-open_qa-01')")
    choose(page, "question", "zh-open_qa-07")
    page.wait_for_function("() => document.querySelector('#question input').value.startsWith('zh-open_qa-07')")
    assert settled_question(page, items) == "zh-open_qa-07"
    assert "[Turn 2]" in shown_question(page)
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#earlier textarea')?.value.startsWith('[Turn 1] ')"
                           " && document.querySelector('#answer textarea').value.length > 0")
    generated = page.locator("#answer textarea").input_value()
    assert "Score: 0.70" in score_answer(page, generated + "（已修改）")  # a generated answer can be edited


@pytest.mark.slow
def test_browser_scores_an_answers_file(page, web, items, tmp_path):
    answers = write_answers(tmp_path / "my_answers.jsonl", items, ANSWERS)
    score_upload(page, answers, samples=2)
    report = page.locator("#report")
    report.locator("table").wait_for()
    text = report.inner_text()
    assert "Score_w/o_others" in text and "open qa" in text and "1 unscored" in text
    links = page.locator("#downloads a[download]")
    names = [links.nth(i).get_attribute("download") for i in range(links.count())]
    assert names == ["report.json", "report.md", "report.png", "judgments.jsonl"]
    href = page.locator("#downloads a[download='report.md']").get_attribute("href")
    assert "Score_w/o_others" in httpx.get(href if href.startswith("http") else web.url + href).text
    page.locator("#chart img").wait_for()
    save_screenshot(page, "webui_file.png")
    (run_dir,) = [d for d in web.work.iterdir() if "my_answers" in d.name]
    assert len((run_dir / "judgments.jsonl").read_text(encoding="utf-8").splitlines()) == 10


@pytest.mark.slow
def test_browser_bad_answers_file_is_a_message(page, tmp_path):
    bad = tmp_path / "bad_answers.jsonl"
    bad.write_text('{"question": "你好", "class": "open qa"}\n', encoding="utf-8")
    score_upload(page, bad)
    status = page.locator("#status").inner_text()
    assert "Error" in status and "bad_answers.jsonl:1: answer: missing" in status
    assert "Traceback" not in status


@pytest.mark.slow
def test_typed_key_reaches_the_judge_and_nothing_else(page, web, stub, items, tmp_path):
    before = len(stub.requests)
    assert "Score: 0.70" in score_answer(page, "叶绿素分解。", KEY)
    fresh = {item_id: answer + "（密钥测试）" for item_id, answer in ANSWERS.items()}  # none in the judge's cache
    score_upload(page, write_answers(tmp_path / "key_answers.jsonl", items, fresh), key=KEY)
    page.locator("#report table").wait_for()
    sent = [r["_headers"]["authorization"] for r in stub.requests[before:]]
    assert sent == [f"Bearer {KEY}"] * (1 + len(ANSWERS))

    written = [path for path in web.root.rglob("*") if path.is_file()] + [web.log]
    assert {"judgments.jsonl", "run.json", "report.json", "cache.sqlite"} <= {path.name for path in written}
    assert [path for path in written if KEY.encode() in path.read_bytes()] == []
    storage = page.evaluate("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    assert KEY not in storage
