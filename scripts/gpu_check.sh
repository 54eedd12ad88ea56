#!/usr/bin/env bash
# The prepared GPU check (one H100, <= 8 minutes): the `cuda`-marked tests (bf16, fp16, mixed precision,
# SDPA / FlashAttention, QLoRA, GAPO with fp32 master weights, one online step), then the side-by-side
# robalign vs TRL bf16 DPO benchmark (SmolLM2-135M and a random ~1B Llama, LoRA and full fine-tuning).
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results
#
# Uses .venv/bin/python when present, else $PYTHON or python3 (a CUDA torch, transformers, peft, accelerate
# and trl must be installed; flash-attn and bitsandbytes are optional: their tests skip without them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

status=0
# 1. behaviour (about 1-2 minutes)
timeout 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py -rs 2>&1 | tee "$OUT/gpu-check-tests.log" || status=1
# 2. the benchmark (8 runs of 8 steps each, about 4-5 minutes; each run is capped at 90 s)
timeout 320 "$PY" benchmarks/gpu_dpo_vs_trl.py --run-timeout 90 --out "$OUT/gpu-dpo-vs-trl.json" || status=1
exit $status
