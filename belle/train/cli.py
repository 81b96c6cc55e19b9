"""`belle train CONFIG.yaml [key=value | --key value ...]` and `belle train merge`.

The config file may also come as `--config FILE`; other trainers' key names (`--learning_rate 1e-4`,
`lora_rank: 8`) are read through `belle.train.aliases`. Runs the same under one process, `torchrun`,
`accelerate launch` and the `deepspeed` launcher (which adds `--local_rank`; the rank is read from the
environment instead).
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Sequence

from belle.cli import UsageError, os_error_message, run_verbs, setup_logging
from belle.config import ConfigError, config_keys, load_config, parse_config_args
from belle.modeling import DTYPES
from belle.train.aliases import ALIASES
from belle.train.config import PPO_REFUSAL, Stage, TrainConfig


def merge(*, base: Path, adapter: Path, out: Path, dtype: str = "float32") -> int:
    """Merge a LoRA adapter into its base model and save a full model folder.

    Args:
        base: the base model folder the adapter was trained on.
        adapter: the LoRA run's output folder (adapter_config.json, adapter_model.safetensors).
        out: folder to write the merged model to.
        dtype: dtype of the merged weights: float32, bfloat16 or float16.
    """
    from belle.train.merge import merge_adapter

    if dtype not in DTYPES[1:]:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES[1:])}")
    for name, path, needed in (("--base", base, "config.json"), ("--adapter", adapter, "adapter_config.json")):
        if not (path / needed).is_file():
            raise UsageError(f"{name} {path}: no {needed} there")
    merge_adapter(base, adapter, out, dtype)
    print(f"merged {adapter} into {base}: {out}")
    return 0


VERBS = [merge]


def config_parser(prog: str) -> argparse.ArgumentParser:
    """The parser for `--help` and the reference; `parse_args` reads the command line through it."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [CONFIG.yaml | --config CONFIG.yaml] [KEY=VALUE | --KEY VALUE ...]",
        description="Train a model: sft, pt, dpo, kto, a reward model (rm), or online RL from prompts with "
                    "rewards (grpo, rloo: BELLE's ppo stage); full, lora or qlora. Also: `merge` (see merge --help).",
        epilog="keys: " + ", ".join(config_keys(TrainConfig)) + ". Hugging Face, LLaMA-Factory and axolotl "
               "names are read as these keys too (learning_rate, lora_rank, ...; see train/README.md).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", type=Path, help="YAML config (see train/configs/); or give it first, without --config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="e.g. output_dir=runs/a lora.r=8, or --lora.r 8, --lora.r=8; "
                             "a bare --KEY sets a true/false key to true")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str], prog: str = "belle train") -> argparse.Namespace:
    """`argv` as `config` (a Path or None) and `overrides` (`key=value` strings) for `load_train_config`."""
    return parse_config_args(config_parser(prog), argv, TrainConfig, ALIASES)


def load_train_config(path: Path | None, overrides: Sequence[str]) -> TrainConfig:
    """The training config from a YAML file and overrides, other trainers' key names included.
    `stage=ppo`, BELLE's PPO stage, is refused with the stage that replaces it."""
    try:
        return load_config(TrainConfig, path, list(overrides), aliases=ALIASES)
    except ConfigError as e:
        ppo = f"stage: 'ppo' is not one of {', '.join(map(repr, typing.get_args(Stage)))}"
        if ppo not in e.problems:
            raise
        problems = [f"stage: {PPO_REFUSAL}" if p == ppo else p for p in e.problems]
        raise ConfigError(problems, str(path) if path else "config") from None


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.train") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        return run_verbs(VERBS, argv, prog)
    try:
        args = parse_args(argv, prog)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    setup_logging()
    from belle.train.run import train

    config = None
    try:
        config = load_train_config(args.config, args.overrides)
        train(config)
    except (ConfigError, UsageError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        message = os_error_message(e, {"config": args.config, "train": config})
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    return 0
