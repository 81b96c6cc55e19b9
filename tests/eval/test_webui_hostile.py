"""The scoring page and the eval verbs against a hostile visitor or hostile settings: a visitor's
judge URL with no key of their own (called as Gradio calls the page's functions, as one raw POST
to /gradio_api/queue/join, and through the /score API endpoint with gradio_client), files of the working folder fetched through /gradio_api/file=,
an oversized upload, and a base URL holding a password or an API key. Two capturing loopback
judges record every Authorization header they receive."""

import json
import uuid
from pathlib import Path

import httpx
import pytest

from belle.cli import UsageError
from belle.eval.answers import read_answers
from belle.eval.cli import main as eval_main
from belle.eval.judging import default_judge_prompts_path, judge_messages, read_judge_prompts
from belle.eval.scoring import score_answers
from belle.eval.webui import build_app, judge_options, serve, upload_limit_bytes
from belle.llm import LLMFatalError, LLMOptions
from belle.testing.openai_stub import serve_stub
from tests.helpers import free_port

OPERATOR_KEY = "sk-operator-Hq7Zr2Lk9Vx4"  # the key the page was started with, in its environment
VISITOR_KEY = "sk-visitor-Mw3Tn8Pd5Ys1"
KEY_ENV = "BELLE_TEST_OPERATOR_KEY"
REPLY = "理由：可以。\n得分: 0.6"


@pytest.fixture(scope="module")
def operator():
    """The judge the operator configured."""
    with serve_stub(REPLY) as stub:
        yield stub


@pytest.fixture(scope="module")
def visitor():
    """Another endpoint, named by a visitor: it must never see the operator's key."""
    with serve_stub(REPLY) as stub:
        yield stub


@pytest.fixture(scope="module")
def operator_env():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, OPERATOR_KEY)
        yield


def page_options(operator) -> LLMOptions:
    return LLMOptions(model="judge", base_url=operator.url, api_key_env=KEY_ENV, cache="off")


def keys_seen(stub) -> list[str]:
    return [request["_headers"].get("authorization", "") for request in stub.requests]


def write_answers(path: Path, items, n: int = 2) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for item in items[:n]:
            out.write(json.dumps({"id": item.id, "class": item.klass, "question": list(item.turns),
                                  "std_answer": item.std_answer, "answer": "答案。", "model": "m"},
                                 ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def app(items, prompts, operator, operator_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    return build_app(items, prompts, page_options(operator), workdir=workdir), workdir


def page_function(app, name: str):
    """The function the page registered under `name`, as Gradio calls it for a request."""
    (fn,) = [block_fn.fn for block_fn in app.fns.values() if getattr(block_fn.fn, "__name__", "") == name]
    return fn


def fn_index(app, name: str) -> int:
    (index,) = [i for i, block_fn in app.fns.items() if getattr(block_fn.fn, "__name__", "") == name]
    return index


# The rule, in the function that makes the client's options.


def test_the_operators_key_goes_to_the_operators_url_only():
    base = LLMOptions(model="judge", base_url="https://user:pw-Secret1@judge.example/v1?api-key=qs-Secret2")
    shown = "https://***@judge.example/v1?api-key=***"  # what the page shows in its Base URL box
    for typed in (base.base_url, base.base_url + "/", f" {shown} "):
        assert judge_options(base, "judge", typed).base_url == base.base_url
    for typed in ("http://127.0.0.1:9/v1", "", "https://judge.example/v1", "https://judge.example.evil/v1"):
        with pytest.raises(UsageError, match="needs your own API key") as refused:
            judge_options(base, "judge", typed, "  ")
        assert "Secret" not in str(refused.value)
    own = judge_options(base, "judge", "http://127.0.0.1:9/v1/", VISITOR_KEY)
    assert (own.base_url, own.api_key_env) == ("http://127.0.0.1:9/v1", "")  # no variable to fall back on
    default = LLMOptions(model="judge")  # started without a URL: OpenAI's is the operator's
    assert judge_options(default, "judge", "").base_url is None
    assert judge_options(default, "judge", "https://api.openai.com/v1/").base_url is None


def test_page_functions_refuse_a_visitor_url_without_a_key(app, items, operator, visitor, tmp_path):
    app, _ = app
    score, score_upload = page_function(app, "score"), page_function(app, "score_upload")
    item = items[0].id
    before = len(operator.requests)
    for key in ("", "   "):
        shown = score(item, "答案。", "judge", visitor.url, key)
        assert shown.startswith("### Error") and "needs your own API key" in shown
        status, report, chart, files = score_upload(str(write_answers(tmp_path / "a.jsonl", items)), 1, "judge",
                                                    visitor.url, key, progress=lambda *a, **k: None)
        assert "needs your own API key" in status and (report, chart, files) == ("", None, None)
    assert visitor.requests == [] and len(operator.requests) == before

    assert "Score: 0.60" in score(item, "答案。", "judge", visitor.url, VISITOR_KEY)
    assert "Score: 0.60" in score(item, "答案二。", "judge", operator.url + "/", "")
    assert keys_seen(visitor) == [f"Bearer {VISITOR_KEY}"]
    assert keys_seen(operator)[before:] == [f"Bearer {OPERATOR_KEY}"]


def test_upload_limit_is_checked(capsys):
    assert upload_limit_bytes(50) == 50 * 2**20
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="--max-upload-mb must be above 0"):
            upload_limit_bytes(bad)
    argv = ["webui", "--judge-model", "judge", "--judge-cache", "off", "--max-upload-mb", "0"]
    assert eval_main(argv) == 2  # refused before the page starts
    assert "--max-upload-mb must be above 0, not 0" in capsys.readouterr().err


# Over HTTP, as an attacker would call the page.


@pytest.fixture(scope="module")
def served(app):
    app, workdir = app
    url, _ = serve(app, port=free_port(), max_upload_mb=0.05)
    try:
        yield app, url.rstrip("/"), workdir
    finally:
        app.close()


def call(url: str, fn: int, data: list, timeout_s: float = 60) -> list:
    """One raw POST to /gradio_api/queue/join, then the event's output from /gradio_api/queue/data."""
    session = uuid.uuid4().hex
    joined = httpx.post(f"{url}/gradio_api/queue/join",
                        json={"data": data, "fn_index": fn, "session_hash": session, "event_data": None})
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session},
                      timeout=timeout_s) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message["success"], message
                    return message["output"]["data"]
    raise AssertionError("the event never completed")


