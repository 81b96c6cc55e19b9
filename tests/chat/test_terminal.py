"""`belle chat --cli`: streaming replies, /system, /reset and /exit, driven through stdin."""

import os
import re
import subprocess
import sys

from tests.conftest import REPO, run_cli


def chat_session(model_dir, lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "belle", "chat", "--cli", "--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "12"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"},
    )


def replies(stdout: str) -> list[str]:
    return re.findall(r"Assistant: (.*)", stdout)


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


def test_end_of_input_quits(tiny_model_dir):
    result = chat_session(tiny_model_dir, [])
    assert result.returncode == 0 and "chatting with" in result.stdout


def test_needs_a_model_or_a_server():
    result = run_cli("chat", "--cli")
    assert result.returncode == 2 and "--model" in result.stderr


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
