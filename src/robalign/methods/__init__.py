"""Training methods by name. One dict maps names to (validate, build); the trainer reads capabilities.

Importing a method module also registers its config section (`gapo:`, `online:`, `sail:`,
`oracle_robust:`) with `robalign.config`.
"""

from __future__ import annotations

import logging

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


# TRL's `DPOConfig.loss_type` names, where TRL computes the same loss (trl 1.16, DPOTrainer.dpo_loss):
# `sigmoid` is DPO; `robust` is rDPO, TRL's `label_smoothing` being our ε. TRL's `hinge` is our `hinge`.
# TRL's `ipo` averages the log-ratios over completion tokens: our `ipo` with `normalize_length: true` (our
# default keeps SPEC's sums), so it is documented, not aliased.
ALIASES = {"sigmoid": "dpo", "robust": "rdpo"}
_RENAMED = {"robust": "oracle_robust_offline"}  # our former names that now mean something else
_warned: set = set()


def canonical_name(name: str, params: dict | None = None) -> str:
    """The method `name` stands for: TRL's loss names map to ours (`ALIASES`).

    Raises:
        ValueError: `robust` with `rho`, i.e. a config written for our former `robust` loss (DPO + ρβ|h|),
            which TRL's `robust` (rDPO) is not.
    """
    if name in _RENAMED and "rho" in (params or {}):
        raise ValueError(f"{name!r} with rho is robalign's former name of DPO + ρβ|h|, now called "
                         f"{_RENAMED[name]!r} (method.name: {_RENAMED[name]}); {name!r} now means TRL's "
                         f"{name!r} loss, which is {ALIASES[name]} and takes epsilon")
    if name in _RENAMED and name not in _warned:
        _warned.add(name)
        logging.getLogger(__name__).warning(
            "method %r is TRL's name for %s (trained as %s); robalign's former %r loss is now %r", name,
            ALIASES[name], ALIASES[name], name, _RENAMED[name])
    return ALIASES.get(name, name)


def validate_method(name: str, params: dict) -> dict:
    name = canonical_name(name, params)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name][0](params)


def build_method(name: str, params: dict, cfg=None) -> Method:
    validate_method(name, params)
    name = canonical_name(name, params)
    return METHODS[name][1](params, cfg)


__all__ = ["ALIASES", "METHODS", "Method", "StepResult", "build_method", "canonical_name", "validate_method"]
