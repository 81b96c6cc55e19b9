#!/usr/bin/env bash
# Set up, build the tiny model, fine-tune it on our sample conversations (under a minute on CPU), ask it a question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
out=runs/quickstart
.venv/bin/belle model tiny --out "$out/tiny"
.venv/bin/belle train --config train/configs/quickstart.yaml output_dir="$out/sft" model.path="$out/tiny"
# One question to the fine-tuned model through the terminal chat.
printf '请介绍一下你自己。\n/exit\n' | .venv/bin/belle chat --cli --model "$out/sft" --temperature 0 --max-new-tokens 64
echo
echo "quick start done: the fine-tuned model, summary.md and loss.png are in $out/sft"
echo "chat with it in the browser: .venv/bin/belle chat --model $out/sft"
