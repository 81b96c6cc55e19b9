"""`belle chat` in the browser: the real CLI in a subprocess, driven through `gradio_client` and
headless Chromium (Playwright): streaming, settings, Stop, retry, undo, clear, the model picker,
errors shown as messages, and a remote `belle serve` backend."""

import inspect
import re
import shutil
import time
from pathlib import Path

import gradio as gr
import psutil
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from belle.chat.backends import BackendError, RemoteBackend, chat_options
from belle.chat.web import build_app, to_messages
from belle.testing.openai_stub import Fault, serve_stub
from belle.generation import GenerationParams, PromptTooLong

QUESTION = "你好，请介绍一下北京的历史和美食。"
SETTINGS = ["system", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"]
GREEDY = {"system": "你是一个乐于助人的助手。", "temperature": 0}
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def web(tiny_model_dir, start_cli):
    with start_cli("chat", "--model", str(tiny_model_dir), "--max-new-tokens", "16") as server:
        yield server


@pytest.fixture(scope="module")
def web_two_models(tiny_model_dir, start_cli):
    with start_cli("chat", "--model", f"a={tiny_model_dir}", "--model", f"b={tiny_model_dir}", "--max-new-tokens", "8") as server:
        yield server


@pytest.fixture(scope="module")
def web_remote(tiny_model_dir, start_cli):
    with start_cli("serve", "--model", f"tiny={tiny_model_dir}", ready="/health") as api:
        with start_cli("chat", "--api-base", f"{api.url}/v1", "--max-new-tokens", "8") as server:
            yield server


def client(server) -> Client:
    return Client(server.url, verbose=False)


def chat_parameters(server) -> dict[str, dict]:
    api = client(server).view_api(print_info=False, return_format="dict")
    return {p["parameter_name"]: p for p in api["named_endpoints"]["/chat"]["parameters"]}


def cpu_seconds(pid: int, window_s: float = 1.0) -> float:
    """CPU time the process used over the next `window_s` seconds."""
    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(window_s)
    return sum(process.cpu_times()[:2]) - before


# In process: how the page's chat function talks to a backend.


class FakeBackend:
    context_length = None  # a server's: the page cannot see its limits

    def __init__(self, names=("tiny",), deltas=("你", "好", "！"), error=None):
        self.names = list(names)
        self.deltas, self.error = deltas, error
        self.calls, self.streams = [], []

    def stream(self, model, messages, params):
        self.calls.append((model, messages, params))
        stream = self._stream()
        self.streams.append(stream)
        return stream

    def _stream(self):
        if self.error is not None:
            raise self.error
        yield from self.deltas


def chat_fn(backend, params=GenerationParams(), system=""):
    app = build_app(backend, params, system)
    return app, app.fn


def test_history_becomes_messages():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "你好"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "你好！"}]},
        {"role": "user", "content": "没有回答的问题"},  # an error or a Stop left it unanswered
        {"role": "user", "content": "第二个问题"},
        {"role": "assistant", "content": "回答"},
    ]
    assert to_messages("第三个问题", history, "系统") == [
        {"role": "system", "content": "系统"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "第二个问题"},
        {"role": "assistant", "content": "回答"},
        {"role": "user", "content": "第三个问题"},
    ]
    assert to_messages("hi", [{"role": "user", "content": "unanswered"}], "") == [{"role": "user", "content": "hi"}]


def test_settings_reach_the_backend_and_the_reply_streams():
    backend = FakeBackend()
    app, chat = chat_fn(backend, GenerationParams(stop=("</s>",)), system="默认")
    labels = [component.label for component in app.additional_inputs]
    assert labels == ["System prompt", "Temperature", "Top p", "Top k", "Repetition penalty", "Max new tokens"]
    assert [component.value for component in app.additional_inputs] == ["默认", 0.1, 0.75, 40, 1.2, 512]
    assert app.title == "belle chat"
    assert list(chat("问题", [], "系统", 0.0, 0.5, 10.0, 1.1, 32.0)) == ["你", "你好", "你好！"]
    model, messages, params = backend.calls[0]
    assert model == "tiny" and messages[0] == {"role": "system", "content": "系统"}
    assert params == GenerationParams(0.0, 0.5, 10, 1.1, 32, stop=("</s>",))


def test_stop_closes_the_backend_stream():
    backend = FakeBackend(deltas=iter(["a"] * 1000))
    _, chat = chat_fn(backend)
    reply = chat("问题", [], "", 0.1, 0.75, 40, 1.2, 512)
    assert next(reply) == "a"
    reply.close()  # what Gradio does on Stop
    assert inspect.getgeneratorstate(backend.streams[0]) == inspect.GEN_CLOSED


