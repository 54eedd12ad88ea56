"""Tests for robalign.losses.drdpo: Dr.DPO's batch loss −β′ log mean exp(−ℓ/β′) and its limits in β′."""

from __future__ import annotations

import math

import pytest
from test_offline import make_batch, ref_dpo, rows

from robalign.losses import preference_loss


def ref_drdpo_batch(xs, beta=0.1, beta_prime=1.0):
    a = [-ref_dpo(x, beta) / beta_prime for x in xs]
    top = max(a)
    return -beta_prime * (top + math.log(math.fsum(math.exp(v - top) for v in a) / len(a)))


@pytest.mark.parametrize("beta_prime", [0.05, 1.0, 7.0])
def test_drdpo_batch_loss_matches_formula(beta_prime):
    batch = make_batch(3)
    out = preference_loss("drdpo", **batch, beta=0.2, beta_prime=beta_prime)
    want = ref_drdpo_batch(rows(batch), beta=0.2, beta_prime=beta_prime)
    assert math.isclose(out.loss.item(), want, rel_tol=1e-9, abs_tol=1e-9)


def test_drdpo_limits():
    batch = make_batch(8)
    dpo = preference_loss("dpo", **batch).per_pair
    # −β′ log mean exp(−ℓ/β′) = mean ℓ − Var ℓ / (2β′) + O(1/β′²)
    big = preference_loss("drdpo", **batch, beta_prime=1e8).loss
    assert big.item() == pytest.approx(dpo.mean().item(), abs=1e-5)
    small = preference_loss("drdpo", **batch, beta_prime=1e-3).loss  # tends to the smallest loss
    assert small.item() == pytest.approx(dpo.min().item(), abs=1e-2)
    assert small.item() < big.item()
