"""DPO: softplus(−βh) (Rafailov et al. 2023, arXiv 2305.18290)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import BetaParams, Loss, PairLogps, dpo_margin


@dataclass
class Params(BetaParams):
    method = "dpo"


def dpo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """DPO: softplus(−βh)."""
    h = dpo_margin(p)
    return F.softplus(-beta * h), h  # DPO, Eq. (7), Rafailov et al. 2023 (arXiv 2305.18290)


LOSS = Loss("dpo", dpo, Params)
