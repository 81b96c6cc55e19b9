"""`belle chat --cli`: streaming replies, /system, /reset and /exit, driven through stdin."""

import io
import logging
import os
import re
import socket
import subprocess
import sys

import pytest

from belle.chat.cli import main as chat_main
from belle.testing.openai_stub import Fault, serve_stub
from tests.conftest import REPO

PASSWORD = "pw-CHAT-5ecret"


def chat_session(model_dir, lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "belle", "chat", "--cli", "--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "12"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"},
    )


def replies(stdout: str) -> list[str]:
    return re.findall(r"Assistant: (.*)", stdout)


@pytest.mark.slow
def test_terminal_chat_commands(tiny_model_dir):
    result = chat_session(tiny_model_dir, ["你好", "你好", "/reset", "你好", "/system 你是一位诗人。", "你好", "/oops", "/exit", "never read"])
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "(conversation reset)" in out and "(system prompt set; conversation reset)" in out
    assert "unknown command /oops" in out
    first, with_history, after_reset, with_system = replies(out)
    assert first == after_reset  # /reset forgot the first exchange; greedy decoding repeats itself
    assert with_history != first  # the second question saw the first exchange
    assert with_system != first
    assert out.count("User: ") == 8  # stopped at /exit: the last line was never read


@pytest.mark.slow
def test_end_of_input_quits(tiny_model_dir):
    result = chat_session(tiny_model_dir, [])
    assert result.returncode == 0 and "chatting with" in result.stdout


def test_needs_a_model_or_a_server(belle_main):
    result = belle_main("chat", "--cli")
    assert result.returncode == 2 and "--model" in result.stderr


@pytest.mark.slow
def test_through_a_server_the_model_is_picked_by_name(tiny_model_dir, start_cli):
    with start_cli("serve", "--model", f"a={tiny_model_dir}", "--model", f"b={tiny_model_dir}", ready="/health") as api:
        def session(*names: str) -> subprocess.CompletedProcess:
            flags = [arg for name in names for arg in ("--model", name)]
            return subprocess.run([sys.executable, "-m", "belle", "chat", "--cli", "--api-base", f"{api.url}/v1", *flags,
                                   "--max-new-tokens", "4"], input="你好\n", capture_output=True, text=True, timeout=300,
                                  cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"})

        assert "chatting with a" in session().stdout
        picked = session("b")
        assert picked.returncode == 0 and "chatting with b" in picked.stdout and len(replies(picked.stdout)) == 1
        unknown = session("c")
        assert unknown.returncode == 2 and "serves a, b, not c" in unknown.stderr


# In process, through `belle.chat.cli.main`, against the scripted stub as the server.


def chat_in_process(monkeypatch, capsys, api_base: str, lines: list[str], *flags: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `belle chat --cli --api-base API_BASE` reading `lines`."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    status = chat_main(["--cli", "--api-base", api_base, *flags])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_cut_or_garbled_stream_is_marked_and_the_chat_goes_on(monkeypatch, capsys):
    answers = [Fault(cut=True, body="半句话"), Fault(cut=True, body="另半句", length_header=False),
               Fault(malformed=True, body="{not json"), Fault(malformed=True, body="好\n<html>oops</html>"),
               Fault(400), "完整的回答"]
    with serve_stub(answers) as stub:
        status, out, err = chat_in_process(monkeypatch, capsys, stub.url, ["一", "二", "三", "四", "五", "六"])
    assert status == 0, err
    assert "Traceback" not in out + err and "JSONDecodeError" not in out + err
    assert "Assistant: 半句话\n[reply cut off: the connection closed before the end (" in out  # chunked: an incomplete body
    assert "Assistant: 另半句\n[reply cut off: the connection closed before the end]\n" in out  # the body ends at the close
    assert "Assistant: [reply cut off: the server sent a line that is not JSON: '{not json']\n" in out
    assert "Assistant: [reply cut off: the server sent a line that is not a server-sent event: '<html>oops</html>']\n" in out
    assert "Assistant: (the model server failed: HTTP 400: scripted fault)\n" in out
    assert "Assistant: 完整的回答\n" in out and out.count("reply cut off") == 4
    sent = [request["messages"] for request in stub.requests]
    assert sent[1][:2] == [{"role": "user", "content": "一"}, {"role": "assistant", "content": "半句话"}]  # what came is kept
    assert all("cut off" not in message["content"] for messages in sent for message in messages)


def test_a_password_in_the_api_base_is_never_shown_or_logged(monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with serve_stub("好的") as stub:
        with_password = stub.url.replace("http://", f"http://alice:{PASSWORD}@")
        status, out, err = chat_in_process(monkeypatch, capsys, with_password, ["你好"])
        assert status == 0 and "Assistant: 好的" in out
        unknown, _, unknown_err = chat_in_process(monkeypatch, capsys, with_password, [], "--model", "other")
        assert unknown == 2 and "http://***@127.0.0.1" in unknown_err and "serves stub-model, not other" in unknown_err
        _, query_out, query_err = chat_in_process(monkeypatch, capsys, f"{stub.url}?api-key={PASSWORD}", ["你好"])
        assert "api-key=***" in query_out + query_err
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused, _, refused_err = chat_in_process(monkeypatch, capsys, f"http://alice:{PASSWORD}@127.0.0.1:{port}/v1", [])
    assert refused == 2 and "cannot list the models of http://***@127.0.0.1" in refused_err
    assert len(refused_err.strip().splitlines()) == 1 and "Traceback" not in refused_err
    logged = caplog.text + " ".join(repr(r.args) + str(r.msg) for r in caplog.records)
    assert PASSWORD not in out + err + unknown_err + query_out + query_err + refused_err + logged
