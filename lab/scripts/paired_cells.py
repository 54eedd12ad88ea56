"""Paired difference of two finished sweep cells on the same held-out pairs (e.g. across sweep folders).

    .venv/bin/python lab/scripts/paired_cells.py outputs/study/keep/cells/dpo-flip-0.4-s0 \
        outputs/study/pilot2/cells/dpo-flip-0.4-s0 [--metric h] [--resamples 4000]

Reads each cell's `heldout_margins.safetensors` (per-pair held-out margins of every evaluation, in the same
order for every cell of one seed and held-out size), takes the last evaluation, and prints accuracy(A) −
accuracy(B) with a 95 % bootstrap interval over the held-out pairs (a tie counts half, as everywhere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def correctness(margins: torch.Tensor) -> torch.Tensor:
    return (margins > 0).double() + 0.5 * (margins == 0).double()


def paired(a: torch.Tensor, b: torch.Tensor, resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference, 2.5 % and 97.5 % bootstrap quantiles) of per-pair correctness a − b."""
    d = correctness(a) - correctness(b)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (resamples, len(d)), generator=g)].mean(1)
    return d.mean().item(), means.quantile(0.025).item(), means.quantile(0.975).item()


def main(argv=None) -> int:
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metric", choices=["h", "M"], default="h")
    ap.add_argument("--resamples", type=int, default=4000)
    args = ap.parse_args(argv)
    tables = []
    for cell in (args.a, args.b):
        path = Path(cell) / "heldout_margins.safetensors"
        if not path.is_file():
            print(f"{path}: not found (is the cell finished?)", file=sys.stderr)
            return 2
        tables.append(load_file(path)[args.metric][-1])
    if tables[0].shape != tables[1].shape:
        print("the cells were evaluated on different held-out sets", file=sys.stderr)
        return 2
    mean, lo, hi = paired(*tables, args.resamples)
    print(f"accuracy_{args.metric}: {correctness(tables[0]).mean():.3f} - {correctness(tables[1]).mean():.3f} = "
          f"{mean:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}] over {len(tables[0])} held-out pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
