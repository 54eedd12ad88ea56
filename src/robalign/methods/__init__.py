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

from robalign.methods.gapo import build_gapo, validate_gapo_params  # noqa: E402  (registers the gapo: section)

METHODS["gapo"] = (validate_gapo_params, build_gapo)

from robalign.methods import oracle_robust as _oracle_robust  # noqa: E402  (registers online:, oracle_robust:)
from robalign.methods import sail as _sail  # noqa: E402  (registers the sail: section)

METHODS["sail"] = (_sail.validate_params, _sail.build)
METHODS["oracle_robust"] = (_oracle_robust.validate_params, _oracle_robust.build)


def validate_method(name: str, params: dict) -> dict:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name][0](params)


def build_method(name: str, params: dict, cfg=None) -> Method:
    validate_method(name, params)
    return METHODS[name][1](params, cfg)


__all__ = ["METHODS", "Method", "StepResult", "build_method", "validate_method"]
