"""Training methods by name. One dict maps names to builders; each builder validates its parameters."""

from __future__ import annotations

from robalign.losses import LOSSES, validate_loss_params
from robalign.methods.base import Method, StepResult
from robalign.methods.offline import PreferenceLossMethod

# name -> (validate(params) -> params, build(params, run_config) -> Method). Extended by gapo / online.
METHODS: dict = {}


def _register_losses():
    for name in LOSSES:
        METHODS[name] = (
            lambda params, _n=name: validate_loss_params(_n, params),
            lambda params, cfg, _n=name: PreferenceLossMethod(_n, validate_loss_params(_n, params)),
        )


_register_losses()


def validate_method(name: str, params: dict) -> dict:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name][0](params)


def build_method(name: str, params: dict, cfg=None) -> Method:
    validate_method(name, params)
    return METHODS[name][1](params, cfg)


__all__ = ["METHODS", "Method", "StepResult", "build_method", "validate_method"]
