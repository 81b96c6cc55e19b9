#!/usr/bin/env bash
# Training launched by `accelerate launch` with DeepSpeed (train/configs/accelerate_deepspeed.yaml,
# which names train/configs/ds_zero3.json). Same job as finetune.sh, for clusters and habits built
# around accelerate.
#
#   MODEL=/models/llama-7b DATA=/data/train.jsonl bash train/scripts/accelerate.sh training.epochs=3
#
# DS_CONFIG is also passed to belle.train as training.deepspeed, so the Trainer fills the JSON's
# "auto" values from our config; keep it the file that the accelerate config names.
set -euo pipefail

MODEL=${MODEL:-/path/to/llama-7b}              # Hugging Face model folder
DATA=${DATA:-/path/to/train.jsonl}             # training file(s) or folder(s), comma-separated
OUT=${OUT:-runs/belle_full_ft_accelerate}      # output_dir
NUM_GPUS=${NUM_GPUS:-8}                        # processes (GPUs) in all
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-train/configs/accelerate_deepspeed.yaml}
DS_CONFIG=${DS_CONFIG:-train/configs/ds_zero3.json}
CONFIG=${CONFIG:-train/configs/belle_full_ft.yaml}

if [[ ! -f "$CONFIG" ]]; then
    echo "error: $CONFIG not found; run this script from the repository root" >&2
    exit 1
fi

accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" \
    -m belle.train --config "$CONFIG" \
    model.path="$MODEL" \
    data.train_files="[$DATA]" \
    output_dir="$OUT" \
    training.deepspeed="$DS_CONFIG" \
    "$@"
