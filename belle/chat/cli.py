"""`belle chat` (also `python -m belle.chat`): the web chat, or the terminal chat with `--cli`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

from belle.chat.backends import BackendError, ChatBackend, LocalBackend, RemoteBackend, chat_options
from belle.chat.engines import load_engines
from belle.cli import UsageError, run_command
from belle.generation import EngineOptions, LoadOptions, SamplingOptions


def chat(
    *,
    model: list[str] | None = None,
    api_base: str | None = None,
    api_key_env: str = "BELLE_API_KEY",
    cli: bool = False,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    system: str = "",
    sampling: SamplingOptions = SamplingOptions(),
    engine: EngineOptions = EngineOptions(),
    load: LoadOptions = LoadOptions(),
) -> int:
    """Chat with a model in the browser (Gradio) or, with --cli, in the terminal.

    Args:
        model: a model folder, LoRA adapter folder, GPTQ folder or .gguf file, as DIR or NAME=DIR; several give a model picker.
            With --api-base: the names of the server's models to chat with; default: all of them.
        api_base: chat through an OpenAI-compatible server instead (e.g. http://127.0.0.1:8000/v1 of `belle serve`).
        api_key_env: the environment variable holding that server's API key.
        cli: chat in the terminal instead of the browser.
        host: address the web chat binds; 0.0.0.0 exposes it to the network.
        port: port the web chat binds.
        share: also open a public gradio.live link (off unless asked).
        system: the system prompt to start with.
    """
    params = sampling.params()
    if not model and not api_base:
        raise UsageError("give --model DIR (one or more), or --api-base URL")
    if api_base:
        try:
            remote = RemoteBackend(chat_options(api_base, api_key_env))
        except BackendError as e:
            raise UsageError(f"{e} (check --api-base and --api-key-env)") from None
        unknown = [name for name in model or [] if name not in remote.names]
        if not remote.names or unknown:
            remote.close()
            raise UsageError(f"{remote.shown_url} serves {', '.join(remote.names) or 'no models'}"
                             + (f", not {', '.join(unknown)}" if unknown else ""))
        remote.names = model or remote.names
        backend: ChatBackend = remote
    else:
        backend = LocalBackend(load_engines(model or [], **asdict(engine), **asdict(load)))
    try:
        if cli:
            from belle.chat.terminal import run_terminal_chat

            run_terminal_chat(backend, backend.names[0], params, system)
        else:
            from belle.chat.web import launch

            launch(backend, params, system=system, host=host, port=port, share=share)
    finally:
        backend.close()
    return 0


COMMAND = chat


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.chat") -> int:
    return run_command(COMMAND, argv, prog)
