"""belle.config: YAML + `key=value` overrides into typed dataclasses, every problem reported at once."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import argparse
import logging

import pytest
import yaml

from belle.cli import UsageError
from belle.config import Alias, ConfigError, config_keys, config_to_dict, load_config, parse_config_args, save_config


@dataclass
class ModelConfig:
    path: str = "x"
    dtype: Literal["auto", "float32"] = "auto"


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    enabled: bool = True
    target_modules: list[str] = field(default_factory=lambda: ["q_proj"])

    def problems(self) -> list[str]:
        found = []
        if self.r <= 0:
            found.append(f"r must be positive, got {self.r}; set lora.r=8 or higher")
        if not 0 <= self.dropout < 1:
            found.append(f"dropout must be in [0, 1), got {self.dropout}")
        return found


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    output_dir: Path = Path("out")
    max_length: int | None = None
    seed: int = 0

    def problems(self) -> list[str]:
        return ["seed must not be negative"] if self.seed < 0 else []


@dataclass
class Required:
    name: str


def write_yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(*args, cls=Config, aliases=None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(cls, *args, aliases=aliases)
    return e.value.problems


# ---------------------------------------------------------------------------------------------
# Loading and overriding


def test_defaults_without_file_or_overrides():
    assert load_config(Config) == Config()


def test_yaml_file_is_loaded_into_nested_dataclasses(tmp_path):
    path = write_yaml(tmp_path, "model:\n  path: models/中文\n  dtype: float32\nlora:\n  r: 16\noutput_dir: runs/a\nmax_length: 512\n")
    config = load_config(Config, path)
    assert config.model == ModelConfig(path="models/中文", dtype="float32")
    assert config.lora.r == 16 and config.lora.alpha == 16.0
    assert config.output_dir == Path("runs/a")
    assert config.max_length == 512


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(Config, write_yaml(tmp_path, "")) == Config()


def test_dotted_overrides_apply_on_top_of_yaml(tmp_path):
    path = write_yaml(tmp_path, "lora:\n  r: 16\n  alpha: 32\nmodel:\n  path: a\n")
    config = load_config(Config, path, ["lora.r=4", "model.path=b"])
    assert config.lora.r == 4
    assert config.lora.alpha == 32.0  # untouched keys of the same section stay as the YAML set them
    assert config.model.path == "b"


def test_overrides_apply_in_order_so_the_last_wins():
    assert load_config(Config, None, ["lora.r=2", "lora.r=3"]).lora.r == 3


def test_override_replaces_a_section_that_yaml_left_empty(tmp_path):
    path = write_yaml(tmp_path, "lora:\n")
    assert load_config(Config, path, ["lora.r=5"]).lora == LoraConfig(r=5)


# ---------------------------------------------------------------------------------------------
# Type conversion


def test_int_override_is_an_int():
    value = load_config(Config, None, ["lora.r=32"]).lora.r
    assert value == 32 and type(value) is int


def test_float_field_accepts_an_int():
    value = load_config(Config, None, ["lora.alpha=32"]).lora.alpha
    assert value == 32.0 and type(value) is float


def test_int_field_accepts_a_whole_float_but_not_a_fraction():
    assert load_config(Config, None, ["lora.r=4.0"]).lora.r == 4
    assert problems_of(None, ["lora.r=4.5"]) == ["lora.r: expected a whole number, got 4.5"]


def test_bool_field_takes_yaml_booleans():
    assert load_config(Config, None, ["lora.enabled=false"]).lora.enabled is False
    assert load_config(Config, None, ["lora.enabled=true"]).lora.enabled is True


def test_bool_field_rejects_a_number():
    assert problems_of(None, ["lora.enabled=1"]) == ["lora.enabled: expected true or false, got 1"]


def test_number_field_rejects_a_bool_and_a_string():
    problems = problems_of(None, ["lora.r=true", "lora.alpha=big"])
    assert problems == ["lora.r: expected a number, got True", "lora.alpha: expected a number, got 'big'"]


def test_list_field_from_yaml_list(tmp_path):
    path = write_yaml(tmp_path, "lora:\n  target_modules: [q_proj, v_proj]\n")
    assert load_config(Config, path).lora.target_modules == ["q_proj", "v_proj"]


def test_list_field_from_override_list_and_single_string():
    assert load_config(Config, None, ["lora.target_modules=[k_proj, o_proj]"]).lora.target_modules == ["k_proj", "o_proj"]
    assert load_config(Config, None, ["lora.target_modules=q_proj"]).lora.target_modules == ["q_proj"]


def test_list_field_rejects_a_number():
    assert problems_of(None, ["lora.target_modules=3"]) == ["lora.target_modules: expected a list, got 3"]


def test_optional_field_takes_null_or_a_value(tmp_path):
    assert load_config(Config, None, ["max_length=1024"]).max_length == 1024
    assert load_config(Config, write_yaml(tmp_path, "max_length: 7\n"), ["max_length=null"]).max_length is None
    assert load_config(Config, write_yaml(tmp_path, "max_length: ~\n")).max_length is None


def test_optional_field_still_checks_the_type_of_a_value():
    assert problems_of(None, ["max_length=long"]) == ["max_length: expected a number, got 'long'"]


def test_path_field_becomes_a_path():
    value = load_config(Config, None, ["output_dir=runs/第一次"]).output_dir
    assert value == Path("runs/第一次") and isinstance(value, Path)


def test_literal_field_accepts_a_choice_and_rejects_others():
    assert load_config(Config, None, ["model.dtype=float32"]).model.dtype == "float32"
    assert problems_of(None, ["model.dtype=float16"]) == ["model.dtype: 'float16' is not one of 'auto', 'float32'"]


def test_string_override_keeps_its_text_verbatim():
    # `model.path=1.10` is a revision or folder name, not the float 1.1; `no` is not False.
    assert load_config(Config, None, ["model.path=1.10"]).model.path == "1.10"
    assert load_config(Config, None, ["model.path=no"]).model.path == "no"


def test_empty_override_value_is_an_empty_string():
    assert load_config(Config, None, ["model.path="]).model.path == ""


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_nested_key_names_the_nearest_valid_key():
    problems = problems_of(None, ["lora.rr=3"])
    assert len(problems) == 1
    assert "unknown key 'lora.rr'" in problems[0]
    assert "did you mean 'lora.r'" in problems[0]


def test_unknown_top_level_key_in_yaml_names_the_nearest_valid_key(tmp_path):
    (problem,) = problems_of(write_yaml(tmp_path, "output_dri: runs/a\n"))
    assert "unknown key 'output_dri'" in problem and "did you mean 'output_dir'" in problem


def test_unknown_key_far_from_any_says_so_without_listing_every_key():
    (problem,) = problems_of(None, ["qqqqqqqqqq=1"])
    assert problem == "unknown key 'qqqqqqqqqq'; no valid key is close to it (--help lists them)"


def test_unknown_key_is_matched_against_the_full_dotted_keys():
    # A scalar is never pointed at a section: `lora_rank` is lora.r, not 'lora'.
    assert problems_of(None, ["lora_rank=8"]) == ["unknown key 'lora_rank'; did you mean 'lora.r'?"]
    assert problems_of(None, ["r=8"]) == ["unknown key 'r'; did you mean 'lora.r'?"]
    assert problems_of(None, ["model.dropuot=0.1"]) == ["unknown key 'model.dropuot'; did you mean 'lora.dropout'?"]


def test_unknown_section_names_the_nearest_section_or_each_of_its_keys(tmp_path):
    assert problems_of(write_yaml(tmp_path, "lroa:\n  r: 3\n")) == ["unknown key 'lroa'; did you mean 'lora'?"]
    assert problems_of(None, ["adapter.dropuot=0.1"]) == ["unknown key 'adapter.dropuot'; did you mean 'lora.dropout'?"]


def test_all_problems_are_reported_together():
    problems = problems_of(None, ["lora.rr=3", "lora.alpha=abc", "model.dtype=fp8", "not-an-override", "max_length=x"])
    assert len(problems) == 5
    assert any("did you mean 'lora.r'" in p for p in problems)
    assert any(p.startswith("lora.alpha:") for p in problems)
    assert any(p.startswith("model.dtype:") for p in problems)
    assert any("'not-an-override' is not of the form key=value" in p for p in problems)
    assert any(p.startswith("max_length:") for p in problems)


def test_config_error_message_lists_every_problem_with_the_source(tmp_path):
    path = write_yaml(tmp_path, "lora:\n  rr: 3\nmodel:\n  dtype: fp8\n")
    with pytest.raises(ConfigError) as e:
        load_config(Config, path)
    message = str(e.value)
    assert message.startswith(f"{path}: 2 problem(s):")
    assert all(f"  - {p}" in message for p in e.value.problems)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_bad_yaml_is_a_config_error(tmp_path):
    (problem,) = problems_of(write_yaml(tmp_path, "lora: [r: 3\n"))
    assert problem.startswith("cannot read YAML")


def test_yaml_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("output_dir: 运行".encode("gbk"))
    with pytest.raises(ConfigError, match=r"not UTF-8 \(byte 0xd4 at offset 12\)"):
        load_config(Config, path)


def test_missing_yaml_file_is_a_config_error(tmp_path):
    (problem,) = problems_of(tmp_path / "missing.yaml")
    assert problem.startswith("cannot read YAML")


def test_top_level_that_is_not_a_mapping_is_a_config_error(tmp_path):
    assert problems_of(write_yaml(tmp_path, "- a\n- b\n")) == ["the top level must be a mapping of keys to values"]


def test_section_that_is_not_a_mapping_is_reported(tmp_path):
    assert problems_of(write_yaml(tmp_path, "lora: 8\n")) == ["lora: expected a mapping, got 8"]


def test_override_without_equals_sign_is_reported():
    assert problems_of(None, ["lora.r"]) == ["override 'lora.r' is not of the form key=value"]


def test_override_with_invalid_yaml_value_is_a_config_error():
    # An unclosed list must come back as a ConfigError naming the override, not a raw yaml exception.
    problems = problems_of(None, ["lora.target_modules=[q_proj, v_proj"])
    assert len(problems) == 1 and "lora.target_modules" in problems[0]


def test_missing_required_key_is_reported():
    assert problems_of(cls=Required) == ["missing required key 'name'"]


def test_problems_methods_of_every_section_are_collected_with_their_prefix():
    problems = problems_of(None, ["lora.r=0", "lora.dropout=1.5", "seed=-1"])
    assert problems == [
        "seed must not be negative",
        "lora.r must be positive, got 0; set lora.r=8 or higher",
        "lora.dropout must be in [0, 1), got 1.5",
    ]


def test_problems_methods_run_only_on_well_typed_values():
    # `r` is a string here: problems() would compare str <= int; the type error is reported instead.
    assert problems_of(None, ["lora.r=abc"]) == ["lora.r: expected a number, got 'abc'"]


# ---------------------------------------------------------------------------------------------
# Aliases: other tools' names for a key


def _on_off(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return "float32" if value else None


ALIASES = {"rank": Alias("lora.r"), "fp32": Alias("model.dtype", _on_off, switch=True), "out": Alias("output_dir")}


def test_an_alias_sets_its_key_from_the_file_and_the_command_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="belle.config"):
        path = write_yaml(tmp_path, "rank: 4\nout: runs/a\n")
        config = load_config(Config, path, ["rank=6", "fp32=true"], aliases=ALIASES)
    assert config.lora.r == 6 and config.output_dir == Path("runs/a") and config.model.dtype == "float32"
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["rank is belle's lora.r; using it", "out is belle's output_dir; using it",
                     "fp32=true is belle's model.dtype=float32; using it"]  # once each, though rank came twice


def test_a_converting_alias_may_set_nothing_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="belle.config"):
        assert load_config(Config, None, ["fp32=false"], aliases=ALIASES).model.dtype == "auto"
    assert [r.getMessage() for r in caplog.records] == ["fp32=false leaves belle's model.dtype as it is; ignoring it"]


def test_a_value_a_converting_alias_cannot_take_is_a_problem():
    assert problems_of(None, ["fp32=maybe"], aliases=ALIASES) == ["fp32: expected true or false, got 'maybe'"]


def test_an_alias_and_its_key_both_in_the_file_is_a_problem(tmp_path):
    path = write_yaml(tmp_path, "rank: 4\nlora:\n  r: 8\n")
    assert problems_of(path, aliases=ALIASES) == ["rank and lora.r both set lora.r; keep one"]


def test_an_override_of_an_alias_wins_over_the_file_key(tmp_path):
    assert load_config(Config, write_yaml(tmp_path, "lora:\n  r: 8\n"), ["rank=2"], aliases=ALIASES).lora.r == 2


def test_an_alias_string_value_keeps_its_text():
    assert load_config(Config, None, ["out=1.10"], aliases=ALIASES).output_dir == Path("1.10")


def test_a_misspelt_alias_names_its_key():
    assert problems_of(None, ["rnak=3"], aliases=ALIASES) == ["unknown key 'rnak'; did you mean 'lora.r'?"]


# ---------------------------------------------------------------------------------------------
# The command line of a config job


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job", allow_abbrev=False)
    parser.add_argument("--config", type=Path)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--local_rank", "--local-rank", type=int)
    return parser


def parsed(*argv):
    args = parse_config_args(cli_parser(), argv, Config, ALIASES)
    return args.config, args.overrides


def test_first_positional_yaml_or_existing_file_is_the_config(tmp_path):
    assert parsed("run.yaml", "lora.r=3") == (Path("run.yaml"), ["lora.r=3"])
    assert parsed("run.yml") == (Path("run.yml"), [])
    existing = tmp_path / "config"
    existing.write_text("seed: 1\n")
    assert parsed(str(existing), "seed=2") == (existing, ["seed=2"])
    assert parsed("--config", "a.yaml", "seed=2") == (Path("a.yaml"), ["seed=2"])
    assert parsed("data.path=x.yaml") == (None, ["data.path=x.yaml"])  # an override, though it ends in .yaml


def test_a_config_given_twice_or_late_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^two configs: a.yaml and --config b.yaml; give one$"):
        parsed("a.yaml", "--config", "b.yaml")
    with pytest.raises(UsageError, match=r"^two configs: a.yaml and b.yaml; give one$"):
        parsed("a.yaml", "b.yaml")
    with pytest.raises(UsageError, match=r"^b.yaml: the config file comes first: job CONFIG.yaml key=value"):
        parsed("seed=1", "b.yaml")


def test_dash_dash_keys_are_overrides_in_order():
    assert parsed("a.yaml", "--lora.r", "8", "seed=1", "--lora.alpha=4", "--seed", "-3", "--output-dir", "o") == (
        Path("a.yaml"), ["lora.r=8", "seed=1", "lora.alpha=4", "seed=-3", "output_dir=o"])


def test_a_bare_flag_of_a_bool_key_or_switch_alias_is_true():
    assert parsed("--lora.enabled", "--fp32") == (None, ["lora.enabled=true", "fp32=true"])
    assert parsed("--lora.enabled", "false", "seed=1") == (None, ["lora.enabled=false", "seed=1"])
    assert parsed("--lora.enabled", "a.yaml") == (Path("a.yaml"), ["lora.enabled=true"])


def test_a_dash_dash_key_without_a_value_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^--seed needs a value: --seed VALUE, or seed=VALUE$"):
        parsed("--seed")
    with pytest.raises(UsageError, match="--lora.r needs a value"):
        parsed("--lora.r", "--seed", "1")


def test_the_parsers_own_options_stay_its_own():
    args = parse_config_args(cli_parser(), ["--local_rank=1", "a.yaml", "--local-rank", "2", "seed=1"], Config, ALIASES)
    assert (args.local_rank, args.config, args.overrides) == (2, Path("a.yaml"), ["seed=1"])


# ---------------------------------------------------------------------------------------------
# Saving


def test_config_keys_lists_every_dotted_key():
    assert config_keys(Config) == [
        "model.path", "model.dtype",
        "lora.r", "lora.alpha", "lora.dropout", "lora.enabled", "lora.target_modules",
        "output_dir", "max_length", "seed",
    ]


def test_config_to_dict_is_plain_yaml_values():
    config = load_config(Config, None, ["output_dir=runs/a", "lora.target_modules=[q_proj, v_proj]"])
    data = config_to_dict(config)
    assert data["output_dir"] == "runs/a"
    assert data["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(
        Config, None,
        ["model.path=模型/七", "model.dtype=float32", "lora.r=4", "lora.alpha=8", "lora.enabled=false",
         "lora.target_modules=[q_proj, v_proj]", "output_dir=runs/b", "max_length=256"],
    )
    path = tmp_path / "resolved.yaml"
    save_config(config, path)
    assert "模型/七" in path.read_text(encoding="utf-8")  # written as real characters
    assert load_config(Config, path) == config
