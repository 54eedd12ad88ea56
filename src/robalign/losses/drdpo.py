"""Dr.DPO, distributionally robust DPO: a batch-level log-mean-exp of the DPO losses that down-weights the pairs
with the largest loss, the likely mislabelled ones (Wu et al. 2024, arXiv 2407.07880).

Loss: ℓ_i = −log σ(βh_i) per pair
      batch loss −β′·log(mean_i exp(−ℓ_i/β′)), not a mean over pairs
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from robalign.losses.common import BetaParams, Loss
from robalign.losses.dpo import dpo
from robalign.pair_logps import PairLogps
from robalign.settings import setting


@dataclass
class Params(BetaParams):
    method = "drdpo"
    beta_prime: float = setting(1.0, "Temperature β′ of the batch-level log-mean-exp.", gt=0)


def drdpo(p: PairLogps, *, beta: float, beta_prime: float) -> tuple[Tensor, Tensor]:
    """Dr.DPO per-pair term: the plain DPO loss (the robustness is in `drdpo_reduce`)."""
    return dpo(p, beta=beta)


def drdpo_reduce(per_pair: Tensor, params: dict) -> Tensor:
    """−β′ log mean_i exp(−ℓ_i/β′), via logsumexp so large ℓ/β′ cannot overflow.

    Unlike the mean, this is not additive over pairs: split across ranks or micro-batches it equals the
    one-batch loss only if the per-pair losses are gathered first.
    """
    bp = params["beta_prime"]
    # Dr.DPO objective, Wu et al. 2024 (arXiv 2407.07880)
    return -bp * (torch.logsumexp(-per_pair / bp, dim=0) - math.log(per_pair.numel()))


LOSS = Loss("drdpo", drdpo, Params, reduce=drdpo_reduce)