@pytest.mark.slow
def test_raw_post_with_a_visitor_url_sends_the_operators_key_nowhere(served, items, operator, visitor):
    app, url, _ = served
    before_operator, before_visitor = len(operator.requests), len(visitor.requests)
    (verdict,) = call(url, fn_index(app, "score"), [items[0].id, "答案三。", "judge", visitor.url, "", "delimited"])
    assert "needs your own API key" in verdict
    assert len(visitor.requests) == before_visitor and len(operator.requests) == before_operator
    (verdict,) = call(url, fn_index(app, "score"), [items[0].id, "答案三。", "judge", "", "", "delimited"])
    assert "needs your own API key" in verdict  # empty means OpenAI's, not the operator's URL
    (verdict,) = call(url, fn_index(app, "score"), [items[0].id, "答案三。", "judge", operator.url, "", "delimited"])
    assert "Score: 0.60" in verdict and keys_seen(operator)[-1] == f"Bearer {OPERATOR_KEY}"
    assert OPERATOR_KEY not in "".join(keys_seen(visitor))


@pytest.mark.slow
def test_score_endpoint_with_gradio_client(served, items, operator, visitor):
    from gradio_client import Client

    _, url, _ = served
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/score"] and api["unnamed_endpoints"] == {}  # the page's own stay private
    item = items[0]
    before, before_visitor = len(operator.requests), len(visitor.requests)
    assert client.predict(item.id, "答案。", api_name="/score") == (0.6, "可以。", REPLY)
    assert client.predict(item.turns[0], "答案。", judge_format="belle-page", api_name="/score") == (0.6, "可以。", REPLY)
    delimited, page = operator.requests[before:]
    assert len(delimited["messages"]) == 2 and delimited["max_tokens"] == 1024
    assert page["messages"] == judge_messages(item, "答案。", read_judge_prompts(default_judge_prompts_path()), "belle-page")
    assert (page["temperature"], page["max_tokens"]) == (0.0, 3000)
    assert keys_seen(operator)[before:] == [f"Bearer {OPERATOR_KEY}"] * 2

    for args, message in [
        (("no such question", "答案。"), "no question with id or text 'no such question'"),
        ((item.id, "  "), "the answer is empty"),
        ((item.id, "答案。", "judge", "", "", "belle"), "--judge-format must be one of delimited, belle-page"),
        ((item.id, "答案。", "judge", visitor.url), "needs your own API key"),
        ((item.id, "答案。", "judge", visitor.url, "   "), "needs your own API key"),
    ]:
        with pytest.raises(Exception, match=message) as refused:
            client.predict(*args, api_name="/score")
        assert OPERATOR_KEY not in str(refused.value)
    assert len(operator.requests) == before + 2 and len(visitor.requests) == before_visitor

    assert client.predict(item.id, "答案。", "judge", visitor.url, VISITOR_KEY, api_name="/score")[0] == 0.6
    assert keys_seen(visitor)[before_visitor:] == [f"Bearer {VISITOR_KEY}"]  # the visitor's own key only
    assert OPERATOR_KEY not in "".join(keys_seen(visitor))


