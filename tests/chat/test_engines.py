"""`--model [NAME=]DIR`: how a spec names its model, and the errors met before any model loads."""

from pathlib import Path

import pytest

import belle.chat.engines as engines
from belle.chat.engines import load_engines, parse_model_spec
from belle.cli import UsageError


def test_a_name_and_a_folder():
    assert parse_model_spec("tiny=runs/a b/model") == ("tiny", Path("runs/a b/model"))


def test_a_bare_folder_is_named_after_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_model_spec("models/belle-7b") == ("belle-7b", Path("models/belle-7b"))
    assert parse_model_spec(".")[0] == tmp_path.name


@pytest.mark.parametrize("spec", ["=models/a", "tiny=", "="])
def test_an_empty_name_or_folder_is_a_usage_error(spec):
    with pytest.raises(UsageError, match=f"^--model {spec!r}: expected DIR or NAME=DIR$"):
        parse_model_spec(spec)


def test_no_model_is_a_usage_error():
    with pytest.raises(UsageError, match="name at least one model with --model DIR"):
        load_engines([])


@pytest.mark.parametrize("specs", [["a=x", "a=y"], ["one/model", "two/model"], ["m=x", "other/m"]])
def test_two_models_with_one_name_are_refused_before_loading(specs, monkeypatch):
    monkeypatch.setattr(engines, "load_engine", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(UsageError, match="two --model entries have the same name; name them with NAME=DIR"):
        load_engines(specs)


def test_a_folder_that_is_not_a_model_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=f"^{tmp_path}: not a model folder \\(no config.json\\)"):
        load_engines([f"tiny={tmp_path}"])


def test_a_value_error_from_loading_is_a_usage_error(monkeypatch):
    def refuse(folder, **kwargs):
        raise ValueError(f"{folder}: unknown template")

    monkeypatch.setattr(engines, "load_engine", refuse)
    with pytest.raises(UsageError, match="^x: unknown template$"):
        load_engines(["x"])


def test_every_model_loads_in_order_under_its_name_with_the_options(monkeypatch):
    calls = []

    def load(folder, **kwargs):
        calls.append((folder, kwargs))
        return f"engine of {folder}"

    monkeypatch.setattr(engines, "load_engine", load)
    loaded = load_engines(["b=/m/two", "/m/one"], base=Path("/base"), template="belle", dtype="bf16", context_length=64)
    assert loaded == {"b": "engine of /m/two", "one": "engine of /m/one"}
    assert list(loaded) == ["b", "one"]
    assert [(str(folder), kwargs["name"]) for folder, kwargs in calls] == [("/m/two", "b"), ("/m/one", "one")]
    assert calls[0][1] == {"base": Path("/base"), "template": "belle", "name": "b", "dtype": "bf16", "device": None,
                           "context_length": 64, "trust_remote_code": False, "batching": True, "max_running": 16,
                           "kv_cache_tokens": None}


def test_an_existing_folder_with_an_equals_sign_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "lr=1e-4" / "final").mkdir(parents=True)
    assert parse_model_spec("runs/lr=1e-4/final") == ("final", Path("runs/lr=1e-4/final"))
    assert parse_model_spec("best=runs/lr=1e-4/final") == ("best", Path("runs/lr=1e-4/final"))
