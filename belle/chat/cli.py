"""`belle chat` (also `python -m belle.chat`): the web chat, or the terminal chat with `--cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from belle.chat.backends import BackendError, LocalBackend, RemoteBackend
from belle.chat.engines import load_engines
from belle.cli import UsageError, run_command
from belle.generation import GenerationParams

DEFAULTS = GenerationParams()


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
    temperature: float = DEFAULTS.temperature,
    top_p: float = DEFAULTS.top_p,
    top_k: int = DEFAULTS.top_k,
    repetition_penalty: float = DEFAULTS.repetition_penalty,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    template: str | None = None,
    base: Path | None = None,
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
    device: str | None = None,
    context_length: int | None = None,
    trust_remote_code: bool = False,
) -> int:
    """Chat with a model in the browser (Gradio) or, with --cli, in the terminal.

    Args:
        model: a model folder, LoRA adapter folder or GPTQ folder, as DIR or NAME=DIR; several give a model picker.
            With --api-base: the names of the server's models to chat with; default: all of them.
        api_base: chat through an OpenAI-compatible server instead (e.g. http://127.0.0.1:8000/v1 of `belle serve`).
        api_key_env: the environment variable holding that server's API key.
        cli: chat in the terminal instead of the browser.
        host: address the web chat binds; 0.0.0.0 exposes it to the network.
        port: port the web chat binds.
        share: also open a public gradio.live link (off unless asked).
        system: the system prompt to start with.
        temperature: sampling temperature; 0 decodes greedily.
        top_p: nucleus sampling mass.
        top_k: sample among the k most likely tokens; 0 turns it off.
        repetition_penalty: above 1 discourages repetition.
        max_new_tokens: the longest reply, in tokens.
        template: prompt template; default: the one in the model's belle.json, else its chat_template.
        base: base model folder for a LoRA adapter whose recorded base path is elsewhere.
        dtype: weights dtype; auto is bfloat16 on GPUs that support it, float16 on others, float32 on CPU.
        device: cpu, cuda, cuda:N or auto; default: cuda if present.
        context_length: tokens of prompt plus reply; default: the model's max_position_embeddings.
        trust_remote_code: run Python code shipped in the model folder.
    """
    try:
        params = GenerationParams(temperature, top_p, top_k, repetition_penalty, max_new_tokens)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not model and not api_base:
        raise UsageError("give --model DIR (one or more), or --api-base URL")
    if api_base:
        try:
            backend: LocalBackend | RemoteBackend = RemoteBackend(api_base, api_key_env)
        except BackendError as e:
            raise UsageError(f"{e} (check --api-base and --api-key-env)") from None
        unknown = [name for name in model or [] if name not in backend.names]
        if not backend.names or unknown:
            raise UsageError(f"{backend.shown_url} serves {', '.join(backend.names) or 'no models'}"
                             + (f", not {', '.join(unknown)}" if unknown else ""))
        backend.names = model or backend.names
    else:
        backend = LocalBackend(load_engines(model or [], base=base, template=template, dtype=dtype, device=device,
                                            context_length=context_length, trust_remote_code=trust_remote_code))
    if cli:
        from belle.chat.terminal import run_terminal_chat

        run_terminal_chat(backend, backend.names[0], params, system)
        return 0
    from belle.chat.web import launch

    launch(backend, params, system=system, host=host, port=port, share=share)
    return 0


COMMAND = chat


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.chat") -> int:
    return run_command(COMMAND, argv, prog)
