#!/usr/bin/env bash
# Set up and run the whole test suite offline (no model or dataset downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