@pytest.mark.parametrize("error, shown", [
    (PromptTooLong(3000, 2048, 512), "cannot reply: the prompt (3000 tokens) plus the reply (512 tokens reserved)"),
    (BackendError("Connection error (All connection attempts failed)"),
     "the model server failed: Connection error (All connection attempts failed)"),
], ids=["prompt-too-long", "server-error"])
def test_backend_errors_are_messages(error, shown):
    _, chat = chat_fn(FakeBackend(error=error))
    with pytest.raises(gr.Error, match=re.escape(shown)):
        list(chat("问题", [], "", 0.1, 0.75, 40, 1.2, 512))


def test_a_cut_or_garbled_stream_from_a_server_ends_in_a_note():
    with serve_stub([Fault(cut=True, body="半句话"), Fault(malformed=True, body="{not json"), "完整"]) as stub:
        _, chat = chat_fn(RemoteBackend(chat_options(stub.url)))
        cut = list(chat("一", [], "", 0.1, 0.75, 40, 1.2, 512))
        garbled = list(chat("二", [], "", 0.1, 0.75, 40, 1.2, 512))
        history = [{"role": "user", "content": "一"}, {"role": "assistant", "content": cut[-1]},
                   {"role": "user", "content": "二"}, {"role": "assistant", "content": garbled[-1]}]
        assert list(chat("三", history, "", 0.1, 0.75, 40, 1.2, 512))[-1] == "完整"
    assert cut[:3] == ["半", "半句", "半句话"]
    assert cut[-1].startswith("半句话\n\n[reply cut off: the connection closed before the end")
    assert garbled == ["[reply cut off: the server sent a line that is not JSON: '{not json']"]
    assert stub.requests[2]["messages"] == [{"role": "user", "content": "一"}, {"role": "assistant", "content": "半句话"},
                                            {"role": "user", "content": "二"}, {"role": "assistant", "content": ""},
                                            {"role": "user", "content": "三"}]


def test_bad_settings_are_an_error_message():
    _, chat = chat_fn(FakeBackend())
    with pytest.raises(gr.Error, match="top_p"):
        list(chat("问题", [], "", 0.1, 0.0, 40, 1.2, 512))


def test_a_model_picker_only_with_several_models():
    one, _ = chat_fn(FakeBackend(names=["tiny"]))
    two, chat = chat_fn(FakeBackend(names=["a", "b"]))
    assert "Model" not in [component.label for component in one.additional_inputs]
    picker = two.additional_inputs[-1]
    assert picker.label == "Model" and [choice[1] for choice in picker.choices] == ["a", "b"] and picker.value == "a"


# The real CLI, through gradio_client.


