"""What a training method is: capabilities the trainer reads, and one `step` that returns a loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robalign.pair_logps import PairLogps
from robalign.stats import correctness


@dataclass
class StepResult:
    """What one micro-batch produced.

    Attributes:
        loss: scalar to backpropagate (already the micro-batch mean).
        metrics: detached scalar tensors, averaged over micro-batches and processes by the trainer.
        per_pair: detached [B] tensors written per pair (e.g. GAPO gaps and weights), optional.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    per_pair: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base of every training method.

    Class attributes are capabilities the trainer reads instead of checking names:
        needs_reference: load a reference model (or cache) and pass its log-probs.
        online: the method generates its own pairs (prompt-only data is enough).
        log_pairs: the per-pair records of every step are written to pairs.jsonl.
        fp32_step: the step runs without autocast under mixed precision (on the fp32 master weights).
    """

    name: str = ""
    needs_reference: bool = True
    online: bool = False
    log_pairs: bool = False  # write StepResult.per_pair rows to pairs.jsonl
    fp32_step: bool = False

    @property
    def margin_key(self) -> str:
        """The held-out margin that scores this method (its implicit reward): 'h', the log-ratio to the
        reference, or 'M', the length-normalised margin, for a method that never sees a reference."""
        return "h" if self.needs_reference else "M"

    def step(self, policy, reference, batch) -> StepResult:  # pragma: no cover - interface
        raise NotImplementedError

    def activation_checkpointing_problem(self, mode: str) -> str | None:
        """Why this method cannot train with `train.activation_checkpointing: mode`, or None if it can."""
        return None

    def trunk_cache_problem(self, train_last_k: int) -> str | None:
        """Why this method cannot train from a cached frozen trunk (`model.trunk_cache`), or None if it can."""
        if self.online:
            return "its pairs are generated anew every step, so no trunk output is ever met twice"
        return None

    def precision_problem(self, weights: str) -> str | None:
        """Why this method cannot train weights stored in `weights` ('fp32', 'bf16', 'fp16'), or None."""
        return None

    def bind(self, tokenizer) -> None:
        """Receives the tokenizer before training (methods that decode their own generations)."""

    def begin(self, out_dir, step: int, resumed: bool) -> None:
        """Called on every process when the loop starts at `step` (after a resume, at its checkpoint)."""

    def after_optimizer_step(self, model) -> None:
        """Called after every optimiser step, skipped ones included (e.g. a projection)."""

    def finalize(self, out_dir) -> None:
        """Called once at the end of a run on the main process (e.g. to draw the method's plots)."""


def reward_metrics(policy: PairLogps, chosen_rewards, rejected_rewards) -> dict[str, torch.Tensor]:
    """The conventional per-step names (TRL's), as detached batch means.

    Metrics:
        rewards/chosen: implicit reward of the chosen response, β(lp_θ(y_w) − lp_ref(y_w)) (β·avg_θ(y_w)
            without a reference model).
        rewards/rejected: the same for the rejected response y_l.
        rewards/margins: rewards/chosen − rewards/rejected.
        rewards/accuracies: share of pairs whose reward margin is positive (a tie counts ½).
        logps/chosen: summed completion log-prob lp_θ(y_w) of the policy.
        logps/rejected: lp_θ(y_l).
    """
    margins = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": correctness(margins, torch.float32).mean(),  # a tie counts half, as in evaluation
        "logps/chosen": policy.chosen.detach().mean(),
        "logps/rejected": policy.rejected.detach().mean(),
    }
