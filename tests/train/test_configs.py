"""The configs shipped in train/configs/ are valid as they stand."""

import json

import yaml

from belle.config import ConfigError, load_config
from belle.train.config import TrainConfig
from tests.train.helpers import REPO

CONFIGS = REPO / "train" / "configs"


def is_accelerate_config(path):
    return "compute_environment" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def test_every_shipped_yaml_loads_as_a_train_config():
    """Each YAML train config loads without a problem (its model and data paths need not exist), and
    any DeepSpeed config it names is shipped too."""
    paths = [p for p in sorted(CONFIGS.glob("*.yaml")) if not is_accelerate_config(p)]
    assert len(paths) >= 3, f"too few train configs in {CONFIGS}: {paths}"
    problems = []
    for path in paths:
        try:
            config = load_config(TrainConfig, path)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if config.training.deepspeed and not (REPO / config.training.deepspeed).is_file():
            problems.append(f"{path.name}: training.deepspeed {config.training.deepspeed} is not in the repository")
    assert not problems, "\n".join(problems)


def test_accelerate_configs_point_at_a_shipped_deepspeed_config():
    """An `accelerate launch` config that delegates to a DeepSpeed JSON names one that exists."""
    for path in filter(is_accelerate_config, sorted(CONFIGS.glob("*.yaml"))):
        deepspeed = yaml.safe_load(path.read_text(encoding="utf-8")).get("deepspeed_config", {}).get("deepspeed_config_file")
        assert deepspeed is None or (REPO / deepspeed).is_file(), f"{path.name}: {deepspeed} is not in the repository"


def test_every_shipped_deepspeed_config_names_its_zero_stage():
    """Each JSON config is valid JSON with zero_optimization.stage; ds_zero2 and ds_zero3 exist with
    stages 2 and 3, and ZeRO-3 gathers the weights when saving, so the saved model is whole."""
    stages = {path.name: json.loads(path.read_text(encoding="utf-8"))["zero_optimization"]["stage"] for path in sorted(CONFIGS.glob("*.json"))}
    assert stages.get("ds_zero2.json") == 2 and stages.get("ds_zero3.json") == 3, stages
    assert all(stage in (0, 1, 2, 3) for stage in stages.values()), stages
    zero3 = json.loads((CONFIGS / "ds_zero3.json").read_text(encoding="utf-8"))
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
