#!/usr/bin/env bash
# LoRA fine-tuning of a 7B LLaMA on one node with torchrun and DeepSpeed ZeRO-3 + CPU offload
# (BELLE's LoRA setup: train/configs/belle_lora.yaml). Writes an adapter, not a whole model.
#
# Run from the repository root; variables can be set from the environment, extra arguments are
# key=value config overrides:
#   MODEL=/models/llama-7b DATA=/data/train.jsonl bash train/scripts/lora.sh lora.r=32 lora.alpha=64
#   bash train/scripts/lora.sh training.deepspeed=train/configs/ds_zero2.json   # 80 GB GPUs: no offload, faster
set -euo pipefail

MODEL=${MODEL:-/path/to/llama-7b}          # Hugging Face model folder (the frozen base)
DATA=${DATA:-/path/to/train.jsonl}         # training file(s) or folder(s), comma-separated
OUT=${OUT:-runs/belle_lora}                # output_dir: checkpoints, logs, final adapter
NUM_GPUS=${NUM_GPUS:-8}                    # GPUs on this node
CONFIG=${CONFIG:-train/configs/belle_lora.yaml}

if [[ ! -f "$CONFIG" ]]; then
    echo "error: $CONFIG not found; run this script from the repository root" >&2
    exit 1
fi

torchrun --nproc_per_node "$NUM_GPUS" -m belle.train --config "$CONFIG" \
    model.path="$MODEL" \
    data.train_files="[$DATA]" \
    output_dir="$OUT" \
    "$@"
