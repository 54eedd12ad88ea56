"""IPO: regresses the log-ratio margin onto the finite target 1/(2β) instead of pushing it without bound,
so deterministic preferences cannot drive the policy away from the reference (Azar et al. 2023,
arXiv 2310.12036, Eq. 17).

Loss: ℓ = (h − 1/(2β))²
      with normalize_length: true, h uses length-averaged log-ratios lp/len instead of sums (TRL's ipo)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from robalign.losses.common import BetaParams, Loss, lengths
from robalign.pair_logps import PairLogps, dpo_margin
from robalign.settings import setting


@dataclass
class Params(BetaParams):
    method = "ipo"
    normalize_length: bool = setting(False, "IPO on length-averaged log-ratios instead of sums (TRL's ipo).")


def avg_dpo_margin(p: PairLogps) -> Tensor:
    """h with each log-ratio divided by its completion length, shape [B]."""
    lw, ll = lengths(p, "by ipo with normalize_length=True")
    return (p.chosen - p.ref_chosen) / lw - (p.rejected - p.ref_rejected) / ll


def ipo(p: PairLogps, *, beta: float, normalize_length: bool) -> tuple[Tensor, Tensor]:
    """IPO: (h − 1/(2β))², optionally on length-averaged log-ratios."""
    h = avg_dpo_margin(p) if normalize_length else dpo_margin(p)
    return (h - 1.0 / (2.0 * beta)) ** 2, h  # IPO, Eq. (17), Azar et al. 2023 (arXiv 2310.12036)


LOSS = Loss("ipo", ipo, Params)
