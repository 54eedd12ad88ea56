"""What an online sweep cell labelled: sample lengths, gold ties and small gold margins of its pairs.

    .venv/bin/python lab/scripts/online_pairs.py outputs/results/verifiable-gen \
        [--methods sail,oracle_robust] [--cells flip-0] [--seeds 0,1,2] [--below 0.2] [--quantile 0.1]

For each finished online cell it reads `generations.jsonl` (one row per oracle-labelled pair) and prints the
mean length of the two samples in tokens, the share of pairs the gold ties (P⋆ = ½) and the share with a
non-zero gold margin |r1 − r2| below `--below` (the margin is τ · logit P⋆, τ the Bradley–Terry temperature
of the sweep's oracle, 0.1). It then prints, per seed, the `--quantile` quantile of the |score gap| of the
built-in task's training pairs, the threshold a margin oracle would need to flip that share of them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def pair_stats(rows: list[dict], below: float, temperature: float = 0.1) -> dict:
    """Mean sample length, share of gold ties and of non-zero gold margins below `below`, over labelled rows."""
    labelled = [r for r in rows if r.get("gold_prob") is not None]
    if not labelled:
        raise ValueError("no oracle-labelled pairs")

    def margin(p: float) -> float:
        return math.inf if p in (0.0, 1.0) else abs(temperature * math.log(p / (1 - p)))

    margins = [margin(r["gold_prob"]) for r in labelled]
    return {"pairs": len(labelled),
            "length": statistics.fmean((r["len_y1"] + r["len_y2"]) / 2 for r in labelled),
            "tied": statistics.fmean(m == 0 for m in margins),
            "small": statistics.fmean(0 < m < below for m in margins)}


def train_gap_quantile(n_pairs: int, seed: int, q: float) -> float:
    """|chosen_score − rejected_score| of the built-in training pairs at quantile q (the (round(q·n)+1)-th
    smallest: `margin` noise at rate q flips the round(q·n) pairs below it)."""
    from robalign.tasks.verifiable import make_preference_pairs

    gaps = sorted(abs(p.chosen_score - p.rejected_score) for p in make_preference_pairs(n_pairs, seed))
    return gaps[min(round(q * n_pairs), n_pairs - 1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("sweep", help="a sweep's --out directory (holds cells/<method>-<kind>-<rate>-s<seed>/)")
    ap.add_argument("--methods", default="sail,oracle_robust")
    ap.add_argument("--cells", default="flip-0", help="kind-rate pairs, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--below", type=float, default=0.2, help="gold-margin threshold of the 'small' column")
    ap.add_argument("--quantile", type=float, default=0.1)
    ap.add_argument("--train-pairs", type=int, default=256, help="the sweep's --train-pairs")
    a = ap.parse_args(argv)
    sweep, seeds = Path(a.sweep), [int(s) for s in a.seeds.split(",")]
    if not (sweep / "cells").is_dir():
        print(f"online_pairs: {sweep / 'cells'} not found (give a sweep's --out directory)", file=sys.stderr)
        return 2
    print(f"| method | cell | seed | pairs | mean length | gold tie | non-zero gold margin below {a.below:g} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method in a.methods.split(","):
        for cell in a.cells.split(","):
            for seed in seeds:
                path = sweep / "cells" / f"{method}-{cell}-s{seed}" / "generations.jsonl"
                if not path.is_file():
                    print(f"online_pairs: skipping {path} (not found)", file=sys.stderr)
                    continue
                s = pair_stats([json.loads(line) for line in path.read_text().splitlines() if line], a.below)
                print(f"| {method} | {cell} | {seed} | {s['pairs']} | {s['length']:.1f} | {s['tied']:.2f} | "
                      f"{s['small']:.2f} |")
    gaps = ", ".join(f"{train_gap_quantile(a.train_pairs, s, a.quantile):.3f}" for s in seeds)
    print(f"\ntraining pairs' |score gap| at quantile {a.quantile:g}, seeds {a.seeds}: {gaps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
