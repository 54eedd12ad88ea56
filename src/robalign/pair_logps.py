"""The sequence log-probs of a batch of preference pairs, the one container the log-prob engine, the
reference providers, the losses and the methods pass around, and the two margins made from it.

Shapes: B = number of pairs. Log-probs are token **sums** over each completion, as in DPO (Rafailov et
al. 2023). Imports only torch, like the losses that read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of B preference pairs, with the reference model's when a margin needs them.

    The log-prob engine (`robalign.logprobs.sequence_logps`) and the reference providers
    (`robalign.reference`) each return the log-probs of the model they ran, without reference fields;
    `with_reference` joins the policy's and the reference's into the one value the margins read.

    Attributes:
        chosen: [B] lp(y_w), summed completion log-probs of the chosen response.
        rejected: [B] lp(y_l).
        chosen_lengths: [B] completion token counts len(y_w) (≥ 1), or None where a caller has none.
        rejected_lengths: [B] len(y_l), or None.
        ref_chosen: [B] lp_ref(y_w) of the reference model, or None (reference-free).
        ref_rejected: [B] lp_ref(y_l), or None.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    def detach(self) -> PairLogps:
        """The log-probs without their graph (the lengths and reference log-probs have none)."""
        return dataclasses.replace(self, chosen=self.chosen.detach(), rejected=self.rejected.detach())

    def to(self, device) -> PairLogps:
        """Every tensor on `device`."""
        moved = (getattr(self, f.name) for f in dataclasses.fields(self))
        return PairLogps(*(None if t is None else t.to(device) for t in moved))

    def mean(self) -> tuple[Tensor, Tensor]:
        """Token-averaged log-probs (chosen, rejected), [B] each."""
        return self.chosen / self.chosen_lengths, self.rejected / self.rejected_lengths

    def with_reference(self, ref: PairLogps | None) -> PairLogps:
        """These log-probs with `ref`'s (a reference provider's answer for the same batch) as the
        reference fields; unchanged for `ref` None (a reference-free method)."""
        if ref is None:
            return self
        return dataclasses.replace(self, ref_chosen=ref.chosen, ref_rejected=ref.rejected)

    def labelled(self, y1_preferred: Tensor) -> PairLogps:
        """The pairs as labelled, winner first: for pairs (y1, y2) in the (chosen, rejected) slots, pair i
        keeps its order where `y1_preferred[i]` and is swapped where not; every field follows."""

        def pick(first: Tensor | None, second: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
            if first is None:
                return None, None
            return torch.where(y1_preferred, first, second), torch.where(y1_preferred, second, first)

        return PairLogps(*pick(self.chosen, self.rejected), *pick(self.chosen_lengths, self.rejected_lengths),
                         *pick(self.ref_chosen, self.ref_rejected))


def dpo_margin(p: PairLogps) -> Tensor:
    """h = [lp_θ(y_w) − lp_ref(y_w)] − [lp_θ(y_l) − lp_ref(y_l)], shape [B]; `p` must carry the reference."""
    return (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)  # DPO's log-ratio margin


def length_normalised_margin(p: PairLogps) -> Tensor:
    """M = avg_θ(y_w) − avg_θ(y_l) = lp_θ(y_w)/len(y_w) − lp_θ(y_l)/len(y_l), shape [B]; no reference."""
    chosen, rejected = p.mean()
    return chosen - rejected
