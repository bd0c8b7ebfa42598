#!/usr/bin/env bash
# Creates .venv (if missing) and installs xmadapter-hf with its test, plot, export (ONNX) and app (gradio) extras, CPU torch first.
#
# torch is installed before the package, pinned to 2.13.0: where pip can see a local CPU wheel (our development
# and CI machines) that takes seconds. Elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the
# CPU build instead of PyPI's multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    "${PIP[@]}" install "torch==2.13.0"
  fi
fi
"${PIP[@]}" install -e ".[test,plot,export,app]" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -c "import torch, transformers, xmadapter_hf; print(f'torch {torch.__version__}, transformers {transformers.__version__}, xmadapter-hf {xmadapter_hf.__version__}')"
