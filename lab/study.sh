#!/usr/bin/env bash
# The long-training study (docs/results.md): each stage is a cached sweep, so re-running resumes it.
# Usage: bash lab/study.sh pilot|pilot2|screen|keep|scaled|confirm|hh|online   (the other stages are added as the design's stages are run)
set -euo pipefail
cd "$(dirname "$0")/.."
RB=.venv/bin/robalign
LONG=(--epochs 8 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8 --lr 2e-5 --max-length 256)
case "${1:-}" in
  pilot)  # DPO on the built-in task, clean and 40 % flipped: does held-out accuracy rise, then fall?
    $RB bench robustness --data verifiable --methods dpo --kinds flip --rates 0.4,0 --seeds 0 "${LONG[@]}" \
        --train-pairs 500 --eval-pairs 500 --gen-prompts 0 --out outputs/study/pilot ;;
  pilot2)  # a higher lr and a smaller training set, so that DPO memorises the flipped labels within the budget
    $RB bench robustness --data verifiable --methods dpo,sympo --kinds flip --rates 0.4,0 --seeds 0 \
        --epochs 10 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8 --lr 1e-4 --max-length 256 \
        --train-pairs 256 --eval-pairs 500 --gen-prompts 0 --out outputs/study/pilot2 ;;
  screen)  # stage (a): every offline method at pilot 2's settings, 40 % flips first, then clean; the methods
           # that take a noise rate are told the cell's true rate (at rate 0 they are DPO, so not run clean)
    S=(--kinds flip --seeds 0 --epochs 10 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8 --lr 1e-4
       --max-length 256 --train-pairs 256 --eval-pairs 500 --gen-prompts 0 --out outputs/study/screen
       --param cdpo.epsilon=rate --param rdpo.epsilon=rate --param oracle_robust_offline.rho=rate)
    $RB bench robustness --methods rdpo,cdpo,drdpo,hypo,gapo,oracle_robust_offline,ipo,hinge,simpo,sympo,dpo \
        --rates 0.4 "${S[@]}"
    $RB bench robustness --methods dpo,drdpo,hypo,gapo,ipo,hinge,simpo,sympo --rates 0 "${S[@]}" ;;
  keep)  # stage (d): DPO trained only on the 60 % of its pairs the base model agrees with most
         # (data.keep_fraction), at 40 % flips and clean; pilot 2's settings otherwise
    $RB bench robustness --data verifiable --methods dpo --kinds flip --rates 0.4,0 --seeds 0 \
        --epochs 10 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8 --lr 1e-4 --max-length 256 \
        --train-pairs 256 --eval-pairs 500 --gen-prompts 0 --keep-fraction 0.6 --out outputs/study/keep ;;
  scaled)  # is cDPO's deficit in the screen a step-size artefact? At h = 0 its gradient is (1 − 2ε) of DPO's
           # (ε = 0.4: a fifth), so train it at DPO's lr / (1 − 2ε) = 5e-4; screen settings otherwise
    mkdir -p outputs/study/scaled && ln -sfn ../screen/trunk outputs/study/scaled/trunk
    $RB bench robustness --data verifiable --methods cdpo --kinds flip --rates 0.4 --seeds 0 \
        --epochs 10 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8 --lr 5e-4 --max-length 256 \
        --train-pairs 256 --eval-pairs 500 --gen-prompts 0 --param cdpo.epsilon=rate --out outputs/study/scaled ;;
  confirm)  # stage (b): DPO and the screen's best three on their own implicit reward (SimPO, scored on M, +0.034;
             # hinge −0.016; Dr.DPO −0.024), seeds 0-2, 1,000 held-out pairs evaluated every second epoch (an
             # evaluation of 1,000 pairs costs about half an epoch of training), gold reward of greedy
             # generations on 64 held-out prompts; in order of what decides most: DPO and SimPO at 40 % flips and
             # on clean labels (what the noise costs, and whether SimPO's lead is about noise at all), the two
             # at length-biased 0.4 (where the data's majority is wrong on a subset), hinge and Dr.DPO at 40 %,
             # DPO at 20 % (how the cost grows with the rate). Pruned from the first plan (hinge at length and
             # 20 %, hinge and Dr.DPO clean): they decide no claim the rest does not. A cell: ~18 min on
             # one core with two side by side (35-40 beside the online stage).
             # THREADS=1 runs it on one core beside `online`
    C=(--data verifiable --seeds 0,1,2 --epochs 10 --train-last-k 2 --trunk-cache disk --lora-r 0 --batch-size 8
       --lr 1e-4 --max-length 256 --train-pairs 256 --eval-pairs 1000 --eval-per-epoch 0.5 --gen-prompts 64
       --threads "${THREADS:-0}" --out outputs/study/confirm)
    $RB bench robustness --methods dpo,simpo --kinds flip --rates 0.4,0 "${C[@]}"
    $RB bench robustness --methods dpo,simpo --kinds length --rates 0.4 "${C[@]}"
    $RB bench robustness --methods hinge,drdpo --kinds flip --rates 0.4 "${C[@]}"
    $RB bench robustness --methods dpo --kinds flip --rates 0.2 "${C[@]}" ;;
  hh)  # stage (c): the direction of stage (b)'s conclusions on real human labels (HH-RLHF harmless, the shared
        # 2,312 pairs: 1,850 train / 462 held-out per seed); 4 epochs (a 10-epoch cell costs over an hour
        # here); DPO and SimPO at 40 % flips, DPO clean; no generations (no programmatic checker)
    H=(--data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz --seeds 0,1,2 --epochs 4 --train-last-k 2
       --trunk-cache disk --lora-r 0 --batch-size 8 --lr 1e-4 --max-length 256 --train-pairs 1850 --eval-pairs 462
       --gen-prompts 0 --threads "${THREADS:-0}" --out outputs/study/hh)
    $RB bench robustness --methods dpo --kinds flip --rates 0.4,0 "${H[@]}"  # first what the noise costs DPO
    $RB bench robustness --methods simpo --kinds flip --rates 0.4 "${H[@]}" ;;
  online)  # item 4: online DPO vs SAIL vs oracle-robust (ρ told the oracle's rate) under a flip oracle and a
            # ρ-adversarial one, at the budget where pilot 96 saw the gold reward of online DPO's samples rise
            # (LoRA r 16, 8 prompts x 2 samples per step, lr 2e-4); one thread, so it can run beside a sweep
    O=(--methods online_dpo,sail_pr,oracle_robust --seeds 0 --steps 80 --batch-size 8 --lr 2e-4 --rho 0.3
       --eval-prompts 48 --threads 1)
    .venv/bin/python benchmarks/online.py "${O[@]}" --oracle bt:verifiable:0.1+flip:0.3 --out outputs/study/online/flip30
    .venv/bin/python benchmarks/online.py "${O[@]}" --oracle bt:verifiable:0.1+adversarial:0.3 \
        --out outputs/study/online/adversarial30 ;;
  *) echo "usage: $0 pilot|pilot2|screen|keep|scaled|confirm|hh|online" >&2; exit 2 ;;
esac
