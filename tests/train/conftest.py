"""Fixtures for the `belle train` tests: a quick run on the tiny model, and a model that must never load."""

import shutil

import pytest

from tests.train.helpers import tail, train_overrides


@pytest.fixture
def train(belle_cli, tiny_model_dir):
    """`train(out, *overrides, config=None)` runs `belle train` on the tiny model with the QUICK
    settings, fails the test with the run's output unless it exits 0, and returns the result."""

    def run(out, *overrides, config=None):
        options = ["--config", str(config)] if config else []
        result = belle_cli("train", *options, *train_overrides(tiny_model_dir, out, *overrides))
        assert result.returncode == 0, tail(result)
        return result

    return run


@pytest.fixture(scope="session")
def decoy_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's config and tokenizer with unreadable weights: any run that loads the model
    crashes, so a clean `error:` exit proves the problem was caught before loading."""
    decoy = tmp_path_factory.mktemp("decoy") / "model"
    shutil.copytree(tiny_model_dir, decoy)
    (decoy / "model.safetensors").write_bytes(b"not a safetensors file" * 64)
    return decoy
