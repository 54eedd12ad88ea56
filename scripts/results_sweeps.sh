#!/usr/bin/env bash
# Regenerates the sweeps behind docs/results.md (SmolLM2-135M-Instruct, LoRA r=16, CPU, fp32). Each cell
# is cached under outputs/results/, so an interrupted run resumes where it stopped. The two sweeps run
# side by side with one thread each (2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
R=.venv/bin/robalign
COMMON="--methods dpo,rdpo,gapo --kinds flip --seeds 0,1,2 --steps 16 --batch-size 4 --lr 5e-4 --train-pairs 256 --eval-pairs 64 --max-length 192"
export OMP_NUM_THREADS=1
$R bench robustness --data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz --rates 0,0.2 $COMMON \
    --out outputs/results/hh > outputs/results/hh.log 2>&1 &
$R bench robustness --data verifiable --rates 0,0.3 $COMMON --out outputs/results/verifiable \
    > outputs/results/verifiable.log 2>&1 &
wait
