"""`belle chat --cli`: chat in the terminal, the reply streamed as it is generated.

Commands: `/reset` forgets the conversation, `/system TEXT` sets the system prompt (and resets),
`/exit` (or end of input) quits. Ctrl-C stops the reply being generated; a second Ctrl-C quits.
A reply the server cut off keeps what came and ends in a `[reply cut off: why]` line; a server
error is shown as one line, and the chat goes on.
"""

from __future__ import annotations

import sys
from typing import TextIO

from belle.chat.backends import BackendError, ChatBackend, ReplyCut, cut_note
from belle.generation import GenerationParams, PromptTooLong

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def run_terminal_chat(backend: ChatBackend, model: str, params: GenerationParams, system: str = "",
                      stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Chat until /exit or the end of `stdin` (default: sys.stdin at the call, as for `stdout`)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    history: list[dict[str, str]] = []
    print(f"chatting with {model}; {HELP}", file=stdout, flush=True)
    while True:
        print("\nUser: ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            return
        if not line or line.strip() == "/exit":
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = []
            print("(conversation reset)", file=stdout, flush=True)
            continue
        if text == "/system" or text.startswith("/system "):
            system, history = text[len("/system"):].strip(), []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation reset)", file=stdout, flush=True)
            continue
        if text.startswith("/"):
            print(f"(unknown command {text.split()[0]}; {HELP})", file=stdout, flush=True)
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + history + [{"role": "user", "content": text}]
        print("Assistant: ", end="", file=stdout, flush=True)
        reply = []
        stream = backend.stream(model, messages, params)
        try:
            for delta in stream:
                reply.append(delta)
                print(delta, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            stream.close()
            print(" (stopped)", end="", file=stdout, flush=True)
        except ReplyCut as e:
            print(("\n" if reply else "") + cut_note(e), end="", file=stdout, flush=True)
        except PromptTooLong as e:
            print(f"(cannot reply: {e})", file=stdout, flush=True)
            continue
        except BackendError as e:
            print(f"(the model server failed: {e})", file=stdout, flush=True)
            continue
        print(file=stdout, flush=True)
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(reply)}]
