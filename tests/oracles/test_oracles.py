"""Tests for robalign.oracles.oracles: worked probabilities, swap consistency, sampling.

The reward functions are tested in test_rewards.py, build_oracle in test_build.py.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from robalign.errors import ConfigError
from robalign.oracles import (
    AdversarialOracle,
    BradleyTerryOracle,
    DeterministicOracle,
    LengthBiasOracle,
    LengthReward,
    MarginFlipOracle,
    OracleProbs,
    PreferenceOracle,
    SymmetricFlipOracle,
)


class TableReward:
    """A gold reward given by a lookup table: response -> reward."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def __call__(self, prompts, responses):
        return torch.tensor([self.table[r] for r in responses])


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# Rewards 2.0, 0.5, 0.5 and lengths 1, 3, 2 words: "a" is best but shortest.
TABLE = TableReward({"a": 2.0, "b b b": 0.5, "c c": 0.5})
X = ["x", "x", "x"]
Y1 = ["a", "b b b", "c c"]
Y2 = ["b b b", "a", "b b b"]


def test_bradley_terry_by_hand():
    p = BradleyTerryOracle(TABLE, temperature=0.5).prob(X, Y1, Y2)
    assert p.dtype == torch.float64
    assert p.tolist() == pytest.approx([sigmoid(3.0), sigmoid(-3.0), 0.5], abs=1e-12)


def test_deterministic_by_hand():
    assert DeterministicOracle(TABLE).prob(X, Y1, Y2).tolist() == [1.0, 0.0, 0.5]


def test_symmetric_flip_formula():
    p = sigmoid(1.5)
    got = SymmetricFlipOracle(BradleyTerryOracle(TABLE), 0.1).prob(X, Y1, Y2)
    want = [0.9 * p + 0.1 * (1 - p), 0.9 * (1 - p) + 0.1 * p, 0.5]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_length_bias_by_hand():
    # Pair 1: y1 better but shorter; pair 2: y1 worse but longer; pair 3: tie in reward, y1 shorter.
    got = LengthBiasOracle(DeterministicOracle(TABLE), 0.5).prob(X, Y1, Y2)
    assert got.tolist() == [0.5 * 1 + 0.5 * 0, 0.5 * 0 + 0.5 * 1, 0.5 * 0.5 + 0.5 * 0]


def test_margin_flip_targets_low_margin_pairs():
    table = TableReward({"a": 1.0, "b": 0.95, "c": 0.0})
    oracle = MarginFlipOracle(DeterministicOracle(table), threshold=0.1)
    # Margins 0.05 and -0.05 (flipped), 1.0 and 0.95 (kept), 0 (a tie stays 0.5).
    got = oracle.prob(["x"] * 5, ["a", "b", "a", "b", "c"], ["b", "a", "c", "c", "c"])
    assert got.tolist() == [0.0, 1.0, 1.0, 1.0, 0.5]


def test_margin_flip_needs_reward_gold():
    class Constant(PreferenceOracle):
        def evaluate(self, prompts, y1, y2):
            p = torch.full((len(prompts),), 0.7, dtype=torch.float64)
            return OracleProbs(p, p)

    with pytest.raises(ConfigError, match="reward-based"):
        MarginFlipOracle(Constant(), 0.1)


def random_batch(n: int, seed: int):
    """n triples over a vocabulary of 30 responses with random rewards (ties included)."""
    rng = random.Random(seed)
    vocab = [" ".join(["w"] * rng.randint(1, 6)) + f" r{i}" for i in range(30)]
    table = TableReward({v: float(rng.choice([0, 0.5, 1, 1.5, 2, -1, -3])) for v in vocab})
    y1 = [rng.choice(vocab) for _ in range(n)]
    y2 = [rng.choice(vocab) for _ in range(n)]
    return table, ["x"] * n, y1, y2


def all_oracles(reward):
    bt, det = BradleyTerryOracle(reward, 0.7), DeterministicOracle(reward)
    return {
        "bt": bt,
        "det": det,
        "flip": SymmetricFlipOracle(bt, 0.2),
        "length": LengthBiasOracle(bt, 0.4),
        "margin": MarginFlipOracle(det, 0.6),
        "adversarial": AdversarialOracle(bt, 0.2),
        "adversarial-det": AdversarialOracle(det, 0.3),
        "chain": AdversarialOracle(LengthBiasOracle(SymmetricFlipOracle(bt, 0.1), 0.3), 0.1),
    }