def upload(url: str, path: Path) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{url}/gradio_api/upload", files={"files": (path.name, f)})


@pytest.mark.slow
def test_files_only_from_the_session_and_uploads_capped(served, items, operator, tmp_path):
    app, url, workdir = served
    other = workdir / "20260101-000000-someone-else" / "judgments.jsonl"
    other.parent.mkdir()
    other.write_text('{"secret": "another run"}\n', encoding="utf-8")
    for path in (other, workdir / "cache.sqlite", Path("/etc/passwd")):
        assert httpx.get(f"{url}/gradio_api/file={path}").status_code in (403, 404), path

    uploaded = upload(url, write_answers(tmp_path / "mine.jsonl", items))
    assert uploaded.status_code == 200, uploaded.text
    (server_path,) = uploaded.json()
    answers = {"path": server_path, "orig_name": "mine.jsonl", "meta": {"_type": "gradio.FileData"}}
    status, report, chart, files = call(url, fn_index(app, "score_upload"), [answers, 1, "judge", operator.url, "", "delimited"])
    assert "2 judged" in (status["value"] if isinstance(status, dict) else status)
    (run_dir,) = [d for d in workdir.iterdir() if "mine" in d.name]
    names = [f["orig_name"] for f in files]
    assert names == ["report.json", "report.md", "report.png", "judgments.jsonl"]
    mine = httpx.get(files[1]["url"])
    assert mine.status_code == 200 and "Score_w/o_others" in mine.text  # the session's own download
    for path in (run_dir / "report.md", run_dir / "run.json"):  # the run folder itself is not served
        assert httpx.get(f"{url}/gradio_api/file={path}").status_code in (403, 404), path

    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * int(0.06 * 2**20))
    too_big = upload(url, big)
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text


# Secrets in a base URL.


def test_a_secret_in_the_judge_url_is_in_no_file_and_no_output(items, tmp_path, capsys):
    answers = write_answers(tmp_path / "answers.jsonl", items, n=3)
    with serve_stub(REPLY) as judge:
        secret_url = judge.url.replace("http://", "http://judge-user:pw-Zx81Secret@")
        argv = ["score", "--answers", str(answers), "--output", str(tmp_path / "run"), "--judge-model", "judge",
                "--judge-base-url", secret_url, "--judge-cache", str(tmp_path / "cache.sqlite")]
        assert eval_main(argv) == 0
        assert eval_main(argv) == 0  # the same settings resume: the pinned URL compares redacted
        assert eval_main(["report", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert "pw-Zx81Secret" not in out.out + out.err and "judge-user" not in out.out + out.err
    info = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    assert info["judge_base_url"] == judge.url.replace("http://", "http://***@")
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"run.json", "judgments.jsonl", "report.json", "report.md", "report.png"}
    assert [p for p in written if b"Zx81Secret" in p.read_bytes()] == []


def test_query_secrets_are_redacted_and_an_old_run_json_is_cleaned(items, tmp_path):
    answered = read_answers(write_answers(tmp_path / "answers.jsonl", items, n=1))
    run = tmp_path / "run"
    run.mkdir()
    with serve_stub(REPLY) as judge:
        url = judge.url + "?api-key=qk-Secret77&api-version=2024-06-01"
        old = {"judge": "judge", "judge_base_url": url, "prompts_sha1": "", "temperature": 0.0, "max_tokens": 1024}
        (run / "run.json").write_text(json.dumps(old), encoding="utf-8")  # written whole by an older belle
        options = LLMOptions(model="judge", base_url=url, cache="off")
        with pytest.raises(LLMFatalError, match="404"):  # the stub has no such route; run.json is pinned first
            score_answers(answered, read_judge_prompts(default_judge_prompts_path()), options, run, show_progress=False)
        info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        assert info["judge_base_url"] == judge.url + "?api-key=***&api-version=2024-06-01"
        other = LLMOptions(model="judge", base_url=judge.url.replace("127.0.0.1", "localhost"), cache="off")
        with pytest.raises(UsageError, match=r"judge_base_url .*api-key=\*\*\*.* -> 'http://localhost") as changed:
            score_answers(answered, read_judge_prompts(default_judge_prompts_path()), other, run)
    assert "Secret77" not in str(changed.value)
    assert [p for p in run.rglob("*") if b"Secret77" in p.read_bytes()] == []
