#!/usr/bin/env bash
# Create .venv/ in the repo root, install imprint (CPU packages) with its export/test/report extras,
# and build the ONNX backbones. Idempotent: re-running only installs what changed.
# IMPRINT_GPU=1 installs the `gpu` extra instead of `cpu` (onnxruntime-gpu, faiss-gpu-cu12, numba-cuda: one
# CUDA 12 stack) after removing any CPU twin, and takes torch (only used to export the backbones) as the CPU
# build from the PyTorch index so that it brings no second CUDA stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
if [ "${IMPRINT_GPU:-0}" = "1" ]; then
  # onnxruntime/onnxruntime-gpu and faiss-cpu/faiss-gpu-cu12 unpack into the same folders: never keep both
  .venv/bin/python -m pip uninstall --quiet -y onnxruntime faiss-cpu onnxruntime-gpu faiss-gpu-cu12 2>/dev/null || true
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
    --index-url "${IMPRINT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[gpu,export,test,report]"
else
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[cpu,export,test,report]"
fi
.venv/bin/imprint models build
