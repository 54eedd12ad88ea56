"""Preference losses: pure functions of sequence log-probs, one module per offline loss."""

from robalign.losses.offline import (
    COMMON_DEFAULTS,
    LOSSES,
    Loss,
    LossOutput,
    PairLogps,
    loss_params,
    preference_loss,
    validate_loss_params,
)

__all__ = [
    "COMMON_DEFAULTS",
    "LOSSES",
    "Loss",
    "LossOutput",
    "PairLogps",
    "loss_params",
    "preference_loss",
    "validate_loss_params",
]
