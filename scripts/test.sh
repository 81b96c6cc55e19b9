#!/usr/bin/env bash
# Set up and run the whole test suite offline (no model or dataset downloads). Arguments go to pytest:
# `bash scripts/test.sh -m "not slow"` is the quick check, `-k NAME` one area.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web chat's browser tests drive Debian's Chromium.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
    else
        echo "the browser tests need Chromium: sudo apt-get install chromium" >&2
        exit 1
    fi
fi
# --durations: the CI log names the slowest tests, so the next cut of the suite's time starts from numbers.
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q --durations=30 "$@"
