"""Fixtures shared by the whole run: the tiny model and its tokenizer are built once."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="belle-test-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
BELLE_DATA = REPO.parent / "shared" / "belle-data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from belle.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from belle.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m belle ARGS` in a fresh process, as a user would; never raises."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "belle", *args], capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=600
    )


@pytest.fixture(scope="session")
def belle_cli():
    """`belle_cli("data", "convert", ...)` runs the CLI in a subprocess and returns the CompletedProcess."""
    return run_cli
