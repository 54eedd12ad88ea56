#!/usr/bin/env bash
# Regenerates the sweeps behind lab/results-64-pair-sweeps.md (SmolLM2-135M-Instruct, LoRA r=16, CPU, fp32). Each cell
# is cached under outputs/results/, so an interrupted run resumes where it stopped; cells are requested in
# priority order (noisy cells first), and the last call of each sweep writes the full report. The two
# sweeps run side by side with one thread each (2-core machine). The loss these sessions ran as `robust` is now
# `oracle_robust_offline` (`robust` is TRL's name for rdpo): rename cached cells/robust-* folders to reuse them.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=.venv/bin/robalign
COMMON="--kinds flip --seeds 0,1,2 --steps 16 --batch-size 4 --lr 5e-4 --train-pairs 256 --eval-pairs 64 --max-length 192"
export OMP_NUM_THREADS=1
hh() { $R bench robustness --data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz $COMMON --out outputs/results/hh "$@"; }
vf() { $R bench robustness --data verifiable $COMMON --out outputs/results/verifiable "$@"; }
( hh --methods gapo --rates 0.2 && hh --methods dpo,rdpo --rates 0.2 && hh --methods dpo,rdpo,gapo --rates 0,0.2 ) \
    > outputs/results/hh.log 2>&1 &
( vf --methods dpo,rdpo,gapo --rates 0.3 && vf --methods dpo,rdpo,gapo --rates 0,0.3 ) \
    > outputs/results/verifiable.log 2>&1 &
wait
# All three noise kinds on the built-in task, with gold reward / win rate / KL of held-out generations. Every
# built-in sweep below shares these settings and directory; each names its methods, kinds and rates.
GOLD="--data verifiable --steps 16 --batch-size 4 --lr 5e-4 --train-pairs 256 --eval-pairs 64 --max-length 192 \
 --gen-prompts 16 --gen-max-new-tokens 32 --seeds 0,1,2 --out outputs/results/verifiable-gen"
