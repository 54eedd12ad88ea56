"""Tests for robalign.loglinear.rscgd: the surrogate loss, unbiasedness, R-SCGD behaviour and the proximal refinement."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_policy import F64, _engine_pairs, _one_thread, _random_problem  # noqa: F401 (autouse fixture)

from robalign.loglinear import (
    envelope_lambda,
    moreau_envelope_grad_norm,
    prox_point,
    proximal_refine_exact,
    random_instance,
    robust_weak_convexity_bound,
    rscgd,
    surrogate_loss,
)
from robalign.loglinear.rscgd import RSCGDBatch


def test_offline_robust_loss_equals_rscgd_per_sample_loss():
    """SPEC §2's `oracle_robust_offline` row is R-SCGD's ℓ_i = softplus(−βh(y_w, y_l)) + ρβ|h| (SPEC §5)."""
    losses = pytest.importorskip("robalign.losses")
    policy, theta, pairs, (x, y_w, y_l) = _engine_pairs()
    offline = losses.preference_loss("oracle_robust_offline", beta=0.5, rho=0.2, **pairs)
    batch = RSCGDBatch(prompts=x, y1=y_w, y2=y_l, y1_wins=torch.ones_like(x, dtype=torch.bool))
    _, per_sample = surrogate_loss(policy, theta, batch, beta=0.5, rho=0.2)
    assert torch.allclose(offline.per_pair, per_sample, atol=1e-12)


def test_rscgd_gradient_estimate_is_unbiased_without_baseline():
    """Σ over every (x, y1, y2, label) of probability × G == ∇L^W exactly, with sf_coef = 1 only."""
    generator = torch.Generator().manual_seed(8)
    policy, theta, p_star = _random_problem(generator)
    beta, rho = 0.9, 0.06
    point = theta.clone().requires_grad_(True)
    exact = torch.autograd.grad(policy.robust_loss(point, p_star, beta=beta, rho=rho), point)[0]
    weights = policy.pair_weights(theta).detach()
    expected = {1.0: torch.zeros_like(theta), 0.0: torch.zeros_like(theta)}
    outcomes = itertools.product(
        range(policy.num_prompts), range(policy.num_responses), range(policy.num_responses), (True, False)
    )
    for x, y1, y2, wins in outcomes:
        prob = weights[x, y1, y2] * (p_star[x, y1, y2] if wins else 1 - p_star[x, y1, y2])
        batch = RSCGDBatch(*(torch.tensor([v]) for v in (x, y1, y2, wins)))
        for sf in expected:
            surrogate, _ = surrogate_loss(
                policy, point, batch, beta=beta, rho=rho, sf_coef=sf, baseline=False
            )
            expected[sf] += prob * torch.autograd.grad(surrogate, point)[0]
    assert torch.allclose(expected[1.0], exact, atol=1e-12)
    assert not torch.allclose(expected[0.0], exact, atol=1e-4)  # the behaviour-policy approximation is biased


@pytest.fixture(scope="module")
def instance():
    return random_instance(4, 5, 3, seed=0, delta=0.15, rho_observed=0.05)


def test_rscgd_drives_moreau_envelope_gradient_down(instance):
    beta, rho, radius, steps = 1.0, 0.05, 4.0, 200
    kwargs = dict(
        beta=beta, rho=rho, steps=steps, batch_size=32, lr=0.3, radius=radius, snapshot_every=5, seed=3
    )
    run = rscgd(instance.policy, instance.p_observed, **kwargs)
    again = rscgd(instance.policy, instance.p_observed, **kwargs)
    assert torch.equal(run.snapshots, again.snapshots)  # deterministic given the seed
    lam = envelope_lambda(instance.policy, beta=beta, rho=rho, radius=radius)

    def envelope(theta: torch.Tensor) -> float:
        return moreau_envelope_grad_norm(
            instance.policy, theta, instance.p_observed, beta=beta, rho=rho, lam=lam
        )

    start = envelope(run.snapshots[0])
    late = [envelope(t) for t, s in zip(run.snapshots, run.snapshot_steps) if s >= 3 * steps // 4]
    assert start > 0.01
    assert sum(late) / len(late) < 0.5 * start


def test_rscgd_projection_keeps_iterates_in_the_ball(instance):
    radius = 0.25
    run = rscgd(
        instance.policy,
        instance.p_observed,
        beta=1.0,
        rho=0.05,
        steps=60,
        batch_size=8,
        lr=2.0,
        radius=radius,
        theta0=torch.full((3,), 5.0, dtype=F64),
    )
    distances = (run.snapshots - instance.policy.theta_ref).norm(dim=-1)
    assert distances.max() <= radius + 1e-12
    assert any(row["projected"] for row in run.metrics)
    assert max(row["dist_to_ref"] for row in run.metrics) <= radius + 1e-12


def test_score_function_coefficient_changes_the_update(instance):
    # Away from θ_ref (at θ_ref every ℓ_i = log 2 and the baselined score term vanishes).
    start = torch.tensor([0.5, -0.3, 0.2], dtype=F64)
    common = dict(beta=1.0, rho=0.05, steps=1, batch_size=16, lr=0.5, theta0=start, output="last")
    with_sf = rscgd(instance.policy, instance.p_observed, sf_coef=1.0, **common).theta
    without = rscgd(instance.policy, instance.p_observed, sf_coef=0.0, **common).theta
    assert (with_sf - without).norm() > 1e-6


def test_output_rule_random_returns_a_stored_iterate(instance):
    common = dict(beta=1.0, rho=0.05, steps=30, batch_size=8, lr=0.3, seed=11)
    random_run = rscgd(instance.policy, instance.p_observed, output="random", **common)
    last_run = rscgd(instance.policy, instance.p_observed, output="last", **common)
    assert random_run.output_rule == "random" and 0 <= random_run.output_index < 30
    assert random_run.snapshot_steps[random_run.output_index] == random_run.output_index
    assert torch.equal(random_run.theta, random_run.snapshots[random_run.output_index])
    assert last_run.output_rule == "last" and last_run.output_index == 30
    assert torch.equal(last_run.theta, last_run.theta_last)
    assert torch.equal(random_run.snapshots, last_run.snapshots)  # the rule does not change the path
    assert len(random_run.metrics) == 30


def test_proximal_refine_reaches_the_prox_point(instance):
    """K exact gradient steps on L^W + ‖θ − θ_R‖²/(2λ) land on prox_{λφ}(θ_R) from the L-BFGS solve."""
    policy, beta, rho = instance.policy, 1.0, 0.05
    lam = envelope_lambda(policy, beta=beta, rho=rho, radius=4.0)
    assert lam == pytest.approx(1 / (2 * robust_weak_convexity_bound(1.0, 4.0, beta=beta, rho=rho)))
    theta_r = torch.tensor([0.4, -0.8, 0.3], dtype=F64)
    refined = proximal_refine_exact(
        policy, theta_r, instance.p_observed, beta=beta, rho=rho, lam_env=lam, steps=500, eps_prox=1e-9
    )
    assert refined.converged and refined.residual < 1e-9
    prox = prox_point(policy, theta_r, instance.p_observed, beta=beta, rho=rho, lam=lam)
    assert torch.allclose(refined.theta, prox, atol=1e-8)
