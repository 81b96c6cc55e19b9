"""Every shipped recipe in train/configs/ runs as the README shows it: as one plain process, and
those of TWO_RANKS under `torchrun --nproc_per_node 2` too, with only the model, data, output folder
and step count overridden (and grpo's reward model, the other placeholder).

The runs also carry the checks on what DeepSpeed saves (they replace test_deepspeed.py's own
two-process runs): one optimizer shard per rank, and a final model with every tensor whole (ZeRO-3
gathers its shards; belle_full_ft and llama_ext_7b use ZeRO-3, pt and rm ZeRO-2).
"""

import math
import subprocess
import sys

import pytest
import torch
import yaml

from belle.cli import main as belle_main
from belle.train.distributed import LAUNCHER_VARIABLES, ensure_single_process_world
from tests.helpers import cli_env, free_port, read_jsonl
from tests.train.helpers import REPO, SAMPLES, files_list, load_weights, losses_by_step, read_metrics, tail

CONFIGS = REPO / "train" / "configs"
SFT = (SAMPLES / "belle_conversations.jsonl",)

# Each recipe, with data/samples files of its stage.
RECIPES = {
    "quickstart": tuple(SAMPLES / name for name in ("belle_conversations.jsonl", "alpaca.json", "multiturn_chat.jsonl", "messages.jsonl")),
    "belle_full_ft": SFT,
    "belle_lora": SFT,
    "llama_ext_7b": SFT,
    "pt": (SAMPLES / "pretrain.jsonl",),
    "dpo": (SAMPLES / "dpo.jsonl",),
    "rm": (SAMPLES / "rm_pairs.jsonl",),
    "grpo": (SAMPLES / "math_prompts.jsonl",),
    "kto": (SAMPLES / "kto.jsonl",),
}


def shipped_train_configs() -> set[str]:
    """The YAML files in train/configs/ that are `belle train` configs (accelerate's is not)."""
    return {p.stem for p in CONFIGS.glob("*.yaml") if "output_dir" in yaml.safe_load(p.read_text(encoding="utf-8"))}


def test_every_shipped_recipe_is_run_by_the_recipe_test():
    assert shipped_train_configs() == set(RECIPES) and set(TWO_RANKS) <= set(RECIPES)


