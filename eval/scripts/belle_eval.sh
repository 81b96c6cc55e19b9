#!/usr/bin/env bash
# BELLE's evaluation of one model: answers to BELLE's 1,000 questions, GPT-4 as the judge with
# BELLE's own judge prompts, and the per-class report with Score and Score_w/o_others.
#
#   export OPENAI_API_KEY=...
#   MODEL=runs/belle_full_ft BELLE_DATA=/data/belle-data bash eval/scripts/belle_eval.sh
#
# BELLE_DATA is a folder holding BELLE's eval_set.json and eval_prompt.json. Extra arguments go to
# `belle eval run` (e.g. --samples 3, --judge-base-url URL, --limit 50). Re-running resumes.
set -euo pipefail

MODEL=${MODEL:-/path/to/model}                 # model, LoRA adapter or GPTQ folder
BELLE_DATA=${BELLE_DATA:-../shared/belle-data} # BELLE's eval_set.json and eval_prompt.json
JUDGE=${JUDGE:-gpt-4}                          # judge model name
OUT=${OUT:-runs/eval/$(basename "$MODEL")-belle1k}

for file in eval_set.json eval_prompt.json; do
    if [[ ! -f "$BELLE_DATA/$file" ]]; then
        echo "error: $BELLE_DATA/$file not found; set BELLE_DATA to the folder holding BELLE's eval files" >&2
        exit 1
    fi
done

python -m belle eval run \
    --model "$MODEL" \
    --eval-set "$BELLE_DATA/eval_set.json" \
    --prompts "$BELLE_DATA/eval_prompt.json" \
    --judge-model "$JUDGE" \
    --output "$OUT" \
    "$@"
