"""What every offline loss shares: the lengths a loss may require, the SFT term, the result, and `Loss`,
the registry entry a loss module declares. Losses read `robalign.pair_logps.PairLogps` and its margins.

Shapes: B = number of pairs. All log-probs are token **sums** over the completion, as in DPO (Rafailov et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from robalign.pair_logps import PairLogps
from robalign.settings import Params, setting


@dataclass(frozen=True)
class LossOutput:
    """Result of `preference_loss`.

    Attributes:
        loss: scalar batch loss to backpropagate.
        per_pair: [B] per-pair loss including the SFT term (for drdpo: the per-pair DPO losses; its
            batch loss is −β′ log mean_i exp(−ℓ_i/β′) over the DPO losses, plus the mean SFT term).
        chosen_rewards: [B] detached β(lp_θ(y_w) − lp_ref(y_w)); β·avg_θ(y_w) for reference-free losses.
        rejected_rewards: [B] detached, same for y_l.
        margin: [B] detached implicit-reward margin the loss acts on (h, M, ...).
    """

    loss: Tensor
    per_pair: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margin: Tensor


# --- lengths and the SFT term ------------------------------------------------------------------------


def lengths(p: PairLogps, why: str) -> tuple[Tensor, Tensor]:
    """(len(y_w), len(y_l)), each [B]; raises ValueError naming `why` when they were not given."""
    if p.chosen_lengths is None or p.rejected_lengths is None:
        raise ValueError(f"chosen_lengths and rejected_lengths are required {why}")
    return p.chosen_lengths, p.rejected_lengths


def sft_nll(p: PairLogps, reduction: str) -> Tensor:
    """NLL of the chosen response, [B]: token mean (default) or sequence sum (RPO)."""
    nll = -p.chosen  # SFT / RPO term, Liu et al. 2024 (arXiv 2405.16436)
    if reduction == "mean":
        if p.chosen_lengths is None:
            raise ValueError("chosen_lengths is required for the SFT term with sft_reduction='mean'")
        nll = nll / p.chosen_lengths
    return nll


# --- parameters and the registry entry ---------------------------------------------------------------

BETA_HELP = "Inverse temperature β of the implicit reward."
EPSILON_HELP = "Assumed flip rate ε of the training labels."
RHO_HELP = "Robustness radius ρ of the penalty ρβ|h|."
GAMMA_HELP = "Target margin γ."


@dataclass
class SftParams(Params):
    """The SFT (RPO) term on the chosen response, which every offline loss and gapo accept."""

    last = ("sft_weight", "sft_reduction")

    sft_weight: float = setting(0.0, "Weight of the SFT (RPO) term NLL(chosen) added to the loss.", ge=0)
    sft_reduction: str = setting("mean", "SFT NLL over tokens: 'mean' or 'sum' (Liu et al.'s RPO).",
                                 choices=("mean", "sum"))


@dataclass
class BetaParams(SftParams):
    """β of the implicit reward β·log π_θ/π_ref at its usual default, which most offline losses take."""

    beta: float = setting(0.1, BETA_HELP, gt=0)


def mean_reduce(per_pair: Tensor, params: dict) -> Tensor:
    return per_pair.mean()


@dataclass(frozen=True)
class Loss:
    """An offline loss: what it needs and how it is computed (one per module, listed in `LOSSES`).

    Attributes:
        name: registry key.
        fn: pure per-pair function `fn(PairLogps, **params) -> (per_pair [B], margin [B])`, taking the
            fields of `params` other than the SFT term's.
        params: its `Params` dataclass (defaults, help, valid ranges).
        needs_reference: whether reference log-probs are required (False only for simpo).
        reduce: `reduce(per_pair [B], params) -> scalar` batch reduction of the base loss.
    """

    name: str
    fn: Callable[..., tuple[Tensor, Tensor]]
    params: type[SftParams]
    needs_reference: bool = True
    reduce: Callable[[Tensor, dict], Tensor] = field(default=mean_reduce)

    @property
    def defaults(self) -> dict:
        """The loss's own parameters and their defaults, without the SFT term's."""
        common = SftParams.keys()
        return {k: v for k, v in self.params.defaults().items() if k not in common}
