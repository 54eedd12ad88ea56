"""Relabelling the verifiable task through a noisy oracle."""

from __future__ import annotations

import pytest

from robalign.oracles import relabel_pairs
from robalign.tasks.verifiable import make_preference_pairs


def test_noise_relabels_through_an_oracle():
    pairs = relabel_pairs(make_preference_pairs(2000, seed=3), "flip:0.3", seed=3)
    flipped = [p for p in pairs if p.is_flipped]
    assert 0.26 <= len(flipped) / len(pairs) <= 0.34
    assert all(p.chosen_score < p.rejected_score for p in flipped)
    assert all(p.chosen_score > p.rejected_score for p in pairs if not p.is_flipped)
    for p in pairs:  # probabilities of the row as stored
        assert p.extra["gold_prob"] == (0.0 if p.is_flipped else 1.0)
        assert p.extra["oracle_prob"] == pytest.approx(0.3 if p.is_flipped else 0.7)
    again = relabel_pairs(make_preference_pairs(2000, seed=3), {"noise": "flip", "epsilon": 0.3}, seed=3)
    assert [p.is_flipped for p in again] == [p.is_flipped for p in pairs]
