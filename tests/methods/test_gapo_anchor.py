"""Tests for robalign.methods.gapo_anchor: the anchor weights θ + δ by hand, restored bit-exactly, and the
first-order anchor against the exact one."""

import pytest
import torch
import torch.nn.functional as F
from test_gapo import BETA, GAMMA, _batch, _copy, _method, _record_anchor_weights, _snapshot

from robalign.logprobs import sequence_logps
from robalign.methods.gapo_weights import scoped_parameters
from robalign.reference import NoReference


@pytest.mark.parametrize("perturbation", ["asam", "sam"])
def test_anchor_weights_are_theta_plus_hand_delta_and_restored_bit_exactly(tiny, perturbation):
    model, batch = _copy(tiny), _batch(tiny[1])
    before = _snapshot(model)
    rho = 0.05
    named = scoped_parameters(model, "backbone")
    m = sequence_logps(model, batch).mean()
    probe = F.softplus(-(BETA * (m[0] - m[1]) - GAMMA)).mean()
    grads = torch.autograd.grad(probe, [p for _, p in named])
    if perturbation == "asam":
        norm = torch.sqrt(sum(((p * g) ** 2).sum() for (_, p), g in zip(named, grads)))
        delta = {n: rho * p.detach() ** 2 * g / norm for (n, p), g in zip(named, grads)}
    else:
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        delta = {n: rho * g / norm for (n, _), g in zip(named, grads)}
    seen, handle = _record_anchor_weights(model)
    result = _method(radius=rho, perturbation=perturbation).step(model, NoReference(), batch)
    handle.remove()
    result.loss.backward()  # the retained probe graph survives the in-place perturbation
    assert len(seen) == 2  # probe forward, anchor forward
    anchor = seen[1]
    for name, p in model.named_parameters():
        if name in delta:
            err = (anchor[name] - before[name] - delta[name]).abs()
            ulp = before[name].abs() * 2.0 ** -23  # θ + δ is rounded to fp32
            assert (err <= ulp + 1e-4 * delta[name].abs() + 1e-12).all(), name
        else:
            assert torch.equal(anchor[name], before[name]), name  # the untied lm_head stays put
        assert torch.equal(p, before[name]), name  # restored bit-exactly
    assert "lm_head.weight" not in delta and "model.norm.weight" in delta
    assert result.metrics["gapo/changed_fraction"] > 0.95  # fp32 keeps nearly every change



def test_first_order_anchor_matches_exact_for_small_radius_only(tiny):
    model, batch = _copy(tiny, torch.float64), _batch(tiny[1])

    def gaps(rho, anchor):
        return _method(radius=rho, anchor=anchor).anchor(model, batch).gap

    small_exact, small_fo = gaps(1e-2, "exact"), gaps(1e-2, "first_order")
    assert (small_fo - small_exact).norm() / small_exact.norm() < 1e-2
    big_exact, big_fo = gaps(20.0, "exact"), gaps(20.0, "first_order")
    assert (big_fo - big_exact).norm() / big_exact.norm() > 5e-2
