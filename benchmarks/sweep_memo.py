"""What the sweep's reference memo saves: the same cells trained with and without it, side by side.

    python benchmarks/sweep_memo.py [--methods dpo,ipo,hinge] [--rate 0.2] [--seed 0] [--steps 16] \
        [--model smollm2-135m-instruct] [--threads 1] [--out benchmarks/results/sweep-memo.json]

The methods of one (kind, rate, seed) train on the same batches, so a sweep computes each batch's
reference log-probs once (`robalign.reference.MemoizedReference` over a `DiskMemo` in the sweep folder).
This runs one cell per method twice, in two fresh sweep folders: with the memo, and without one (every
cell computes its own reference log-probs, as before the memo). The two runs alternate
cell by cell, and which goes first alternates too, so a drift in the machine's speed hits both alike.
It prints each cell's seconds and the total ratio, and checks that both runs give exactly the same
results (the memo must change no number).
Settings are the built-in task's documented sweep (lab/results-64-pair-sweeps.md) without generation (--gen-prompts 0
there): generation does not touch the memo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import common


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--methods", default="dpo,ipo,hinge")
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    common.set_threads(args.threads)
    from robalign.experiments.cells import run_cell
    from robalign.experiments.spec import SweepSpec
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import DiskMemo, SharedReference

    methods = args.methods.split(",")
    base = load_model_and_tokenizer(args.model)
    root = Path(tempfile.mkdtemp(prefix="sweep-memo-"))
    specs = {name: SweepSpec("verifiable", methods, ["flip"], [args.rate], [args.seed], args.model, args.steps, 4,
                             5e-4, 256, 64, 192, 16, root / name) for name in ("memo", "no-memo")}
    # One held-out cache per run, as `run_sweep` keeps one per process: the memo's gain is then only what a
    # sweep gains from it (training batches, and held-out batches another process scored).
    shared = {"memo": SharedReference(batches=DiskMemo(root / "memo" / "reference_memo")), "no-memo": SharedReference()}
    seconds = {name: [] for name in specs}
    results = {name: [] for name in specs}
    for k, method in enumerate(methods):
        for name in list(specs)[::(-1) ** k]:  # each run goes first every other time (the first cell warms up)
            t = time.perf_counter()
            result = run_cell(specs[name], method, "flip", args.rate, args.seed, base=base,
                              shared_reference=shared[name])
            seconds[name].append(time.perf_counter() - t)
            result.pop("seconds")
            results[name].append(result)
            print(f"{method:8s} {name:8s} {seconds[name][-1]:7.1f} s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    same = results["memo"] == results["no-memo"]
    ratio = sum(seconds["no-memo"]) / sum(seconds["memo"])
    print(f"total: memo {sum(seconds['memo']):.1f} s, no memo {sum(seconds['no-memo']):.1f} s, "
          f"speed-up {ratio:.2f}x; identical results: {same}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
                                        "speedup": ratio, "identical_results": same, "methods": methods,
                                        "machine": common.machine()},
                                       indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
