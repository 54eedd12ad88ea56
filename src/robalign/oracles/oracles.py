"""Preference oracles: gold ones over a reward, and observed ones that distort a gold one.

An oracle gives P(y1 ≻ y2 | x) for a batch of triples and samples labels from it with a caller's
`torch.Generator`, so online runs (sail, oracle_robust) replay exactly. Every sample records the observed
probability next to the gold one (P⋆ of the innermost gold oracle), so a run can report how far
its labels were from the truth.

Wrappers compose ("bt:verifiable+length:0.3+flip:0.1"): each distorts the probability of the
oracle it wraps, and all of them share the innermost gold P⋆ and gold reward margin. Every oracle
here is consistent under swapping: P(y1 ≻ y2) + P(y2 ≻ y1) = 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from robalign.errors import ConfigError
from robalign.oracles.rewards import LengthReward, RewardFn


@dataclass
class OracleProbs:
    """One oracle evaluation of N triples (all float64 on CPU).

    Attributes:
        observed: P(y1 ≻ y2 | x) under this oracle, [N].
        gold: P⋆(y1 ≻ y2 | x) under the innermost gold oracle, [N].
        margin: gold reward margin r(x, y1) − r(x, y2), [N]; None when the gold is not reward-based.
    """

    observed: Tensor
    gold: Tensor
    margin: Tensor | None = None


@dataclass
class OracleLabels:
    """Sampled labels for N triples.

    Attributes:
        y1_preferred: bool [N], True where y1 won.
        observed_prob: P(y1 ≻ y2 | x) the label was drawn from, float64 [N].
        gold_prob: gold P⋆(y1 ≻ y2 | x), float64 [N].
    """

    y1_preferred: Tensor
    observed_prob: Tensor
    gold_prob: Tensor

    def __len__(self) -> int:
        return len(self.y1_preferred)

    def order(self, y1: list, y2: list) -> tuple[list, list]:
        """(winners, losers): the responses rearranged by the sampled labels."""
        won = self.y1_preferred.tolist()
        return [a if w else b for a, b, w in zip(y1, y2, won)], [
            b if w else a for a, b, w in zip(y1, y2, won)
        ]


def _check_triples(prompts: list[str], y1: list[str], y2: list[str]) -> None:
    if not len(prompts) == len(y1) == len(y2):
        raise ValueError(f"oracle batch sizes differ: {len(prompts)} prompts, {len(y1)} y1, {len(y2)} y2")


class PreferenceOracle(ABC):
    """P(y1 ≻ y2 | x) for batches of (prompt, y1, y2) strings, and labels sampled from it."""

    @abstractmethod
    def evaluate(self, prompts: list[str], y1: list[str], y2: list[str]) -> OracleProbs:
        """Observed and gold probabilities (and gold margin where known) for N triples."""

    @property
    def gold_oracle(self) -> PreferenceOracle:
        """The innermost gold oracle (itself for a gold oracle)."""
        return self

    def prob(self, prompts: list[str], y1: list[str], y2: list[str]) -> Tensor:
        """P(y1 ≻ y2 | x), float64 [N]."""
        return self.evaluate(prompts, y1, y2).observed

    def gold_prob(self, prompts: list[str], y1: list[str], y2: list[str]) -> Tensor:
        """Gold P⋆(y1 ≻ y2 | x), float64 [N]."""
        return self.evaluate(prompts, y1, y2).gold

    def sample(
        self, prompts: list[str], y1: list[str], y2: list[str], generator: torch.Generator | None = None,
        *, uniforms: Tensor | None = None,
    ) -> OracleLabels:
        """Draw y1 ≻ y2 with probability `prob`: label i is `uniforms[i] < prob_i`.

        The uniforms are given (one per triple: the online methods draw them per pair, so a label does not
        depend on which other pairs share the batch) or drawn from `generator` (CPU).
        """
        probs = self.evaluate(prompts, y1, y2)
        if uniforms is None:
            if generator is None:
                raise ValueError("oracle.sample needs a generator or the uniforms")
            uniforms = torch.rand(probs.observed.shape, generator=generator, dtype=torch.float64)
        u = uniforms.detach().to("cpu", torch.float64)
        if u.shape != probs.observed.shape:
            raise ValueError(f"{u.numel()} uniforms for {probs.observed.numel()} triples")
        return OracleLabels(u < probs.observed, probs.observed, probs.gold)


class RewardOracle(PreferenceOracle):
    """A gold oracle that turns the reward margin r(x, y1) − r(x, y2) into a probability."""

    def __init__(self, reward_fn: RewardFn):
        self.reward_fn = reward_fn

    def margins(self, prompts: list[str], y1: list[str], y2: list[str]) -> Tensor:
        """r(x, y1) − r(x, y2), float64 [N]; one reward call for both sides (one RM pass)."""
        _check_triples(prompts, y1, y2)
        n = len(prompts)
        rewards = self.reward_fn(list(prompts) * 2, list(y1) + list(y2))
        rewards = rewards.detach().to("cpu", torch.float64)
        return rewards[:n] - rewards[n:]

    @abstractmethod
    def prob_from_margin(self, margin: Tensor) -> Tensor:
        """P(y1 ≻ y2) for a reward margin [N]."""

    def evaluate(self, prompts: list[str], y1: list[str], y2: list[str]) -> OracleProbs:
        margin = self.margins(prompts, y1, y2)
        p = self.prob_from_margin(margin)
        return OracleProbs(p, p, margin)


class BradleyTerryOracle(RewardOracle):
    """P = σ((r1 − r2)/τ).

    Args:
        reward_fn: the gold reward.
        temperature: τ > 0.
    """

    def __init__(self, reward_fn: RewardFn, temperature: float = 1.0):
        if not temperature > 0:
            raise ConfigError(f"Bradley–Terry temperature must be > 0, got {temperature}")
        super().__init__(reward_fn)
        self.temperature = float(temperature)

    def prob_from_margin(self, margin: Tensor) -> Tensor:
        return torch.sigmoid(margin / self.temperature)


class DeterministicOracle(RewardOracle):
    """P = 1 if r1 > r2, 0 if r1 < r2, 0.5 on ties."""

    def prob_from_margin(self, margin: Tensor) -> Tensor:
        return 0.5 * (1 + torch.sign(margin))


def _check_unit_interval(name: str, value: float, high: float = 1.0) -> float:
    if not 0.0 <= value <= high:
        raise ConfigError(f"{name} must be in [0, {high}], got {value}")
    return float(value)


class NoisyOracle(PreferenceOracle):
    """Base of the observed oracles: distorts the probability of the oracle it wraps."""

    def __init__(self, gold: PreferenceOracle):
        self.gold = gold

    @property
    def gold_oracle(self) -> PreferenceOracle:
        return self.gold.gold_oracle

    @abstractmethod
    def distort(self, inner: OracleProbs, prompts: list[str], y1: list[str], y2: list[str]) -> Tensor:
        """The observed P(y1 ≻ y2) [N] given the wrapped oracle's evaluation."""

    def evaluate(self, prompts: list[str], y1: list[str], y2: list[str]) -> OracleProbs:
        inner = self.gold.evaluate(prompts, y1, y2)
        return OracleProbs(self.distort(inner, prompts, y1, y2), inner.gold, inner.margin)


