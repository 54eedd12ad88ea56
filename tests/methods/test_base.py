"""What every method logs: TRL's per-step names, with ties counted as evaluation counts them."""

import pytest
import torch

from robalign.evaluate import accuracy
from robalign.methods.base import reward_metrics
from robalign.pair_logps import PairLogps


def test_reward_accuracy_counts_a_tie_half_like_held_out_accuracy():
    chosen = torch.tensor([0.3, 0.0, -0.2, 0.1, 0.0])
    rejected = torch.tensor([0.1, 0.0, 0.4, 0.1, -0.5])  # pairs 2 and 4 tie
    logps = PairLogps(chosen=torch.zeros(5), rejected=torch.zeros(5), chosen_lengths=torch.ones(5),
                          rejected_lengths=torch.ones(5))
    got = reward_metrics(logps, chosen, rejected)["rewards/accuracies"].item()
    assert got == pytest.approx((1 + 0.5 + 0 + 0.5 + 1) / 5)
    assert got == accuracy(chosen - rejected)
