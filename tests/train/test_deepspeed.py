"""`torchrun -m belle.train` with the shipped DeepSpeed ZeRO-2 and ZeRO-3 configs, two CPU processes."""

import subprocess
import sys

import pytest
import torch

from tests.train.helpers import REPO, SAMPLES, cli_env, free_port, load_weights, losses_by_step, read_metrics, tail, write_yaml


@pytest.mark.parametrize("zero", ["ds_zero2.json", "ds_zero3.json"])
def test_two_process_deepspeed_run_saves_a_whole_trained_model(tiny_model_dir, tmp_path, zero):
    """Two ranks train 4 steps from a YAML config: the run exits 0, logs a loss each step, marks both
    checkpoints COMPLETE, the checkpoints are DeepSpeed's with one optimizer shard per rank, and the final model.safetensors holds every tensor at full shape (ZeRO-3
    gathers its shards), finite and moved away from the base weights; throughput counts the 16 samples
    the two ranks trained on."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "run.yaml", {
        "output_dir": str(out),
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": [str(SAMPLES / "belle_conversations.jsonl")], "max_length": 128},
        "training": {"max_steps": 4, "save_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                     "lr_scheduler": "constant", "report_to": []},
    })
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "belle.train", "--config", str(config), f"training.deepspeed=train/configs/{zero}"]
    result = subprocess.run(command, cwd=REPO, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, tail(result)

    assert sorted(losses_by_step(out)) == [1, 2, 3, 4]
    # 4 steps x 2 ranks x batch 2: throughput counts exactly the samples trained, not the prefetched ones.
    assert read_metrics(out)["train"]["samples"] == 16
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and (out / "checkpoint-4" / "COMPLETE").is_file()
    shards = sorted(p.name for p in (out / "checkpoint-4" / "global_step4").glob("zero_pp_rank_*_optim_states.pt"))
    assert [s[:14] for s in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"], f"not a two-rank ZeRO checkpoint: {shards}"
    trained, base = load_weights(out / "model.safetensors"), load_weights(tiny_model_dir / "model.safetensors")
    assert trained.keys() == base.keys()
    for name, tensor in base.items():
        assert trained[name].shape == tensor.shape, f"{name}: saved {tuple(trained[name].shape)}, expected {tuple(tensor.shape)}"
        assert torch.isfinite(trained[name]).all(), name
    assert max((trained[k].float() - base[k]).abs().max().item() for k in base) > 1e-4

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
