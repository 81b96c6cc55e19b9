#!/usr/bin/env bash
# Set up, build the tiny model, and fine-tune it on our sample conversations (under a minute on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
out=runs/quickstart
.venv/bin/belle model tiny --out "$out/tiny"
.venv/bin/belle train --config train/configs/quickstart.yaml output_dir="$out/sft" model.path="$out/tiny"
echo "quick start done: the fine-tuned model, summary.md and loss.png are in $out/sft"
