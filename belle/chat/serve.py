"""`belle serve` (also `python -m belle.chat.serve`): the OpenAI-compatible API server."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Sequence

from belle.chat.engines import load_engines
from belle.cli import UsageError, run_command
from belle.generation import EngineOptions, LoadOptions

logger = logging.getLogger(__name__)
API_KEY_ENV = "BELLE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    *,
    model: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_concurrent: int = 32,
    max_queue: int = 32,
    max_input_tokens: int | None = None,
    max_tokens: int | None = None,
    max_request_bytes: int = 4 * 1024 * 1024,
    cors_origin: list[str] | None = None,
    engine: EngineOptions = EngineOptions(),
    load: LoadOptions = LoadOptions(),
) -> int:
    """Serve models through an OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /health.

    Args:
        model: a model folder, LoRA adapter folder, GPTQ folder or .gguf file, as DIR or NAME=DIR; repeat for several.
        host: address to bind; 0.0.0.0 exposes the server to the network.
        port: port to bind.
        api_key: require `Authorization: Bearer KEY`; default: the BELLE_API_KEY variable, else no key.
        max_concurrent: replies admitted at once (the engine decodes up to --max-running of them together); a
            request takes one slot per choice (prompts x n) and is refused with 400 if it has more choices than this.
        max_queue: requests waiting for slots; more are refused with 429.
        max_input_tokens: longest prompt accepted, in tokens; default: the context less one.
        max_tokens: largest max_tokens a request may ask for; default: no limit but the context.
        max_request_bytes: largest request body, in bytes (4 MiB); a larger one is refused with 413 before it is read.
        cors_origin: let web pages from this origin (`https://app.example.com`, or `*`) call the API from a
            browser; repeat for several; default: none.
    """
    import uvicorn

    from belle.chat.server import ServerLimits, create_app

    if max_concurrent < 1 or max_queue < 0:
        raise UsageError("--max-concurrent must be at least 1 and --max-queue at least 0")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, not {max_tokens}")
    if max_request_bytes < 1:
        raise UsageError(f"--max-request-bytes must be at least 1, not {max_request_bytes}")
    bad_origin = next((o for o in cors_origin or [] if o != "*" and not o.startswith(("http://", "https://"))), None)
    if bad_origin is not None:
        raise UsageError(f"--cors-origin must be * or an origin such as https://app.example.com, not {bad_origin!r}")
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    engines = load_engines(model, **asdict(engine), **asdict(load))
    limits = ServerLimits(max_concurrent, max_queue, max_input_tokens, max_tokens, max_request_bytes)
    app = create_app(engines, limits, api_key, cors_origins=cors_origin or ())
    if host not in LOOPBACK:
        logger.warning("binding %s: the server is reachable from the network%s", host, "" if api_key else " and needs no API key")
    logger.info("serving %s at http://%s:%d/v1 (API key %s)", ", ".join(engines), host, port, "required" if api_key else "off")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        for loaded in engines.values():
            loaded.close()
    return 0


COMMAND = serve


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.chat.serve") -> int:
    return run_command(COMMAND, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