def test_deepspeed_without_a_launcher_gets_a_world_of_one(caplog):
    env = {"MASTER_PORT": "29611"}
    with caplog.at_level("INFO", logger="belle.train.distributed"):
        added = ensure_single_process_world("train/configs/ds_zero2.json", env)
    assert env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29611"}
    assert set(added) == {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"}
    assert len(caplog.records) == 1 and "world of one" in caplog.text and "\n" not in caplog.records[0].getMessage()


def test_a_launcher_or_no_deepspeed_leaves_the_environment_alone():
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert ensure_single_process_world("ds.json", dict(launched)) == {}
    plain: dict[str, str] = {}
    assert ensure_single_process_world(None, plain) == {} and plain == {}


def test_a_partial_launcher_environment_is_a_usage_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = belle_main(["train", f"model.path={tiny_model_dir}", f"data.train_files=[{SFT[0]}]", f"output_dir={tmp_path / 'run'}",
                       "training.deepspeed=train/configs/ds_zero2.json"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "WORLD_SIZE set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not" in err and "Traceback" not in err


@pytest.fixture(scope="session")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a reward model folder, the kind stage rm writes: a sequence classifier with
    one label (its score head untrained), with the tokenizer and chat template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward_model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def recipe_command(recipe: str, model: str, out: str, processes: int, *extra: str) -> list[str]:
    """The README's command for `recipe` with the four overrides (and `extra`); under torchrun for 2 processes."""
    launcher = ["-m", "belle"] if processes == 1 else [
        "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()), "-m", "belle.train"]
    train = ["train"] if processes == 1 else []
    return [sys.executable, *launcher, *train, "--config", f"train/configs/{recipe}.yaml", f"model.path={model}",
            f"data.train_files={files_list(*RECIPES[recipe])}", f"output_dir={out}", "training.max_steps=2", *extra]


def expected_samples(config: dict, processes: int, records: int) -> int:
    """Samples 2 steps train on an unpacked SFT run: each rank takes batch x accumulation per step,
    at most its share of the records (an epoch ends a step early)."""
    t = config["training"]
    return processes * min(2 * t["batch_size"] * t["gradient_accumulation_steps"], records // processes)


# Recipes also run under torchrun on 2 ranks: one per distinct rank-dependent path of belle train
# (plain DDP with packing, ZeRO-3 full with its gathered save and the per-rank sample count, ZeRO-3
# offload with LoRA, ZeRO-2 with a TRL reference adapter, ZeRO-2 full with the reward model's save,
# and RL generation groups spread over ranks). The rest add no rank-dependent code of ours and would
# cost about 30 s each on 2 cores: llama_ext_7b is belle_full_ft's path (ZeRO-3, full, unpacked sft)
# with other sizes; pt is ZeRO-2 full (rm's) with packing (quickstart's), and its chunking runs before
# the ranks split; kto is ZeRO-2 LoRA on a TRL trainer (dpo's), with rank-independent data prep.
TWO_RANKS = ("quickstart", "belle_full_ft", "belle_lora", "dpo", "rm", "grpo")
CASES = [pytest.param(recipe, 1, id=f"{recipe}-one-process") for recipe in RECIPES] + [
    pytest.param(recipe, 2, id=f"{recipe}-torchrun-2") for recipe in TWO_RANKS]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "processes"), CASES)
def test_shipped_recipe_runs_as_written(recipe, processes, tiny_model_dir, tmp_path, request):
    """Exit 0 with no traceback, a loss logged, 2 optimizer steps, a COMPLETE checkpoint and a saved
    final model or adapter. A full model is saved whole (every tensor at full shape, even under
    ZeRO-3), finite, trained, and loads (a reward model as a one-score sequence classifier). Under
    DeepSpeed on two ranks the checkpoint holds one optimizer shard per rank. For unpacked SFT,
    throughput counts exactly the samples trained; grpo logs its reward."""
    config = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text(encoding="utf-8"))
    out = tmp_path / "run"
    env = {k: v for k, v in cli_env(OMP_NUM_THREADS="1").items() if k not in LAUNCHER_VARIABLES}
    extra = [f"reward.model={request.getfixturevalue('reward_model_dir')}"] if config["stage"] in ("grpo", "rloo") else []
    result = subprocess.run(recipe_command(recipe, str(tiny_model_dir), str(out), processes, *extra), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, tail(result)
    assert "Traceback" not in result.stderr, tail(result)
    deepspeed = config["training"].get("deepspeed")
    assert ("DeepSpeed runs as a world of one" in result.stderr) == bool(deepspeed and processes == 1), tail(result)
    metrics = read_metrics(out)
    assert metrics["global_step"] == 2 and math.isfinite(losses_by_step(out)[1])
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and (out / "belle.json").is_file()
    if deepspeed and processes == 2:
        shards = sorted(p.name[:14] for p in (out / "checkpoint-2" / "global_step2").glob("zero_pp_rank_*_optim_states.pt"))
        assert shards == ["zero_pp_rank_0", "zero_pp_rank_1"], f"not a two-rank ZeRO checkpoint: {shards}"
    if config["stage"] == "sft" and not config["data"].get("pack"):
        assert metrics["train"]["samples"] == expected_samples(config, processes, len(read_jsonl(SFT[0])))
    if config["stage"] in ("grpo", "rloo"):
        assert [h["reward"] for h in metrics["log_history"] if "reward" in h], "no reward logged"
    if config["method"] == "lora":
        assert load_weights(out / "adapter_model.safetensors"), "empty adapter"
        return
    trained, base = load_weights(out / "model.safetensors"), load_weights(tiny_model_dir / "model.safetensors")
    if config["stage"] == "rm":
        assert_reward_model(out, trained, base)
        return
    assert trained.keys() == base.keys()
    for name, tensor in base.items():
        assert trained[name].shape == tensor.shape, f"{name}: saved {tuple(trained[name].shape)}, expected {tuple(tensor.shape)}"
        assert torch.isfinite(trained[name]).all(), name
    assert max((trained[k].float() - base[k]).abs().max().item() for k in base) > 0, "the saved weights are the base's"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def assert_reward_model(out, trained, base):
    """A reward model folder: the base's body (trained, finite, whole) under a one-score head, which
    plain transformers loads and runs."""
    from transformers import AutoModelForSequenceClassification

    body = {k: v for k, v in base.items() if k.startswith("model.")}
    assert body and set(body) <= trained.keys() and trained["score.weight"].shape == (1, base["model.embed_tokens.weight"].shape[1])
    for name, tensor in body.items():
        assert trained[name].shape == tensor.shape and torch.isfinite(trained[name]).all(), name
    assert max((trained[k].float() - body[k]).abs().max().item() for k in body) > 0, "the saved body is the base's"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    scores = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert scores.shape == (1, 1) and torch.isfinite(scores).all()
