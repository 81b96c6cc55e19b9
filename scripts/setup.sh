#!/usr/bin/env bash
# Create .venv and install belle with every extra (train, gptq, chat, dev). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -qq --disable-pip-version-check -e ".[all,dev]"
