#!/usr/bin/env bash
# Multi-node training with torchrun: run this script on EVERY node, each with its own NODE_RANK
# (0 on the master node, whose address is MASTER_ADDR; 1, 2, ... on the others). No ssh needed.
#
#   # on node 0 (10.0.0.1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash train/scripts/multinode_torchrun.sh training.gradient_accumulation_steps=2
#   # on node 1:
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash train/scripts/multinode_torchrun.sh training.gradient_accumulation_steps=2
#
# Every node must use the same MODEL, DATA, OUT, config and overrides; put them on storage all
# nodes share (ZeRO-3 checkpoints are written by every rank). MASTER_PORT must be free on node 0
# and reachable from the others.
#
# Global batch = batch_size x gradient_accumulation_steps x NNODES x NUM_GPUS: belle_full_ft.yaml's
# 2 x 4 on 2 x 8 GPUs is 128; training.gradient_accumulation_steps=2 keeps BELLE's 64.
set -euo pipefail

MODEL=${MODEL:-/path/to/llama-7b}              # Hugging Face model folder (shared storage)
DATA=${DATA:-/path/to/train.jsonl}             # training file(s), comma-separated (shared storage)
OUT=${OUT:-runs/belle_full_ft_multinode}       # output_dir (shared storage)
NUM_GPUS=${NUM_GPUS:-8}                        # GPUs per node
NNODES=${NNODES:-2}                            # number of nodes
NODE_RANK=${NODE_RANK:?set NODE_RANK: 0 on the master node, 1..NNODES-1 on the others}
MASTER_ADDR=${MASTER_ADDR:-10.0.0.1}           # IP of node 0, reachable from all nodes
MASTER_PORT=${MASTER_PORT:-29500}
CONFIG=${CONFIG:-train/configs/belle_full_ft.yaml}

if [[ ! -f "$CONFIG" ]]; then
    echo "error: $CONFIG not found; run this script from the repository root" >&2
    exit 1
fi

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --nproc_per_node "$NUM_GPUS" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m belle.train --config "$CONFIG" \
    model.path="$MODEL" \
    data.train_files="[$DATA]" \
    output_dir="$OUT" \
    "$@"
