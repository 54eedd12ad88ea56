"""DPO, direct preference optimisation: the Bradley–Terry log-likelihood of the observed labels under the
implicit reward β·log π_θ/π_ref (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7).

Loss: ℓ = −log σ(βh) = softplus(−βh)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import BetaParams, Loss
from robalign.pair_logps import PairLogps, dpo_margin


@dataclass
class Params(BetaParams):
    method = "dpo"


def dpo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """DPO: softplus(−βh)."""
    h = dpo_margin(p)
    return F.softplus(-beta * h), h  # DPO, Eq. (7), Rafailov et al. 2023 (arXiv 2305.18290)


LOSS = Loss("dpo", dpo, Params)
