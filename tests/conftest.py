"""Fixtures shared by the whole run: the tiny model and its tokenizer are built once."""

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run_module

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="belle-test-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
BELLE_DATA = REPO.parent / "shared" / "belle-data"
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections stall on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from belle.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from belle.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def trained_tiny_dir(tmp_path_factory) -> Path:
    """The tiny model (hidden 128, 2 layers) trained on the first 90% of the bundled corpus (about
    15 s on 2 CPU cores); `belle.models.tiny.tiny_heldout_text()` is the rest. It knows its training
    text by heart (perplexity about 3) but not the held-out tail (about 5,000), and it was trained
    on 128-token windows: score it with `seqlen` <= 128. Read-only: copy it to change it."""
    from belle.models.tiny import build_tiny_model
    from belle.testing.tiny_training import train_tiny_model

    return train_tiny_model(build_tiny_model(tmp_path_factory.mktemp("trained_tiny") / "model"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m belle ARGS` in a fresh process, as a user would; never raises."""
    return run_module("belle", *args, cwd=cwd)


@pytest.fixture(autouse=True, scope="module")
def close_batchers_after_the_module():
    """Engines a module loads keep their batcher's threads and KV caches until closed: close the
    ones opened during the module (an engine still works closed, on the thread path)."""
    from belle.batching import open_batchers

    before = set(map(id, open_batchers()))
    yield
    for batcher in open_batchers():
        if id(batcher) not in before:
            batcher.close()


@pytest.fixture(scope="session")
def belle_cli():
    """`belle_cli("data", "convert", ...)` runs the CLI in a subprocess and returns the CompletedProcess."""
    return run_cli


@pytest.fixture
def belle_main(capsys):
    """`belle_main("data", "convert", ...)` runs the CLI in this process, as `belle_cli` does in a
    subprocess, and returns a CompletedProcess with its exit status (argparse's exits included) and
    captured output: for usage errors, which need no fresh process."""
    from belle.cli import main

    def run(*args: object) -> subprocess.CompletedProcess:
        argv = [str(arg) for arg in args]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["belle", *argv], code, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    """The tiny model loaded for generation, on the CPU."""
    from belle.generation import load_engine

    return load_engine(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_gptq_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model quantized to 4 bits by GPTQModel on the CPU (about 30 s), with its belle.json."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig

    from belle.models.tiny import tiny_corpus_lines

    out = tmp_path_factory.mktemp("tiny_gptq") / "model"
    with contextlib.chdir(out.parent):  # GPTQModel writes its layer logs into ./logs
        model = GPTQModel.load(str(tiny_model_dir), QuantizeConfig(bits=4, group_size=128), device="cpu")
        model.quantize(tiny_corpus_lines()[:32], batch_size=4)
        model.save(str(out))
    shutil.copy(tiny_model_dir / "belle.json", out / "belle.json")
    return out


@pytest.fixture(scope="session")
def arch_model(tmp_path_factory, tiny_model_dir):
    """`arch_model("qwen2")`: the folder of a tiny random model of that family, built once per
    session (the shared tiny LLaMA for "llama"); `arch_model("llama", hidden_size=256)` or
    `arch_model("llama", tokenizer_kind="sentencepiece")` for other `build_tiny_model` settings.
    Read-only: copy it to change it."""
    import inspect

    from belle.models.tiny import build_tiny_model

    defaults = {name: p.default for name, p in inspect.signature(build_tiny_model).parameters.items()}
    built = {("llama",): tiny_model_dir}

    def get(arch: str, **settings) -> Path:
        key = (arch, *sorted((k, v) for k, v in settings.items() if v != defaults.get(k)))
        if key not in built:
            built[key] = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}") / "model", arch=arch, **settings)
        return built[key]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, arch_model):
    """`exported("qwen2", "f32")`: the `ExportReport` of that family's tiny model (`arch_model`,
    with the same settings) exported to GGUF in that type, once per session."""
    from belle.export import export_gguf

    done = {}

    def get(arch: str, type: str = "f32", **settings):
        model = arch_model(arch, **settings)
        if (model, type) not in done:
            out = tmp_path_factory.mktemp(f"gguf_{arch}_{type}") / f"{arch}-{type}.gguf"
            done[model, type] = export_gguf(model, out, type=type)
        return done[model, type]

    return get


@pytest.fixture(scope="session")
def tiny_gguf_f32(exported) -> Path:
    """The tiny model exported to a float32 GGUF file (`belle export gguf --type f32`, a few seconds)."""
    return exported("llama", "f32").out


@pytest.fixture(scope="session")
def tiny_gguf_q4_0(exported) -> Path:
    """The tiny model exported to a q4_0 GGUF file (gguf-py's quantizer, a few seconds)."""
    return exported("llama", "q4_0").out


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), driven by playwright; one per test module, since sync
    playwright keeps an event loop running in the main thread while it is open, and
    `asyncio.run` in any later test would fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
