"""SymPO: a symmetric loss ℓ(z) + ℓ(−z) = 1 on z = βh; symmetric losses keep the learned reward
rank-preserving under label noise (Nishimori et al. 2025, "On Symmetric Losses for Robust Policy
Optimization with Noisy Preferences", arXiv 2505.24709).

Loss: z = βh
      kind: ramp     ℓ = clip(½ − ½z, 0, 1)
      kind: sigmoid  ℓ = σ(−z)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robalign.losses.common import BetaParams, Loss
from robalign.pair_logps import PairLogps, dpo_margin
from robalign.settings import setting


@dataclass
class Params(BetaParams):
    method = "sympo"
    kind: str = setting("ramp", "Loss shape: 'ramp' clip(0.5 − 0.5z, 0, 1) or 'sigmoid' σ(−z).",
                        choices=("ramp", "sigmoid"))


def sympo(p: PairLogps, *, beta: float, kind: str) -> tuple[Tensor, Tensor]:
    """Symmetric loss ℓ(z) + ℓ(−z) = 1 on z = βh: ramp clip(0.5 − 0.5z, 0, 1) or sigmoid σ(−z)."""
    h = dpo_margin(p)
    z = beta * h
    # SymPO symmetric losses (ramp / sigmoid), Nishimori et al. 2025 (arXiv 2505.24709)
    loss = torch.clamp(0.5 - 0.5 * z, 0.0, 1.0) if kind == "ramp" else torch.sigmoid(-z)
    return loss, h


LOSS = Loss("sympo", sympo, Params)
