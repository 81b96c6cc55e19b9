#!/usr/bin/env bash
# Multi-node training with the `deepspeed` launcher: run ONCE, on the first node of the hostfile;
# it starts the processes on every node over passwordless ssh (pdsh).
#
# Requirements: passwordless ssh from this node to all nodes (and to itself), the same Python
# environment and this repository at the same path on every node, and MODEL, DATA and OUT on
# storage all nodes share (ZeRO-3 checkpoints are written by every rank). The launcher runs
# `cd $PWD` on each node; environment variables other than PYTHON*/NCCL*-style ones are not
# forwarded: put them, one KEY=VALUE per line, in ./.deepspeed_env or ~/.deepspeed_env.
#
#   HOSTFILE=my_hosts MASTER_ADDR=10.0.0.1 MODEL=/shared/llama-7b DATA=/shared/train.jsonl \
#       bash train/scripts/multinode_deepspeed.sh training.gradient_accumulation_steps=2
#
# Global batch = batch_size x gradient_accumulation_steps x all GPUs: belle_full_ft.yaml's 2 x 4
# on 2 nodes x 8 GPUs is 128; set training.gradient_accumulation_steps=2 to keep BELLE's 64.
# The deepspeed launcher passes --local_rank=N to each process; belle.train accepts and ignores it.
set -euo pipefail

MODEL=${MODEL:-/path/to/llama-7b}              # Hugging Face model folder (shared storage)
DATA=${DATA:-/path/to/train.jsonl}             # training file(s), comma-separated (shared storage)
OUT=${OUT:-runs/belle_full_ft_multinode}       # output_dir (shared storage)
NUM_GPUS=${NUM_GPUS:-8}                        # GPUs per node to use (at most the hostfile's slots)
HOSTFILE=${HOSTFILE:-train/scripts/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-node1}              # address of the first node, reachable from all nodes
MASTER_PORT=${MASTER_PORT:-29500}
CONFIG=${CONFIG:-train/configs/belle_full_ft.yaml}

if [[ ! -f "$CONFIG" ]]; then
    echo "error: $CONFIG not found; run this script from the repository root" >&2
    exit 1
fi

deepspeed --hostfile "$HOSTFILE" \
    --num_gpus "$NUM_GPUS" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    --module belle.train --config "$CONFIG" \
    model.path="$MODEL" \
    data.train_files="[$DATA]" \
    output_dir="$OUT" \
    "$@"
