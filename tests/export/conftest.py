"""Fixtures of the GGUF export tests (the tiny models and their exports, `arch_model` and
`exported`, are session fixtures of tests/conftest.py, shared with the other GGUF tests)."""

from pathlib import Path

import pytest

N_CTX = 128


@pytest.fixture(scope="session")
def llama():
    """`llama(path)`: the GGUF file `path` loaded by llama.cpp as belle loads it (`belle.llamacpp`'s
    context: weight repacking off where it could crash), with an `N_CTX`-token context and 2
    threads; each file loaded once per session, freed at its end."""
    from belle.llamacpp import _Context, _import_llama_cpp

    loaded: dict[Path, _Context] = {}

    def get(path: Path) -> _Context:
        if path not in loaded:
            loaded[path] = _Context(_import_llama_cpp(), path, N_CTX, 2)
        return loaded[path]

    yield get
    for context in loaded.values():
        context.close()
