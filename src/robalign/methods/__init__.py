"""Training methods by name. One dict maps names to (validate, build); the trainer reads capabilities.

Importing a method module also registers its config section (`gapo:`, `online:`, `sail:`,
`oracle_robust:`) with `robalign.config`.
"""

from __future__ import annotations

from robalign.losses import LOSSES, validate_loss_params
from robalign.methods import gapo, oracle_robust, sail
from robalign.methods.base import Method, StepResult
from robalign.methods.offline import PreferenceLossMethod


def _loss_entry(name: str):
    return (lambda params: validate_loss_params(name, params),
            lambda params, cfg: PreferenceLossMethod(name, validate_loss_params(name, params)))


# name -> (validate(params) -> params, build(params, run_config) -> Method)
METHODS: dict = {
    **{name: _loss_entry(name) for name in LOSSES},
    "gapo": (gapo.validate_gapo_params, gapo.build_gapo),
    "sail": (sail.validate_params, sail.build),
    "oracle_robust": (oracle_robust.validate_params, oracle_robust.build),
}


def validate_method(name: str, params: dict) -> dict:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name][0](params)


def build_method(name: str, params: dict, cfg=None) -> Method:
    validate_method(name, params)
    return METHODS[name][1](params, cfg)


__all__ = ["METHODS", "Method", "StepResult", "build_method", "validate_method"]
