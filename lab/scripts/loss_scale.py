"""Why several robust losses track DPO in the small-budget sweeps: how far β·h gets, what that makes of each
loss's gradient, and how closely each method's held-out accuracy follows DPO's cell by cell.

    .venv/bin/python lab/scripts/loss_scale.py outputs/results/hh [--kinds flip]

1. The batch-mean implicit reward margin β·h (`rewards/margins`) logged at every step of the finished DPO
   cells of those noise kinds: median, 90th percentile (q90) and maximum in absolute value.
2. For each loss on h, its per-pair gradient in h divided by DPO's, taken by autograd through
   `robalign.losses` with the sweep's parameters (`robalign.experiments.spec.METHOD_DEFAULTS`) on one batch of 40
   pairs whose β·h span [−q90, q90]: its range and max ÷ min. AdamW divides each
   parameter's step by a running root-mean-square of its gradients, so a loss whose gradient is DPO's
   times a near-constant factor (max ÷ min near 1) takes nearly DPO's steps.
3. Per method, paired with DPO's cell of the same kind, rate and seed: in how many cells its clean
   held-out accuracy_h equals DPO's, and the mean |difference| in held-out pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from robalign.experiments.spec import METHOD_DEFAULTS
from robalign.losses import LOSSES, preference_loss

ON_H = ["cdpo", "rdpo", "hinge", "sympo", "drdpo", "ipo", "oracle_robust_offline"]  # losses of the margin h, besides dpo


def finished_cells(out: Path, kinds: list[str]) -> dict[tuple[str, str, str, str], Path]:
    """(method, kind, rate, seed) -> cell directory, for the finished cells of `kinds` (rate 0 is any kind's)."""
    cells = {}
    for cell in sorted((out / "cells").iterdir()):
        method, kind, rate, seed = cell.name.rsplit("-", 3)
        if (kind in kinds or rate == "0") and (cell / "result.json").is_file():
            cells[method, kind, rate, seed] = cell
    return cells


def logged_margins(cells: dict, method: str = "dpo") -> list[float]:
    """|rewards/margins| of every logged step of `method`'s cells."""
    found = []
    for (m, *_), cell in cells.items():
        if m == method:
            rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
            found += [abs(r["rewards/margins"]) for r in rows if "rewards/margins" in r]
    return found


def grad_in_h(method: str, beta_h: torch.Tensor) -> torch.Tensor:
    """d loss / d h_i of one batch of pairs whose margins are β·h = `beta_h`, with the sweep's parameters."""
    params = {**LOSSES[method].defaults, **METHOD_DEFAULTS.get(method, {})}
    chosen = (beta_h / params["beta"]).to(torch.float64).requires_grad_(True)
    zero = torch.zeros_like(chosen)
    loss = preference_loss(
        method,
        chosen_logps=chosen,
        rejected_logps=zero,
        ref_chosen_logps=zero,
        ref_rejected_logps=zero,
        **params,
    ).loss
    (g,) = torch.autograd.grad(loss, chosen)
    return g


def agreement(cells: dict, method: str) -> tuple[int, int, float]:
    """(cells with acc_h equal to DPO's, cells paired, mean |acc_h − DPO's| in held-out pairs)."""
    diffs = []
    for (m, kind, rate, seed), cell in cells.items():
        if m == method and ("dpo", kind, rate, seed) in cells:
            mine = json.loads((cell / "result.json").read_text())
            dpo = json.loads((cells["dpo", kind, rate, seed] / "result.json").read_text())
            diffs.append(abs(mine["accuracy_h"] - dpo["accuracy_h"]) * mine["pairs"])
    if not diffs:
        return 0, 0, float("nan")
    return sum(d < 0.5 for d in diffs), len(diffs), statistics.fmean(diffs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a bench robustness output directory")
    ap.add_argument("--kinds", default="flip", help="noise kinds whose cells count (rate-0 cells always do)")
    ap.add_argument("--methods", default="cdpo,rdpo,hinge,sympo,drdpo,ipo,oracle_robust_offline,hypo,simpo,gapo")
    a = ap.parse_args(argv)
    if not (a.out / "cells").is_dir():
        print(f"loss_scale: {a.out} holds no sweep cells (no {a.out / 'cells'})", file=sys.stderr)
        return 2
    cells = finished_cells(a.out, a.kinds.split(","))
    margins = logged_margins(cells)
    if not margins:
        print(f"loss_scale: no finished dpo cell of kinds {a.kinds} in {a.out}", file=sys.stderr)
        return 2
    q90 = statistics.quantiles(margins, n=10)[-1]
    print(
        f"|batch-mean β·h| over {len(margins)} logged steps of dpo: median {statistics.median(margins):.3f}, "
        f"90th percentile {q90:.3f}, max {max(margins):.3f}\n"
    )
    grid = torch.linspace(-q90, q90, 40, dtype=torch.float64)  # even: no pair sits on oracle_robust_offline's kink at 0
    dpo = grad_in_h("dpo", grid)
    print(
        "| method | gradient ÷ dpo, range over β·h in ±q90 | max ÷ min | acc_h = dpo's | mean abs Δ acc_h (pairs) |"
    )
    print("|---|---:|---:|---:|---:|")
    for method in a.methods.split(","):
        same, paired, mean_diff = agreement(cells, method)
        if method in ON_H:
            r = grad_in_h(method, grid) / dpo
            lo, hi = r.min().item(), r.max().item()
            spread = f"{hi / lo:.2f}" if lo > 0 else "sign changes"  # IPO pushes back once h > 1/(2β)
            ratio = f"{lo:.3f}–{hi:.3f} | {spread}"
        else:
            ratio = (
                "– | –"  # another margin (M, or HyPO's clipped reference): no ratio to DPO's gradient in h
            )
        print(f"| {method} | {ratio} | {same} of {paired} | {mean_diff:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