# Two workers share the directory (each cell is locked by the one that trains it), then one more call writes
# the report over all cells (all cached by then). $1 names the logs, the rest are the sweep's arguments.
two_workers() {
    local log=outputs/results/$1; shift
    $R bench robustness "$@" > "$log.log" 2>&1 &
    sleep 30; $R bench robustness "$@" > "$log-2.log" 2>&1 &
    wait
    $R bench robustness "$@" > /dev/null
}
keep_report() {  # $1 = sweep directory, $2 = subfolder: the next report in the directory overwrites this one
    mkdir -p "outputs/results/$1/$2"
    cp "outputs/results/$1/report.md" "outputs/results/$1"/*.png "outputs/results/$1/$2/"
}
two_workers verifiable-gen $GOLD --methods dpo,rdpo,gapo --kinds flip,length,margin --rates 0,0.3
keep_report verifiable-gen kinds
# The flip-rate curve: the same cells at every rate of the grid (rates 0 and 0.3 are cached above).
two_workers verifiable-flip $GOLD --methods dpo,rdpo,gapo --kinds flip --rates 0,0.1,0.2,0.3,0.4
keep_report verifiable-gen flip-rates
# Session 5: the other offline losses, then the online methods, at flip rates 0 and 0.3 (same cells, same budget).
two_workers verifiable-offline $GOLD --kinds flip --rates 0.3,0 --methods ipo,hinge,cdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline
two_workers verifiable-online $GOLD --kinds flip --rates 0.3,0 --methods sail,oracle_robust
# The report over every method at flip 0 / 0.3 (all cached by now; --report-only trains nothing).
$R bench robustness $GOLD --kinds flip --rates 0.3,0 \
    --methods dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo,sail,oracle_robust --report-only > /dev/null
# Session 6: every offline loss and GAPO on HH-RLHF at flip 0 / 0.3 (HH has no gold oracle for the online
# methods). The report covers exactly these cells; the older rate-0.2 cells stay in the directory.
two_workers hh-all --data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz $COMMON --rates 0.3,0 --out outputs/results/hh \
    --methods dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo
# Session 6: `length` 0.3 for four more losses; the report names flip first so rate 0 is the cached clean run.
two_workers verifiable-length $GOLD --kinds length --rates 0.3 --methods ipo,cdpo,hinge,simpo
$R bench robustness $GOLD --kinds flip,length --rates 0.3,0 --methods dpo,ipo,hinge,cdpo,rdpo,simpo,gapo --report-only > /dev/null
# Session 7: `length` 0.3 for the remaining methods; the report covers every method at flip and length.
two_workers verifiable-length-rest $GOLD --kinds length --rates 0.3 --methods hypo,sympo,drdpo,oracle_robust_offline,sail,oracle_robust
$R bench robustness $GOLD --kinds flip,length --rates 0.3,0 \
    --methods dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo,sail,oracle_robust --report-only > /dev/null
keep_report verifiable-gen length-all
# Session 7: `margin` 0.3 for the offline losses that lacked it (online x margin is skipped, see bench.py).
two_workers verifiable-margin $GOLD --kinds margin --rates 0.3 --methods ipo,cdpo,hinge,simpo,hypo,sympo,drdpo,oracle_robust_offline
$R bench robustness $GOLD --kinds flip,margin --rates 0.3,0 \
    --methods dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo --report-only > /dev/null
keep_report verifiable-gen margin-all
# Session 7: `length` 0.3 on HH-RLHF for every offline method (HH has no scores, so no `margin` there); the
# --kinds given after $COMMON replaces its `flip`.
two_workers hh-length --data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz $COMMON --kinds length --rates 0.3 \
    --out outputs/results/hh --methods dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo
# Sessions 8-9: the flip-rate curve on HH-RLHF for every offline method, then the `length` rates for seven;
# their reports go to subfolders (--report-dir); the last call puts back the session-7 report.md that
# lab/results-64-pair-sweeps.md quotes (two_workers' closing report replaced it).
HH="--data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz $COMMON --out outputs/results/hh"
ALL=dpo,ipo,hinge,cdpo,rdpo,simpo,hypo,sympo,drdpo,oracle_robust_offline,gapo
two_workers hh-rates $HH --rates 0.1,0.2,0.4 --methods dpo,rdpo,gapo,cdpo,oracle_robust_offline,ipo,hinge,simpo,hypo,sympo,drdpo
$R bench robustness $HH --rates 0,0.1,0.2,0.3,0.4 --methods $ALL --report-only --report-dir outputs/results/hh/flip-rates > /dev/null
$R bench robustness $HH --rates 0,0.1,0.2,0.3,0.4 --methods dpo,cdpo,rdpo,simpo,gapo --report-only \
    --report-dir outputs/results/hh/flip-rates-5 > /dev/null
two_workers hh-length-rates $HH --kinds length --rates 0.1,0.2,0.4 --methods dpo,rdpo,gapo,cdpo,simpo,ipo,oracle_robust_offline
$R bench robustness $HH --kinds flip,length --rates 0,0.1,0.2,0.3,0.4 --methods dpo,cdpo,rdpo,gapo,simpo,ipo,oracle_robust_offline \
    --report-only --report-dir outputs/results/hh/length-rates > /dev/null
# Session 10: the `length` rates for the last four losses, which completes HH's grid (11 offline methods x
# flip, length x 5 rates x 3 seeds); its report goes to hh/grid.
two_workers hh-length-rates-rest $HH --kinds length --rates 0.1,0.2,0.4 --methods hinge,sympo,drdpo,hypo
$R bench robustness $HH --kinds flip,length --rates 0,0.1,0.2,0.3,0.4 --methods $ALL --report-only \
    --report-dir outputs/results/hh/grid > /dev/null
$R bench robustness $HH --kinds flip,length --rates 0.3,0 --methods $ALL --report-only > /dev/null
# Session 12: the flip-rate curve on the built-in task for four more losses (cdpo, oracle_robust_offline, sympo, drdpo; rates
# 0 and 0.3 are cached above); its report goes to verifiable-gen/flip-rates-robust.
two_workers verifiable-flip-robust $GOLD --kinds flip --rates 0.4,0.1,0.2 --methods cdpo,oracle_robust_offline,sympo,drdpo
$R bench robustness $GOLD --kinds flip --rates 0,0.1,0.2,0.3,0.4 --methods dpo,rdpo,gapo,cdpo,oracle_robust_offline,sympo,drdpo \
    --report-only --report-dir outputs/results/verifiable-gen/flip-rates-robust > /dev/null
# Session 13: the flip-rate curve on the built-in task for ipo, hinge, simpo, hypo (rates 0 and 0.3 are cached
# above); its report goes to verifiable-gen/flip-rates-more.
two_workers verifiable-flip-more $GOLD --kinds flip --rates 0.4,0.1,0.2 --methods ipo,hinge,simpo,hypo
$R bench robustness $GOLD --kinds flip --rates 0,0.1,0.2,0.3,0.4 --methods dpo,ipo,hinge,simpo,hypo \
    --report-only --report-dir outputs/results/verifiable-gen/flip-rates-more > /dev/null
# Session 13: `length` 0.1 / 0.2 / 0.4 for dpo, rdpo, gapo (rates 0 and 0.3 are cached above); its report goes
# to verifiable-gen/length-rates-3.
two_workers verifiable-length-rates $GOLD --kinds length --rates 0.4,0.1,0.2 --methods dpo,rdpo,gapo
$R bench robustness $GOLD --kinds length --rates 0,0.1,0.2,0.3,0.4 --methods dpo,rdpo,gapo \
    --report-only --report-dir outputs/results/verifiable-gen/length-rates-3 > /dev/null
# Session 14: `length` 0.1 / 0.2 / 0.4 for the other eight offline losses (rates 0 and 0.3 are cached above);
# reports go to verifiable-gen/length-rates-more and verifiable-gen/length-rates-robust.
two_workers verifiable-length-more $GOLD --kinds length --rates 0.4,0.1,0.2 --methods ipo,hinge,simpo,hypo
two_workers verifiable-length-robust $GOLD --kinds length --rates 0.4,0.1,0.2 --methods cdpo,oracle_robust_offline,sympo,drdpo
$R bench robustness $GOLD --kinds length --rates 0,0.1,0.2,0.3,0.4 --methods dpo,ipo,hinge,simpo,hypo \
    --report-only --report-dir outputs/results/verifiable-gen/length-rates-more > /dev/null
$R bench robustness $GOLD --kinds length --rates 0,0.1,0.2,0.3,0.4 --methods dpo,cdpo,oracle_robust_offline,sympo,drdpo \
    --report-only --report-dir outputs/results/verifiable-gen/length-rates-robust > /dev/null
# Session 14: `margin` 0.1 / 0.2 / 0.4 for dpo, ipo, hinge, simpo (rate 0 is cached above; 0.3 was run in
# session 7); its report goes to verifiable-gen/margin-rates-4.
two_workers verifiable-margin-4 $GOLD --kinds margin --rates 0.4,0.1,0.2 --methods dpo,ipo,hinge,simpo
$R bench robustness $GOLD --kinds margin --rates 0,0.1,0.2,0.3,0.4 --methods dpo,ipo,hinge,simpo \
    --report-only --report-dir outputs/results/verifiable-gen/margin-rates-4 > /dev/null
# Session 15: `margin` 0.1 / 0.2 / 0.4 for the other seven offline methods (rate 0 is cached above; 0.3 was
# run in session 7); its report goes to verifiable-gen/margin-rates-7.
two_workers verifiable-margin-7 $GOLD --kinds margin --rates 0.4,0.1,0.2 --methods cdpo,rdpo,hypo,sympo,drdpo,oracle_robust_offline,gapo
$R bench robustness $GOLD --kinds margin --rates 0,0.1,0.2,0.3,0.4 --methods dpo,cdpo,rdpo,hypo,sympo,drdpo,oracle_robust_offline,gapo \
    --report-only --report-dir outputs/results/verifiable-gen/margin-rates-7 > /dev/null
# Session 15: the online methods at flip 0.1 / 0.2 / 0.4 (rate 0 is cached above; 0.3 in session 5); its report
# goes to verifiable-gen/flip-rates-online.
two_workers verifiable-flip-online $GOLD --kinds flip --rates 0.4,0.1,0.2 --methods sail,oracle_robust
$R bench robustness $GOLD --kinds flip --rates 0,0.1,0.2,0.3,0.4 --methods dpo,sail,oracle_robust \
    --report-only --report-dir outputs/results/verifiable-gen/flip-rates-online > /dev/null
# Session 16: the online methods at `length` 0.1 / 0.2 / 0.4 (rate 0 is cached above; 0.3 in session 7); its
# report goes to verifiable-gen/length-rates-online. With it the built-in grid (every method, every kind it
# takes, rates 0-0.4, seeds 0-2: 483 cells) is complete.
two_workers verifiable-length-online $GOLD --kinds length --rates 0.4,0.1,0.2 --methods sail,oracle_robust
$R bench robustness $GOLD --kinds length --rates 0,0.1,0.2,0.3,0.4 --methods dpo,sail,oracle_robust \
    --report-only --report-dir outputs/results/verifiable-gen/length-rates-online > /dev/null
# Session 16: the headline cells on seeds 3, 4, 5, which no earlier run used (a later --seeds overrides GOLD's);
# reports for seeds 3-5 and for all six seeds go to verifiable-gen/held-out-seeds-345 and -012345.
two_workers verifiable-seeds-margin $GOLD --seeds 3,4,5 --kinds margin --rates 0.4 --methods dpo,ipo,simpo,sympo,hypo
two_workers verifiable-seeds-length $GOLD --seeds 3,4,5 --kinds length --rates 0.4 --methods dpo,simpo,gapo
two_workers verifiable-seeds-flip $GOLD --seeds 3,4,5 --kinds flip --rates 0,0.4 --methods dpo,gapo
two_workers verifiable-seeds-online $GOLD --seeds 3,4,5 --kinds flip --rates 0.4,0 --methods sail,oracle_robust
for seeds in 3,4,5 0,1,2,3,4,5; do
    $R bench robustness $GOLD --seeds $seeds --methods dpo,ipo,simpo,sympo,hypo,gapo,sail,oracle_robust \
        --kinds flip,length,margin --rates 0,0.4 --report-only --report-dir "outputs/results/verifiable-gen/held-out-seeds-${seeds//,/}" > /dev/null
done
