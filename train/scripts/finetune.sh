#!/usr/bin/env bash
# Full fine-tuning of a 7B LLaMA on one node with torchrun and DeepSpeed ZeRO-3
# (BELLE's recipe: train/configs/belle_full_ft.yaml).
#
# Run from the repository root; every variable below can be set from the environment, and any
# extra arguments are passed on as key=value config overrides:
#   MODEL=/models/llama-7b DATA=/data/train.jsonl bash train/scripts/finetune.sh training.epochs=3
#   DATA=/data/a.jsonl,/data/b.jsonl NUM_GPUS=4 bash train/scripts/finetune.sh training.gradient_accumulation_steps=8
#
# The recipe's global batch (64) assumes 8 GPUs: batch 2 x accumulation 4 x 8. With fewer GPUs,
# raise training.gradient_accumulation_steps to keep it.
set -euo pipefail

MODEL=${MODEL:-/path/to/llama-7b}          # Hugging Face model folder
DATA=${DATA:-/path/to/train.jsonl}         # training file(s) or folder(s), comma-separated
OUT=${OUT:-runs/belle_full_ft}             # output_dir: checkpoints, logs, final model
NUM_GPUS=${NUM_GPUS:-8}                    # GPUs on this node
CONFIG=${CONFIG:-train/configs/belle_full_ft.yaml}

if [[ ! -f "$CONFIG" ]]; then
    echo "error: $CONFIG not found; run this script from the repository root" >&2
    exit 1
fi

torchrun --nproc_per_node "$NUM_GPUS" -m belle.train --config "$CONFIG" \
    model.path="$MODEL" \
    data.train_files="[$DATA]" \
    output_dir="$OUT" \
    "$@"
