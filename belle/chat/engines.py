"""Loading the models a chat or server offers: `--model [NAME=]DIR`, once or several times."""

from __future__ import annotations

from pathlib import Path

from belle.cli import UsageError
from belle.generation import ChatEngine, load_engine


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR` (named after the folder) -> (name, folder). A spec that is an existing
    folder (or GGUF file) is that path, `=` in it or not (`runs/lr=1e-4/final`)."""
    if spec and ("=" not in spec or Path(spec).exists()):
        return Path(spec).resolve().name, Path(spec)
    name, _, folder = spec.partition("=")
    if not name or not folder:
        raise UsageError(f"--model {spec!r}: expected DIR or NAME=DIR")
    return name, Path(folder)


def load_engines(
    specs: list[str],
    *,
    base: Path | None = None,
    template: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    context_length: int | None = None,
    trust_remote_code: bool = False,
    batching: bool = True,
    max_running: int = 16,
    kv_cache_tokens: int | None = None,
) -> dict[str, ChatEngine]:
    """Load every model named by `specs`, in order; each stays in memory (call `close()` on each
    at exit). `base` applies to LoRA adapter folders whose recorded base path does not hold the
    base model; `batching`, `max_running` and `kv_cache_tokens` are `load_engine`'s, which refuses
    `base`, a GPU `device` and a `dtype` for a GGUF file (exit status 2 here)."""
    if not specs:
        raise UsageError("name at least one model with --model DIR")
    folders = dict(parse_model_spec(spec) for spec in specs)
    if len(folders) < len(specs):
        raise UsageError("two --model entries have the same name; name them with NAME=DIR")
    if max_running < 1 or (kv_cache_tokens is not None and kv_cache_tokens < 1):
        raise UsageError("--max-running and --kv-cache-tokens must be at least 1")
    engines = {}
    for name, folder in folders.items():
        try:
            engines[name] = load_engine(folder, base=base, template=template, name=name, dtype=dtype, device=device,
                                        context_length=context_length, trust_remote_code=trust_remote_code,
                                        batching=batching, max_running=max_running, kv_cache_tokens=kv_cache_tokens)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
    return engines
