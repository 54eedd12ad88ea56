"""Oracle-robust penalty, offline form: DPO plus the closed-form worst case over a preference oracle that may
move each preference probability by up to ρ (Li, Gaur, Aggarwal 2026, arXiv 2602.20457). Formerly named
`robust`, the name TRL uses for rDPO.

Loss: ℓ = −log σ(βh) + ρβ|h|
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import RHO_HELP, BetaParams, Loss
from robalign.pair_logps import PairLogps, dpo_margin
from robalign.settings import setting


@dataclass
class Params(BetaParams):
    method = "oracle_robust_offline"
    rho: float = setting(0.1, RHO_HELP, ge=0, lt=0.5)


def oracle_robust_offline(p: PairLogps, *, beta: float, rho: float) -> tuple[Tensor, Tensor]:
    """Oracle-robust penalty, offline form: softplus(−βh) + ρβ|h| (formerly `robust`, the name TRL uses for rDPO)."""
    h = dpo_margin(p)
    return F.softplus(-beta * h) + rho * beta * h.abs(), h  # offline form of L^W_ρ, arXiv 2602.20457


LOSS = Loss("oracle_robust_offline", oracle_robust_offline, Params)