@pytest.mark.parametrize("name", list(all_oracles(None)))
def test_swap_consistency(name):
    reward, x, y1, y2 = random_batch(400, seed=1)
    oracle = all_oracles(reward)[name]
    forward, backward = oracle.prob(x, y1, y2), oracle.prob(x, y2, y1)
    assert torch.allclose(forward + backward, torch.ones_like(forward), atol=1e-12)
    assert ((forward >= 0) & (forward <= 1)).all()


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.3, 0.5])
def test_adversary_bounded_and_toward_worse(rho):
    reward, x, y1, y2 = random_batch(500, seed=2)
    gold = BradleyTerryOracle(reward, 0.5)
    probs = AdversarialOracle(gold, rho).evaluate(x, y1, y2)
    p, star = probs.observed, probs.gold
    assert torch.equal(star, gold.prob(x, y1, y2))
    assert ((p - star).abs() <= rho + 1e-12).all()
    y1_better, y2_better, tie = star > 0.5, star < 0.5, star == 0.5
    assert tie.any() and y1_better.any() and y2_better.any()
    # Toward the worse answer: P(y1 ≻ y2) drops when y1 is better, rises when it is worse.
    assert torch.allclose(p[y1_better], star[y1_better] - rho)
    assert torch.allclose(p[y2_better], star[y2_better] + rho)
    assert torch.equal(p[tie], star[tie])


def test_adversary_clips_deterministic_gold():
    probs = AdversarialOracle(DeterministicOracle(TABLE), 0.25).prob(X, Y1, Y2)
    assert probs.tolist() == [0.75, 0.25, 0.5]


@pytest.mark.parametrize("name", ["bt", "flip", "length", "adversarial", "chain"])
def test_sampling_frequency_matches_prob(name):
    reward, x, y1, y2 = random_batch(20000, seed=3)
    oracle = all_oracles(reward)[name]
    labels = oracle.sample(x, y1, y2, torch.Generator().manual_seed(0))
    assert labels.y1_preferred.dtype == torch.bool and len(labels) == 20000
    # Per distinct probability value, the empirical frequency matches it (binomial, 4.5 sigma).
    for value in labels.observed_prob.unique():
        rows = labels.observed_prob == value
        n, freq = int(rows.sum()), labels.y1_preferred[rows].double().mean().item()
        if n >= 200:
            assert abs(freq - value.item()) <= 4.5 * math.sqrt(0.25 / n)


def test_sampling_is_seeded_and_deterministic():
    reward, x, y1, y2 = random_batch(300, seed=4)
    oracle = all_oracles(reward)["chain"]
    a = oracle.sample(x, y1, y2, torch.Generator().manual_seed(7)).y1_preferred
    b = oracle.sample(x, y1, y2, torch.Generator().manual_seed(7)).y1_preferred
    c = oracle.sample(x, y1, y2, torch.Generator().manual_seed(8)).y1_preferred
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_labels_record_gold_prob_and_order():
    reward, x, y1, y2 = random_batch(50, seed=5)
    gold = BradleyTerryOracle(reward)
    oracle = SymmetricFlipOracle(LengthBiasOracle(gold, 0.5), 0.3)
    labels = oracle.sample(x, y1, y2, torch.Generator().manual_seed(0))
    assert torch.equal(labels.gold_prob, gold.prob(x, y1, y2))
    assert torch.equal(labels.observed_prob, oracle.prob(x, y1, y2))
    assert oracle.gold_oracle is gold
    winners, losers = labels.order(y1, y2)
    for w, lo, a, b, won in zip(winners, losers, y1, y2, labels.y1_preferred.tolist()):
        assert (w, lo) == ((a, b) if won else (b, a))


def test_deterministic_oracle_samples_its_labels():
    labels = DeterministicOracle(TABLE).sample(X[:2], Y1[:2], Y2[:2], torch.Generator().manual_seed(0))
    assert labels.y1_preferred.tolist() == [True, False]


def test_invalid_parameters_are_config_errors():
    gold = BradleyTerryOracle(TABLE)
    for make in (
        lambda: SymmetricFlipOracle(gold, 1.5),
        lambda: LengthBiasOracle(gold, -0.1),
        lambda: AdversarialOracle(gold, 0.6),
        lambda: MarginFlipOracle(DeterministicOracle(TABLE), -1),
        lambda: BradleyTerryOracle(TABLE, 0.0),
        lambda: LengthReward("tokens"),
    ):
        with pytest.raises(ConfigError):
            make()
    with pytest.raises(ValueError, match="batch sizes"):
        gold.prob(["x"], ["a"], ["a", "a"])


def test_given_uniforms_decide_each_label_independently_of_the_batch():
    reward, x, y1, y2 = random_batch(40, seed=6)
    oracle = all_oracles(reward)["chain"]
    u = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = oracle.sample(x, y1, y2, uniforms=u)
    assert torch.equal(whole.y1_preferred, u < oracle.prob(x, y1, y2))
    half = oracle.sample(x[20:], y1[20:], y2[20:], uniforms=u[20:])
    assert torch.equal(half.y1_preferred, whole.y1_preferred[20:])
    with pytest.raises(ValueError, match="uniforms"):
        oracle.sample(x, y1, y2, uniforms=u[:3])
    with pytest.raises(ValueError, match="generator or the uniforms"):
        oracle.sample(x, y1, y2)
