"""Training methods by name: `METHODS` maps each name to its `Params` and its builder; the trainer reads
capabilities (of the method and of its parameters), never names.

To add an offline loss, write its module under `robalign/losses/` and list its `LOSS` in `LOSSES`
(robalign.losses.offline): it is then a method too. A method with its own training step adds one line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from robalign.losses import LOSSES
from robalign.methods.base import Method, StepResult
from robalign.methods.gapo import GapoParams, build_gapo
from robalign.methods.offline import PreferenceLossMethod
from robalign.methods.oracle_robust import OracleRobustMethod, OracleRobustParams
from robalign.methods.sail import SailMethod, SailParams
from robalign.settings import Params


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its parameters and how to build it.

    Attributes:
        params: the method's `Params` dataclass (every setting, its default, help and valid values).
        build: `build(params, run_config or None) -> Method`.
    """

    params: type[Params]
    build: Callable[..., Method]


def _offline(name: str) -> MethodSpec:
    return MethodSpec(LOSSES[name].params, lambda params, cfg: PreferenceLossMethod(name, params))


METHODS: dict[str, MethodSpec] = {
    **{name: _offline(name) for name in LOSSES},
    "gapo": MethodSpec(GapoParams, build_gapo),
    "sail": MethodSpec(SailParams, SailMethod),
    "oracle_robust": MethodSpec(OracleRobustParams, OracleRobustMethod),
}


# TRL's `DPOConfig.loss_type` names, where TRL computes the same loss (trl 1.16, DPOTrainer.dpo_loss):
# `sigmoid` is DPO; `robust` is rDPO, TRL's `label_smoothing` being our ε. TRL's `hinge` is our `hinge`.
# TRL's `ipo` averages the log-ratios over completion tokens: our `ipo` with `normalize_length: true` (our
# default sums them, as DPO does), so it is documented, not aliased.
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


def method_params(name: str, params: dict | None = None) -> Params:
    """The `Params` of method `name` (an alias too) built from `params`, the method's defaults for the rest.

    Raises:
        ValueError: an unknown method, a parameter it does not take (the message lists those it takes), or an
            invalid value.
    """
    params = params or {}
    name = canonical_name(name, params)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name].params.from_dict(params)


def build_method(name: str, params: dict | Params | None = None, cfg=None) -> Method:
    """Method `name` with `params` (its `Params`, or a dict of parameters over the defaults)."""
    if not isinstance(params, Params):
        params = method_params(name, params)
    return METHODS[canonical_name(name)].build(params, cfg)


__all__ = ["ALIASES", "METHODS", "Method", "MethodSpec", "StepResult", "build_method", "canonical_name",
           "method_params"]
