"""HyPO (Hybrid-DPO): DPO in which the reference margin only counts where the reference agrees with the label,
so a pessimistic reference no longer damps the update of a pair the policy still gets wrong (Yuan et al.
2026, "Mitigating Mismatch within Reference-based Preference Optimization", arXiv 2602.11902).

Loss: ℓ = −log σ(β·(Δ_θ − max(0, Δ_ref)))
      Δ_θ = lp_θ(y_w) − lp_θ(y_l),  Δ_ref = lp_ref(y_w) − lp_ref(y_l)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import BetaParams, Loss
from robalign.pair_logps import PairLogps


@dataclass
class Params(BetaParams):
    method = "hypo"


def hypo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """HyPO: softplus(−β(Δ_θ − max(0, Δ_ref))); the reference only counts when it agrees with the label."""
    m = (p.chosen - p.rejected) - F.relu(p.ref_chosen - p.ref_rejected)  # HyPO, arXiv 2602.11902
    return F.softplus(-beta * m), m


LOSS = Loss("hypo", hypo, Params)
