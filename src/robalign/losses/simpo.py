"""SimPO: a reference-free loss on the length-normalised log-likelihood, with a target margin γ (Meng, Xia, Chen
2024, arXiv 2405.14734, Eq. 6).

Loss: ℓ = −log σ(βM − γ) = softplus(−(βM − γ))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from robalign.losses.common import GAMMA_HELP, Loss, SftParams, lengths
from robalign.pair_logps import PairLogps, length_normalised_margin
from robalign.settings import setting


@dataclass
class Params(SftParams):
    method = "simpo"
    beta: float = setting(2.0, "Inverse temperature β of the length-normalised reward.", gt=0)
    gamma: float = setting(0.5, GAMMA_HELP)


def simpo_margin(p: PairLogps) -> Tensor:
    """M = avg_θ(y_w) − avg_θ(y_l), shape [B]; no reference model."""
    lengths(p, "by simpo (length-normalised margin)")
    return length_normalised_margin(p)


def simpo(p: PairLogps, *, beta: float, gamma: float) -> tuple[Tensor, Tensor]:
    """SimPO: softplus(−(βM − γ)), reference-free and length-normalised."""
    m = simpo_margin(p)
    return F.softplus(-(beta * m - gamma)), m  # SimPO, Eq. (6), Meng et al. 2024 (arXiv 2405.14734)


LOSS = Loss("simpo", simpo, Params, needs_reference=False)
