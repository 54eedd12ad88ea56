"""Paired difference of two finished sweep cells on the same held-out pairs (e.g. across sweep folders).

    .venv/bin/python lab/scripts/paired_cells.py outputs/study/keep/cells/dpo-flip-0.4-s0 \
        outputs/study/pilot2/cells/dpo-flip-0.4-s0 [--metric h]

`--metric gold`: the gold reward of the two cells' greedy generations on the same held-out prompts
(`gold_generations.jsonl`), A − B prompt by prompt; `--metric gold-base`: A's gold reward − the base model's.

Reads each cell's `heldout_margins.safetensors` (per-pair held-out margins of every evaluation, in the same
order for every cell of one seed and held-out size), takes the last evaluation, and prints accuracy(A) −
accuracy(B), each on its own implicit reward unless `--metric h|M` says otherwise (M for a reference-free
method such as SimPO, h otherwise), with a 95 % bootstrap interval over the held-out pairs (a tie counts half), computed as the
sweep report computes its paired tables (`robalign.stats`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(mean difference, 2.5 % and 97.5 % bootstrap quantiles) of per-pair correctness a − b."""
    from robalign.stats import correctness, hierarchical_bootstrap

    ci = hierarchical_bootstrap([correctness(a) - correctness(b)])
    return ci["mean"], ci["low"], ci["high"]


def own_reward(cell: Path) -> str:
    """'h' or 'M', the margin the cell's method trains (`robalign.experiments.cells.implicit_reward`)."""
    import json

    from robalign.experiments.cells import implicit_reward

    result = cell / "result.json"
    return implicit_reward(json.loads(result.read_text()) if result.is_file() else {}, cell)


def main(argv=None) -> int:
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metric", choices=["own", "h", "M", "gold", "gold-base"], default="own",
                    help="own: each cell's own implicit reward (M for a reference-free method, else h); gold: "
                         "gold reward of greedy generations, A − B; gold-base: A's − the base model's")
    args = ap.parse_args(argv)
    if args.metric.startswith("gold"):
        return _gold(Path(args.a), Path(args.b), args.metric)
    tables, keys = [], []
    for cell in (args.a, args.b):
        path = Path(cell) / "heldout_margins.safetensors"
        if not path.is_file():
            print(f"{path}: not found (is the cell finished?)", file=sys.stderr)
            return 2
        keys.append(args.metric if args.metric != "own" else own_reward(Path(cell)))
        tables.append(load_file(path)[keys[-1]][-1])
    if tables[0].shape != tables[1].shape:
        print("the cells were evaluated on different held-out sets", file=sys.stderr)
        return 2
    from robalign.stats import correctness

    mean, lo, hi = paired(*tables)
    label = f"accuracy_{keys[0]}" if keys[0] == keys[1] else f"accuracy_{keys[0]} - accuracy_{keys[1]}"
    print(f"{label}: {correctness(tables[0]).mean():.3f} - {correctness(tables[1]).mean():.3f} = "
          f"{mean:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}] over {len(tables[0])} held-out pairs")
    return 0


def _gold(a: Path, b: Path, metric: str) -> int:
    from robalign.experiments.paired_gold import gold_rewards
    from robalign.stats import hierarchical_bootstrap

    first, second = gold_rewards(a), gold_rewards(b)
    for cell, rewards in ((a, first), (b, second)):
        if rewards is None:
            print(f"{cell}/gold_generations.jsonl: not found (was the cell run with --gen-prompts?)", file=sys.stderr)
            return 2
    other = second["reference"] if metric == "gold-base" else second["policy"]
    if len(other) != len(first["policy"]):
        print("the cells decoded different held-out prompts", file=sys.stderr)
        return 2
    ci = hierarchical_bootstrap([first["policy"] - other])
    print(f"gold reward: {first['policy'].mean():.3f} - {other.mean():.3f} = {ci['mean']:+.3f}, 95 % interval "
          f"[{ci['low']:+.3f}, {ci['high']:+.3f}] over {len(other)} held-out prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
