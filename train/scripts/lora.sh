#!/usr/bin/env bash
# LoRA fine-tuning of a 7B LLaMA on one node with torchrun and DeepSpeed ZeRO-3 + CPU offload
# (BELLE's LoRA setup: train/configs/belle_lora.yaml). Writes an adapter, not a whole model.
# Same variables and arguments as finetune.sh:
#   MODEL=/models/llama-7b DATA=/data/train.jsonl bash train/scripts/lora.sh lora.r=32 lora.alpha=64
#   bash train/scripts/lora.sh training.deepspeed=train/configs/ds_zero2.json   # 80 GB GPUs: no offload, faster
set -euo pipefail
CONFIG=${CONFIG:-train/configs/belle_lora.yaml} OUT=${OUT:-runs/belle_lora} \
    exec bash "$(dirname "$0")/finetune.sh" "$@"
