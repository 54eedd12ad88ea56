"""Tests for robalign.losses.common: the SFT (RPO) term every offline loss adds."""

from __future__ import annotations

import pytest
import torch
from test_offline import DT, make_batch

from robalign.losses import LOSSES, preference_loss


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sft_term(name):
    batch = make_batch(9)
    base = preference_loss(name, **batch)
    zero = preference_loss(name, **batch, sft_weight=0.0)
    torch.testing.assert_close(zero.per_pair, base.per_pair, rtol=0, atol=0)
    torch.testing.assert_close(zero.loss, base.loss, rtol=0, atol=0)
    c, lc = batch["chosen_logps"], batch["chosen_lengths"].to(DT)
    for reduction, nll in [("mean", -c / lc), ("sum", -c)]:
        out = preference_loss(name, **batch, sft_weight=0.5, sft_reduction=reduction)
        torch.testing.assert_close(out.per_pair - base.per_pair, 0.5 * nll)
        torch.testing.assert_close(out.loss - base.loss, 0.5 * nll.mean())
