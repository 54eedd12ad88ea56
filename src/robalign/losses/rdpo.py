"""Provably robust DPO (rDPO): an unbiased estimate of the clean-label DPO loss when labels flip at random
with known rate ε (Chowdhury, Kini, Natarajan 2024, arXiv 2403.00409, Eq. 8).

Loss: ℓ(h) = [(1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1 − 2ε)
      unbiased: (1−ε)·ℓ(h) + ε·ℓ(−h) = −log σ(βh)
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
    method = "rdpo"
    # ε = 0.5 divides by zero and ε > 0.5 inverts the labels: an error, not a warning.
    epsilon: float = setting(0.1, EPSILON_HELP, ge=0, lt=0.5)


def rdpo(p: PairLogps, *, beta: float, epsilon: float) -> tuple[Tensor, Tensor]:
    """Provably robust DPO: [(1−ε)softplus(−βh) − ε softplus(βh)] / (1−2ε).

    The minus sign and the second term make the loss unbiased under label flips at rate ε:
    (1−ε)·rdpo(h) + ε·rdpo(−h) = dpo(h).
    """
    h = dpo_margin(p)
    # rDPO, Eq. (8), arXiv 2403.00409 (Chowdhury, Kini, Natarajan 2024)
    loss = ((1.0 - epsilon) * F.softplus(-beta * h) - epsilon * F.softplus(beta * h)) / (1.0 - 2.0 * epsilon)
    return loss, h


LOSS = Loss("rdpo", rdpo, Params)
