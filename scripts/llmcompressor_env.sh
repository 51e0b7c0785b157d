#!/usr/bin/env bash
# Creates (or refreshes) the virtual environment that runs msp's llm-compressor integration tests:
# CPU torch (torch==2.13.0+cpu, else PyPI's torch, the rule of scripts/install_deps.sh), then
# scripts/llmcompressor-requirements.txt. msp itself is not installed there: the tests import this
# checkout's python/ package and load its libmsp.so (MSP_LIBRARY_PATH).
# An existing environment is reused as is when it was made by the same interpreter from the same
# requirements (a stamp file records both); otherwise it is rebuilt from scratch.
# Usage: scripts/llmcompressor_env.sh [VENV]   (default .venv-llmcompressor; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${1:-.venv-llmcompressor}
REQUIREMENTS=scripts/llmcompressor-requirements.txt

interpreter=$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')
stamp="$interpreter $(sha256sum < "$REQUIREMENTS" | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.msp-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "llm-compressor environment $VENV is up to date"
    exit 0
fi

echo "creating the llm-compressor environment $VENV (about 1.5 GB from PyPI)"
start=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
"${pip[@]}" "torch==2.13.0+cpu" || "${pip[@]}" torch
"${pip[@]}" -r "$REQUIREMENTS"
printf '%s' "$stamp" > "$VENV/.msp-stamp"
echo "llm-compressor environment ready in $((SECONDS - start)) s"
