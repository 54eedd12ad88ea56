"""Tests for robalign.losses.cdpo: it applies the label smoothing (the peer bug)."""

from __future__ import annotations

from test_offline import make_batch

from robalign.losses import preference_loss


def test_cdpo_uses_label_smoothing():
    batch = make_batch(12, extreme=False)
    dpo = preference_loss("dpo", **batch).per_pair
    cdpo = preference_loss("cdpo", **batch, epsilon=0.1).per_pair
    assert (cdpo - dpo).abs().min() > 1e-3