@pytest.mark.slow
def test_serves_locally_only(web):
    deadline = time.monotonic() + 10  # the page answers a moment before `launch` prints its address
    while f"belle chat: {web.url}/" not in (log := web.log.read_text(encoding="utf-8")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"belle chat: {web.url}/" in log and "gradio.live" not in log


@pytest.mark.slow
def test_chat_endpoint_replies_in_chinese(web):
    parameters = chat_parameters(web)
    assert list(parameters) == ["message", *SETTINGS]
    defaults = GenerationParams()
    assert [parameters[name]["parameter_default"] for name in SETTINGS] == [
        "", defaults.temperature, defaults.top_p, defaults.top_k, defaults.repetition_penalty, 16]
    reply = client(web).predict(QUESTION, api_name="/chat")
    assert isinstance(reply, str) and reply.strip()


@pytest.mark.slow
def test_greedy_replies_repeat(web):
    chat = client(web)
    first = chat.predict(QUESTION, **GREEDY, api_name="/chat")
    chat.reset_session()  # a new conversation: the session keeps the history
    assert first and chat.predict(QUESTION, **GREEDY, api_name="/chat") == first


@pytest.mark.slow
def test_prompt_too_long_is_an_error_message(web):
    chat = client(web)
    with pytest.raises(AppError, match="exceed the model's 2048-token context"):
        chat.predict(QUESTION, max_new_tokens=2048, api_name="/chat")
    assert chat.predict(QUESTION, api_name="/chat")  # the page still works


@pytest.mark.slow
def test_stop_ends_generation(web):
    """Cancelling a reply of up to 2000 tokens (greedy: over 1500 tokens before EOS) ends its generation in the server."""
    job = client(web).submit(QUESTION, temperature=0, max_new_tokens=2000, api_name="/chat")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 3 and not job.done()
    job.cancel()
    assert any(cpu_seconds(web.pid) < 0.3 for _ in range(10)), "the server kept generating after Stop"


@pytest.mark.slow
def test_model_picker(web_two_models):
    parameters = chat_parameters(web_two_models)
    assert list(parameters) == ["message", *SETTINGS, "model"]
    assert parameters["model"]["component"] == "Dropdown" and parameters["model"]["parameter_default"] == "a"
    chat = client(web_two_models)
    replies = {}
    for model in ("a", "b"):
        chat.reset_session()
        replies[model] = chat.predict(QUESTION, **GREEDY, model=model, api_name="/chat")
    assert replies["a"] and replies["a"] == replies["b"]  # the same weights under two names
    with pytest.raises(AppError):
        chat.predict(QUESTION, model="c", api_name="/chat")


@pytest.mark.slow
def test_remote_backend(web_remote):
    assert chat_parameters(web_remote)["max_new_tokens"]["parameter_default"] == 8
    chat = client(web_remote)
    reply = chat.predict(QUESTION, **GREEDY, api_name="/chat")
    assert isinstance(reply, str) and reply.strip() and "reply cut off" not in reply  # the stream ended with [DONE]
    with pytest.raises(AppError, match="the model server failed: HTTP 400: "):
        chat.predict(QUESTION, max_new_tokens=4096, api_name="/chat")


# The real CLI, in headless Chromium.


@pytest.fixture
def page(browser, web):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(web.url, wait_until="domcontentloaded")
    yield page
    page.close()


def message_box(page):
    """The chat's input (its placeholder goes after a retry: a Gradio quirk); the system prompt's box comes after it."""
    return page.locator("textarea[data-testid=textbox]").first


def send(page, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")


def wait_until_idle(page) -> None:
    """Wait for the reply to finish: the message box is editable again and Stop is gone."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('textarea[data-testid=textbox]').disabled"
                           " && !document.querySelector('[data-testid=stop-button]')")


def counts(page) -> tuple[int, int]:
    return page.locator(".message.user").count(), page.locator(".message.bot").count()


def set_setting(page, label: str, value: str) -> None:
    """Type `value` into a setting's number box, opening Settings first; typing while the accordion
    is still rendering can be lost, hence the retries."""
    field = page.get_by_label(f"number input for {label}")
    if not field.is_visible():
        page.locator(".label-wrap", has_text="Settings").click()
    slider = page.get_by_label(f"range slider for {label}")
    for _ in range(10):
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(200)
        if slider.input_value() == value:
            return
    raise AssertionError(f"{label} stayed at {slider.input_value()}, not {value}")


@pytest.mark.slow
def test_browser_conversation(page, tmp_path):
    set_setting(page, "Temperature", "1")
    send(page, QUESTION)
    page.locator(".message.bot").first.wait_for()
    wait_until_idle(page)
    assert counts(page) == (1, 1)
    assert page.locator(".message.user").first.inner_text().strip() == QUESTION
    first = page.locator(".message.bot").first.inner_text()
    assert first.strip()

    page.get_by_role("button", name="Retry").click()
    wait_until_idle(page)
    assert counts(page) == (1, 1)
    assert page.locator(".message.bot").first.inner_text() != first  # sampled anew at temperature 1

    send(page, "第二个问题：上海呢？")
    page.locator(".message.bot").nth(1).wait_for()
    wait_until_idle(page)
    assert counts(page) == (2, 2)
    screenshot = tmp_path / "web_chat.png"
    page.screenshot(path=screenshot, full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "web_chat.png")

    page.get_by_role("button", name="Undo").click()
    page.wait_for_function("() => document.querySelectorAll('.message.user').length == 1")
    assert counts(page) == (1, 1)
    assert message_box(page).input_value() == "第二个问题：上海呢？"

    page.get_by_role("button", name="Clear").click()
    page.wait_for_function("() => document.querySelectorAll('.message').length == 0")
    assert counts(page) == (0, 0)


@pytest.mark.slow
def test_browser_stop(page, web):
    set_setting(page, "Temperature", "0")
    set_setting(page, "Max new tokens", "2000")
    send(page, QUESTION)
    page.wait_for_function("() => document.querySelector('.message.bot')?.innerText.length > 20")
    page.locator("[data-testid=stop-button]").click(force=True)  # it pulses, so it is never "stable"
    wait_until_idle(page)
    stopped = page.locator(".message.bot").first.inner_text()
    assert any(cpu_seconds(web.pid) < 0.3 for _ in range(10)), "the server kept generating after Stop"
    assert page.locator(".message.bot").first.inner_text() == stopped