class SymmetricFlipOracle(NoisyOracle):
    """Each label is flipped with probability ε: P_obs = (1 − ε) P + ε (1 − P).

    Args:
        gold: the wrapped oracle.
        epsilon: flip rate ε in [0, 1].
    """

    def __init__(self, gold: PreferenceOracle, epsilon: float):
        super().__init__(gold)
        self.epsilon = _check_unit_interval("flip rate epsilon", epsilon)

    def distort(self, inner, prompts, y1, y2) -> Tensor:
        p = inner.observed
        return (1 - self.epsilon) * p + self.epsilon * (1 - p)


class LengthBiasOracle(NoisyOracle):
    """A judge biased toward length: P_obs = (1 − s) P + s · L, L = 1[len y1 > len y2] (0.5 on ties).

    Args:
        gold: the wrapped oracle.
        strength: s in [0, 1]; 1 is a pure length judge.
        unit: length in "words" or "chars".
    """

    def __init__(self, gold: PreferenceOracle, strength: float, unit: str = "words"):
        super().__init__(gold)
        self.strength = _check_unit_interval("length-bias strength", strength)
        self.length = LengthReward(unit)

    def distort(self, inner, prompts, y1, y2) -> Tensor:
        diff = self.length(prompts, y1).double() - self.length(prompts, y2).double()
        longer = 0.5 * (1 + torch.sign(diff))
        return (1 - self.strength) * inner.observed + self.strength * longer


class MarginFlipOracle(NoisyOracle):
    """Flips the pairs the gold finds hard: P_obs = 1 − P where |r1 − r2| < threshold, else P.

    Over a deterministic gold this flips exactly the low-margin labels; over a Bradley–Terry gold it
    mirrors their probability. Requires a reward-based gold oracle.

    Args:
        gold: the wrapped oracle; its innermost gold must be a `RewardOracle`.
        threshold: gold-margin threshold, >= 0.
    """

    def __init__(self, gold: PreferenceOracle, threshold: float):
        super().__init__(gold)
        if not isinstance(gold.gold_oracle, RewardOracle):
            raise ConfigError("margin noise needs a reward-based gold oracle (bt:... or det:...)")
        if not threshold >= 0:
            raise ConfigError(f"margin threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)

    def distort(self, inner, prompts, y1, y2) -> Tensor:
        low = inner.margin.abs() < self.threshold
        return torch.where(low, 1 - inner.observed, inner.observed)


class AdversarialOracle(NoisyOracle):
    """Pointwise adversary: moves P by ρ toward the answer the gold finds worse: the pointwise deviation of the oracle-robust setting (arXiv 2602.20457).

    P_obs = clip(P − ρ · sign(P⋆ − ½), 0, 1), so |P_obs − P| ≤ ρ. On gold ties (P⋆ = ½) neither
    answer is worse and P is left alone: moving it either way would break
    P(y1 ≻ y2) + P(y2 ≻ y1) = 1.

    Args:
        gold: the wrapped oracle.
        rho: ρ in [0, 0.5] (the robust objective assumes ρ < δ ≤ ½).
    """

    def __init__(self, gold: PreferenceOracle, rho: float):
        super().__init__(gold)
        self.rho = _check_unit_interval("adversary rho", rho, high=0.5)

    def distort(self, inner, prompts, y1, y2) -> Tensor:
        toward_y2 = torch.sign(inner.gold - 0.5)  # +1 when y2 is the worse answer under the gold
        return (inner.observed - self.rho * toward_y2).clamp(0.0, 1.0)
