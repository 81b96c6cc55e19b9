#!/usr/bin/env bash
# Create .venv and install belle with every extra (train, gptq, chat, data, gguf, dev). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# llama-cpp-python (the gguf extra) compiles llama.cpp. On x86-64 it is built for AVX2 rather than for
# this very CPU: a native build uses Intel AMX where the CPU reports it, and llama.cpp's AMX kernels die
# of SIGILL in virtual machines that report AMX without enabling it (CI's do). Set CMAKE_ARGS to choose.
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check -e ".[all,dev]"
