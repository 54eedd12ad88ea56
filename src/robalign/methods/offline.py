"""Offline direct-alignment methods: any loss of `robalign.losses` on a fixed preference batch."""

from __future__ import annotations

from robalign.logprobs import sequence_logps
from robalign.losses import LOSSES, loss_params, preference_loss
from robalign.methods.base import Method, StepResult, reward_metrics


class PreferenceLossMethod(Method):
    """One concatenated forward of the policy, reference log-probs from the provider, one loss call.

    Logs the rewards/* and logps/* metrics of `reward_metrics` only (for reference-free losses the rewards
    are β·avg_θ(y), those of the margin M).
    """

    def __init__(self, name: str, params=None):
        """`params`: the loss's `Params`, or a dict of its parameters (the loss's defaults for the rest)."""
        self.name = name
        self.params = params if params is not None and not isinstance(params, dict) else loss_params(name, params or {})
        self.needs_reference = LOSSES[name].needs_reference

    def step(self, policy, reference, batch) -> StepResult:
        lp = sequence_logps(policy, batch)
        ref = reference.logps(batch)
        out = preference_loss(
            self.name,
            chosen_logps=lp.chosen,
            rejected_logps=lp.rejected,
            ref_chosen_logps=None if ref is None else ref.chosen,
            ref_rejected_logps=None if ref is None else ref.rejected,
            chosen_lengths=lp.chosen_lengths,
            rejected_lengths=lp.rejected_lengths,
            **self.params.to_dict(),
        )
        metrics = reward_metrics(lp, out.chosen_rewards, out.rejected_rewards)
        margin = (out.chosen_rewards - out.rejected_rewards).detach()  # > 0: the observed label is preferred
        return StepResult(out.loss, metrics, {"loss": out.per_pair.detach(), "margin": margin})
