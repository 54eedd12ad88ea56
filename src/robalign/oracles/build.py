"""`build_oracle`: an oracle from a short spec string or dict.

Grammar:
    string: GOLD ["+" NOISE ":" VALUE]...   e.g. "bt:verifiable", "det:sentiment+flip:0.1",
            "bt:length:10+length:0.5" (a third GOLD field is the Bradley–Terry temperature τ)
    dict:   {"gold": GOLD, "temperature": τ, "noise": NOISE, <its parameter or "rate">: VALUE}
            e.g. {"gold": "bt:verifiable", "noise": "adversarial", "rho": 0.2}
GOLD is KIND ":" REWARD with KIND in `GOLD_KINDS` and REWARD in `REWARDS` (or a caller's names);
wrappers apply left to right, the first wrapping the gold.
"""

from __future__ import annotations

from collections.abc import Mapping

from robalign.errors import ConfigError
from robalign.oracles.oracles import (
    AdversarialOracle,
    BradleyTerryOracle,
    DeterministicOracle,
    LengthBiasOracle,
    MarginFlipOracle,
    PreferenceOracle,
    SymmetricFlipOracle,
)
from robalign.oracles.rewards import REWARDS, RewardFn

GOLD_KINDS = {"bt": BradleyTerryOracle, "det": DeterministicOracle}
# noise name -> (wrapper class, the name of its one parameter)
NOISES = {
    "flip": (SymmetricFlipOracle, "epsilon"),
    "length": (LengthBiasOracle, "strength"),
    "margin": (MarginFlipOracle, "threshold"),
    "adversarial": (AdversarialOracle, "rho"),
}


def _number(text, what: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {text!r}") from None


def _gold(spec: str, temperature: float | None, rewards: Mapping[str, RewardFn]) -> PreferenceOracle:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in GOLD_KINDS or parts[1] not in rewards:
        raise ConfigError(
            f"invalid gold oracle {spec!r}: expected KIND:REWARD[:TEMPERATURE] with KIND in "
            f"{sorted(GOLD_KINDS)} and REWARD in {sorted(rewards)}, e.g. 'bt:verifiable'"
        )
    reward = rewards[parts[1]]
    reward = reward() if isinstance(reward, type) else reward
    if len(parts) == 3:
        temperature = _number(parts[2], "Bradley–Terry temperature")
    if parts[0] == "det":
        if temperature is not None:
            raise ConfigError(f"a deterministic oracle has no temperature (spec {spec!r})")
        return DeterministicOracle(reward)
    return BradleyTerryOracle(reward, 1.0 if temperature is None else temperature)


def _wrap(oracle: PreferenceOracle, noise: str, value) -> PreferenceOracle:
    if noise not in NOISES:
        raise ConfigError(f"unknown oracle noise {noise!r}; valid: {sorted(NOISES)}")
    cls, param = NOISES[noise]
    return cls(oracle, _number(value, f"{noise} noise {param}"))


def _from_string(spec: str, rewards: Mapping[str, RewardFn]) -> PreferenceOracle:
    gold, *noises = spec.strip().split("+")
    oracle = _gold(gold, None, rewards)
    for item in noises:
        name, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(
                f"oracle noise {item!r} needs a value, e.g. 'flip:0.1'; valid: {sorted(NOISES)}"
            )
        oracle = _wrap(oracle, name, value)
    return oracle


def _from_dict(spec: Mapping, rewards: Mapping[str, RewardFn]) -> PreferenceOracle:
    spec = dict(spec)
    if "gold" not in spec:
        raise ConfigError(f"oracle spec {spec} needs a 'gold' key, e.g. 'bt:verifiable'")
    oracle = _gold(str(spec.pop("gold")), spec.pop("temperature", None), rewards)
    noise = spec.pop("noise", None)
    if noise is not None:
        param = NOISES.get(noise, (None, "rate"))[1]
        if param in spec and "rate" in spec:
            raise ConfigError(f"oracle spec gives both {param!r} and 'rate'; give one")
        if param not in spec and "rate" not in spec:
            raise ConfigError(f"oracle noise {noise!r} needs {param!r} (or 'rate')")
        oracle = _wrap(oracle, noise, spec.pop(param, None) if param in spec else spec.pop("rate"))
    if spec:
        raise ConfigError(
            f"unknown oracle spec keys {sorted(spec)}; valid: gold, temperature, noise, "
            f"and the noise's parameter ({', '.join(p for _, p in NOISES.values())}) or rate"
        )
    return oracle


def build_oracle(spec: str | Mapping, rewards: Mapping[str, RewardFn] | None = None) -> PreferenceOracle:
    """Build a preference oracle from a spec (see the module docstring for the grammar).

    Args:
        spec: e.g. "bt:verifiable", "bt:verifiable+adversarial:0.2", or
            {"gold": "bt:verifiable", "noise": "adversarial", "rho": 0.2}.
        rewards: extra reward names (a RewardFn instance or a no-argument factory), e.g.
            {"rm": SequenceClassifierReward(model, tokenizer)}; they extend and override `REWARDS`.

    Raises:
        ConfigError: an invalid spec; the message lists the valid choices.
    """
    table = {**REWARDS, **(rewards or {})}
    if isinstance(spec, str):
        return _from_string(spec, table)
    if isinstance(spec, Mapping):
        return _from_dict(spec, table)
    raise ConfigError(f"oracle spec must be a string or a dict, got {type(spec).__name__}")
