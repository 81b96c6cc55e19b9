"""Fixtures of the GGUF export tests: tiny models of each architecture and their exports, each
built once per session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def arch_model(tmp_path_factory, tiny_model_dir):
    """`arch_model("qwen2")`: the folder of a tiny random model of that family (the shared tiny
    LLaMA for "llama"), built once; `arch_model("llama", hidden_size=256)` for other sizes."""
    from belle.models.tiny import build_tiny_model

    built = {("llama",): tiny_model_dir}

    def get(arch: str, **sizes: int) -> Path:
        key = (arch, *sorted(sizes.items()))
        if key not in built:
            built[key] = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}") / "model", arch=arch, **sizes)
        return built[key]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, arch_model):
    """`exported("qwen2", "f32")`: that tiny model exported to GGUF in that type, once per session."""
    from belle.export import export_gguf

    done = {}

    def get(arch: str, type: str = "f32", **sizes: int):
        key = (arch, type, *sorted(sizes.items()))
        if key not in done:
            out = tmp_path_factory.mktemp(f"gguf_{arch}_{type}") / f"{arch}-{type}.gguf"
            done[key] = export_gguf(arch_model(arch, **sizes), out, type=type)
        return done[key]

    return get
