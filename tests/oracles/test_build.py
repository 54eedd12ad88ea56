"""Tests for robalign.oracles.build: build_oracle from strings and dicts, and its errors."""

from __future__ import annotations

import pytest
from test_oracles import TABLE

from robalign.errors import ConfigError
from robalign.oracles import (
    AdversarialOracle,
    DeterministicOracle,
    LengthBiasOracle,
    MarginFlipOracle,
    SymmetricFlipOracle,
    VerifiableReward,
    build_oracle,
)


def test_build_oracle_strings_and_dicts():
    assert isinstance(build_oracle("bt:verifiable").reward_fn, VerifiableReward)
    assert isinstance(build_oracle("det:sentiment"), DeterministicOracle)
    assert build_oracle("bt:length:10").temperature == 10.0
    chain = build_oracle("bt:verifiable+length:0.5+flip:0.1")
    assert isinstance(chain, SymmetricFlipOracle) and chain.epsilon == 0.1
    assert isinstance(chain.gold, LengthBiasOracle) and chain.gold.strength == 0.5
    assert isinstance(build_oracle("bt:verifiable+margin:0.1"), MarginFlipOracle)
    adv = build_oracle({"gold": "bt:verifiable", "noise": "adversarial", "rho": 0.2})
    assert isinstance(adv, AdversarialOracle) and adv.rho == 0.2
    assert build_oracle("bt:verifiable+adversarial:0.2").rho == 0.2
    assert build_oracle({"gold": "bt:length", "temperature": 3, "noise": "flip", "rate": 0.1}).epsilon == 0.1
    custom = build_oracle("bt:mine", rewards={"mine": TABLE})
    assert custom.reward_fn is TABLE


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ranked:verifiable", r"\['bt', 'det'\]"),
        ("bt:nope", "sentiment"),
        ("bt", "KIND:REWARD"),
        ("bt:verifiable+noise:0.1", "adversarial"),
        ("bt:verifiable+flip", "needs a value"),
        ("bt:verifiable+flip:lots", "must be a number"),
        ("bt:verifiable+adversarial:0.7", r"\[0, 0.5\]"),
        ("det:verifiable:2", "no temperature"),
        ({"noise": "flip"}, "'gold'"),
        ({"gold": "bt:verifiable", "noise": "flip"}, "epsilon"),
        ({"gold": "bt:verifiable", "colour": 1}, "unknown oracle spec keys"),
        (3, "string or a dict"),
    ],
)
def test_build_oracle_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_oracle(spec)
