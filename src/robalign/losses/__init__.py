"""Preference losses: pure functions of sequence log-probs (SPEC §2)."""

from robalign.losses.offline import (
    COMMON_DEFAULTS,
    LOSSES,
    LossOutput,
    LossSpec,
    PairLogps,
    preference_loss,
    validate_loss_params,
)

__all__ = [
    "COMMON_DEFAULTS",
    "LOSSES",
    "LossOutput",
    "LossSpec",
    "PairLogps",
    "preference_loss",
    "validate_loss_params",
]
