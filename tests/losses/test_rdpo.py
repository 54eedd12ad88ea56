"""Tests for robalign.losses.rdpo: unbiased under flips, and it keeps its second term (the peer bug)."""

from __future__ import annotations

import pytest
import torch
from test_offline import make_batch

from robalign.losses import preference_loss


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 0.45])
def test_rdpo_unbiased_under_flips(epsilon):
    batch = make_batch(10)
    flipped = dict(batch)
    flipped["chosen_logps"], flipped["rejected_logps"] = batch["rejected_logps"], batch["chosen_logps"]
    flipped["ref_chosen_logps"], flipped["ref_rejected_logps"] = (
        batch["ref_rejected_logps"],
        batch["ref_chosen_logps"],
    )
    clean = preference_loss("rdpo", **batch, epsilon=epsilon).per_pair
    flip = preference_loss("rdpo", **flipped, epsilon=epsilon).per_pair
    dpo = preference_loss("dpo", **batch).per_pair
    torch.testing.assert_close((1 - epsilon) * clean + epsilon * flip, dpo, rtol=1e-9, atol=1e-9)


def test_rdpo_keeps_second_term():
    batch = make_batch(11, extreme=False)
    eps = 0.2
    out = preference_loss("rdpo", **batch, epsilon=eps).per_pair
    h = preference_loss("dpo", **batch).margin
    first_term_only = (1 - eps) * torch.nn.functional.softplus(-0.1 * h) / (1 - 2 * eps)
    assert (out - first_term_only).abs().min() > 1e-3
    cdpo = preference_loss("cdpo", **batch, epsilon=eps).per_pair
    assert (out - cdpo).abs().min() > 1e-3
    assert (out - cdpo / (1 - 2 * eps)).abs().min() > 1e-3
