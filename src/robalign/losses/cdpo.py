"""Conservative DPO (cDPO): DPO with label smoothing, trusting each label with probability 1 − ε (Mitchell
2023, "A note on DPO with noisy preferences & relationship to IPO"; analysed by Chowdhury, Kini, Natarajan
2024, arXiv 2403.00409).

Loss: ℓ = (1−ε)·(−log σ(βh)) + ε·(−log σ(−βh))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import EPSILON_HELP, BetaParams, Loss
from robalign.pair_logps import PairLogps, dpo_margin
from robalign.settings import setting


@dataclass
class Params(BetaParams):
    method = "cdpo"
    # ε = 0.5 divides rDPO by zero and ε > 0.5 inverts the labels: an error, not a warning.
    epsilon: float = setting(0.1, EPSILON_HELP, ge=0, lt=0.5)


def cdpo(p: PairLogps, *, beta: float, epsilon: float) -> tuple[Tensor, Tensor]:
    """Conservative DPO (label smoothing): (1−ε)softplus(−βh) + ε softplus(βh)."""
    h = dpo_margin(p)
    # cDPO / label smoothing, Mitchell 2023 ("A note on DPO with noisy preferences")
    return (1.0 - epsilon) * F.softplus(-beta * h) + epsilon * F.softplus(beta * h), h


LOSS = Loss("cdpo", cdpo, Params)
