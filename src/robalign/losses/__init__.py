"""Preference losses: pure functions of sequence log-probs (`robalign.pair_logps.PairLogps`), one module per
offline loss."""

from robalign.losses.offline import (
    COMMON_DEFAULTS,
    LOSSES,
    Loss,
    LossOutput,
    loss_params,
    preference_loss,
    validate_loss_params,
)

__all__ = [
    "COMMON_DEFAULTS",
    "LOSSES",
    "Loss",
    "LossOutput",
    "loss_params",
    "preference_loss",
    "validate_loss_params",
]
