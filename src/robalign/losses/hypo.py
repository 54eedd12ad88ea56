"""HyPO: the reference only counts when it agrees with the label (SPEC §2 hypo row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import BetaParams, Loss, PairLogps


@dataclass
class Params(BetaParams):
    method = "hypo"


def hypo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """HyPO: softplus(−β(Δ_θ − max(0, Δ_ref))); the reference only counts when it agrees with the label."""
    m = (p.chosen - p.rejected) - F.relu(p.ref_chosen - p.ref_rejected)  # HyPO = SPEC §2 hypo row
    return F.softplus(-beta * m), m


LOSS = Loss("hypo", hypo, Params)
