#!/usr/bin/env bash
# Set up, build the tiny model, and encode our sample conversations exactly as training sees them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
out=runs/quickstart
.venv/bin/belle model tiny --out "$out/tiny"
.venv/bin/belle data tokenize --model "$out/tiny" \
    --input data/samples/belle_conversations.jsonl data/samples/alpaca.json \
            data/samples/multiturn_chat.jsonl data/samples/messages.jsonl \
    --output "$out/tokens.jsonl" --max-length 1024 --pack
echo "quick start done: $out/tokens.jsonl (packed rows), $out/tokens.jsonl.stats.json"
