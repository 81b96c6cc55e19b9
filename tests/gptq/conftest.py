"""Fixtures of the gptq tests: the tiny model, trained so that quantization error is meaningful."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")


@pytest.fixture(scope="session")
def trained_tiny_dir(tmp_path_factory) -> Path:
    """The tiny model (hidden 128, 2 layers) trained on the first 90% of the bundled corpus (about
    15 s on 2 CPU cores); `belle.modeling.tiny_heldout_text()` is the rest. It knows its training
    text by heart (perplexity about 3) but not the held-out tail (about 5,000), and it was trained
    on 128-token windows: score it with `seqlen` <= 128. Read-only: copy it to change it."""
    from belle.modeling import build_tiny_model, train_tiny_model

    return train_tiny_model(build_tiny_model(tmp_path_factory.mktemp("trained_tiny") / "model"))
