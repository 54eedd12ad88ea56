"""SLiC-HF hinge: a margin loss on the log-ratio margin, zero once βh ≥ 1 (Zhao et al. 2023,
arXiv 2305.10425).

Loss: ℓ = max(0, 1 − βh)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import BetaParams, Loss
from robalign.pair_logps import PairLogps, dpo_margin


@dataclass
class Params(BetaParams):
    method = "hinge"


def hinge(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """SLiC hinge: max(0, 1 − βh)."""
    h = dpo_margin(p)
    return F.relu(1.0 - beta * h), h  # SLiC-HF hinge, Zhao et al. 2023 (arXiv 2305.10425)


LOSS = Loss("hinge", hinge, Params)
