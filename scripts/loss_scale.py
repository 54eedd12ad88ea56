"""Why cDPO and rDPO track DPO in the small-budget sweeps: how far β·h gets, and what that makes of their gradients.

    .venv/bin/python scripts/loss_scale.py outputs/results/hh [--methods dpo,cdpo,rdpo] [--kinds flip]
        [--epsilon 0.2] [--beta 0.1]

Reads the batch-mean implicit reward margin β·h (`rewards/margins`) logged at every step of the sweep's
finished cells of those methods and noise kinds, and prints its median, 90th percentile and maximum in
absolute value. Then, at β·h = 0 and at ± each of those values, the per-pair gradient of the cDPO and rDPO
losses in h divided by DPO's, taken by autograd through `robalign.losses` (not by a hand formula). AdamW
divides each parameter's step by a running root-mean-square of its gradients, so a loss whose gradient is
DPO's times a near-constant factor takes DPO's steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from robalign.losses import preference_loss


def logged_margins(out: Path, methods: list[str], kinds: list[str]) -> list[float]:
    """|rewards/margins| of every logged step of the finished cells of `methods` × `kinds` in `out`."""
    found = []
    for cell in sorted((out / "cells").iterdir()):
        method, kind = cell.name.split("-")[:2]
        if method not in methods or kind not in kinds or not (cell / "result.json").is_file():
            continue
        for line in (cell / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "rewards/margins" in row:
                found.append(abs(row["rewards/margins"]))
    return found


def grad_in_h(method: str, beta_h: float, beta: float, epsilon: float) -> float:
    """d loss / d h of one pair whose margin is h = beta_h / β."""
    chosen = torch.tensor([beta_h / beta], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    params = {"beta": beta} if method == "dpo" else {"beta": beta, "epsilon": epsilon}
    loss = preference_loss(
        method,
        chosen_logps=chosen,
        rejected_logps=zero,
        ref_chosen_logps=zero,
        ref_rejected_logps=zero,
        **params,
    ).loss
    (g,) = torch.autograd.grad(loss, chosen)
    return g.item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a bench robustness output directory")
    ap.add_argument("--methods", default="dpo,cdpo,rdpo")
    ap.add_argument("--kinds", default="flip")
    ap.add_argument("--epsilon", type=float, default=0.2, help="cDPO's and rDPO's ε in the sweep")
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args(argv)
    if not (a.out / "cells").is_dir():
        print(f"loss_scale: {a.out} holds no sweep cells (no {a.out / 'cells'})", file=sys.stderr)
        return 2
    margins = logged_margins(a.out, a.methods.split(","), a.kinds.split(","))
    if not margins:
        print(f"loss_scale: no finished cell of {a.methods} × {a.kinds} in {a.out}", file=sys.stderr)
        return 2
    q = statistics.quantiles(margins, n=10)
    points = {"median": statistics.median(margins), "90th percentile": q[-1], "max": max(margins)}
    print(
        f"|batch-mean β·h| over {len(margins)} logged steps: "
        + ", ".join(f"{k} {v:.3f}" for k, v in points.items())
    )
    print("\n| β·h | cdpo gradient ÷ dpo | rdpo gradient ÷ dpo |\n|---:|---:|---:|")
    for bh in [0.0] + [s * v for v in points.values() for s in (-1, 1)]:
        dpo = grad_in_h("dpo", bh, a.beta, a.epsilon)
        ratios = [grad_in_h(m, bh, a.beta, a.epsilon) / dpo for m in ("cdpo", "rdpo")]
        print(f"| {bh:+.3f} | {ratios[0]:.3f} | {ratios[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
