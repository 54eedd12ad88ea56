"""Preference oracles and reward functions."""

from robalign.oracles.build import GOLD_KINDS, NOISES, build_oracle
from robalign.oracles.oracles import (
    AdversarialOracle,
    BradleyTerryOracle,
    DeterministicOracle,
    LengthBiasOracle,
    MarginFlipOracle,
    NoisyOracle,
    OracleLabels,
    OracleProbs,
    PreferenceOracle,
    RewardOracle,
    SymmetricFlipOracle,
)
from robalign.oracles.relabel import relabel_pairs, verifiable_oracle
from robalign.oracles.rewards import (
    REWARDS,
    LengthReward,
    LexiconSentimentReward,
    RewardFn,
    SequenceClassifierReward,
)
from robalign.tasks.verifiable import VerifiableReward

__all__ = [
    "GOLD_KINDS",
    "NOISES",
    "REWARDS",
    "AdversarialOracle",
    "BradleyTerryOracle",
    "DeterministicOracle",
    "LengthBiasOracle",
    "LengthReward",
    "LexiconSentimentReward",
    "MarginFlipOracle",
    "NoisyOracle",
    "OracleLabels",
    "OracleProbs",
    "PreferenceOracle",
    "RewardFn",
    "RewardOracle",
    "SequenceClassifierReward",
    "SymmetricFlipOracle",
    "VerifiableReward",
    "build_oracle",
    "relabel_pairs",
    "verifiable_oracle",
]
