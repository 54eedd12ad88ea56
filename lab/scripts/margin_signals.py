"""How well do a pair's training margins flag its flipped label? (stage (d) of the study, item 3 of issue 25).

    .venv/bin/python lab/scripts/margin_signals.py CELL [CELL ...]

Reads each finished cell's `train_margins.safetensors` (each training pair's margin in every epoch, written by
the trainer) and prints, per cell, the flip AUROC of three scores (higher = more likely flipped):
- `−margin, epoch e`: the margin when the model met the pair in epoch e (e = 1, 2, …, the last), i.e. before
  (epoch 1) and after it had trained on it;
- `−AUM`: minus the area under the margin, the mean margin over all epochs (Pleiss et al. 2020,
  arXiv 2001.10528, for classifiers: mislabelled examples are learned late, so their area is low);
- `−AUM, first half`: the same over the first half of the epochs, before memorisation flattens the margins.
An AUROC of 0.5 is chance; the base model's own margin flags the flips of the built-in task at ≈ 0.64
(`lab/scripts/flip_signals.py`). A signal worth filtering with must do clearly better than that.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch


def signals(margin: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores per pair (higher = more likely flipped) from the [E, N] margin table."""
    e = margin.shape[0]
    out = {f"-margin, epoch {k + 1}": -margin[k] for k in range(e)}
    out["-AUM"] = -margin.nanmean(0)
    out["-AUM, first half"] = -margin[: max(1, e // 2)].nanmean(0)
    return out


def aurocs(margin: torch.Tensor, is_flipped: torch.Tensor) -> dict[str, float]:
    from robalign.pair_history import flip_aurocs

    return flip_aurocs(margin, is_flipped, signals(margin))


def main(argv=None) -> int:
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="+")
    args = ap.parse_args(argv)
    for cell in args.cells:
        path = Path(cell) / "train_margins.safetensors"
        if not path.is_file():
            print(f"{cell}: no train_margins.safetensors (cells trained before it was written)", file=sys.stderr)
            return 2
        table = load_file(str(path))
        result = aurocs(table["margin"], table["is_flipped"])
        flipped = int((table["is_flipped"] == 1).sum())
        print(f"{cell}: {flipped} flipped of {table['margin'].shape[1]} pairs, {table['margin'].shape[0]} epochs")
        for name, value in result.items():
            print(f"  flip AUROC of {name:<22} {'n/a' if math.isnan(value) else f'{value:.3f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
