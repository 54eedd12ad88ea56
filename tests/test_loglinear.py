"""Exact log-linear engine (SPEC §5–6): worked numbers, brute force, and R-SCGD behaviour."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from robalign.loglinear import (
    LogLinearPolicy,
    adversarial_oracle,
    antisymmetric,
    envelope_lambda,
    moreau_envelope_grad_norm,
    prox_point,
    proximal_refine_exact,
    random_instance,
    robust_weak_convexity_bound,
    rscgd,
    sensitivity_weak_convexity_bound,
    surrogate_loss,
)
from robalign.loglinear.rscgd import RSCGDBatch

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # The tensors here have a few dozen entries: intra-op threads only add contention (10x on a busy box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_problem(generator: torch.Generator, delta: float = 0.1):
    """Random X, Y, d, features, θ, θ_ref, μ, and an antisymmetric P⋆ uniform in [δ, 1 − δ]."""
    num_prompts, num_responses, dim = (
        int(torch.randint(lo, hi, (1,), generator=generator)) for lo, hi in ((1, 5), (2, 6), (1, 5))
    )
    features = torch.randn(num_prompts, num_responses, dim, generator=generator, dtype=F64)
    weights = torch.rand(num_prompts, generator=generator, dtype=F64) + 0.1
    theta_ref = 0.5 * torch.randn(dim, generator=generator, dtype=F64)
    policy = LogLinearPolicy(features, prompt_weights=weights, theta_ref=theta_ref)
    theta = theta_ref + torch.randn(dim, generator=generator, dtype=F64)
    upper = delta + (1 - 2 * delta) * torch.rand(
        num_prompts, num_responses, num_responses, generator=generator, dtype=F64
    )
    return policy, theta, antisymmetric(upper)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _softplus(z: float) -> float:
    return math.log1p(math.exp(z))


# --- the paper's example and basic identities --------------------------------------------------------


def test_paper_nonconvexity_example():
    """One prompt, ψ(a) = 1, ψ(b) = 0, θ_ref = 0: R(θ) = 2|θ|σ(θ)σ(−θ) (SPEC §6, arXiv 2602.20457)."""
    policy = LogLinearPolicy(torch.tensor([[[1.0], [0.0]]], dtype=F64))

    def penalty(t: float) -> float:
        return policy.sensitivity_penalty(torch.tensor([t], dtype=F64)).item()

    for t in (-3.0, -0.7, 0.0, 0.3, 1.0, 2.0, 5.0):
        assert penalty(t) == pytest.approx(2 * abs(t) * _sigmoid(t) * _sigmoid(-t), abs=1e-12)
    assert penalty(1.0) == pytest.approx(0.39322, abs=1e-5)
    assert penalty(2.0) == pytest.approx(0.41997, abs=1e-5)
    # Non-convexity: R(½·0 + ½·2) exceeds ½R(0) + ½R(2) by 0.18324.
    assert penalty(0.0) == 0.0
    assert penalty(1.0) - 0.5 * penalty(2.0) == pytest.approx(0.18324, abs=1e-5)


def test_sensitivity_weak_convexity_bound_holds_on_the_example():
    """R + κ_R‖θ‖²/2 is convex on |θ| ≤ D (second differences ≥ 0), while R alone is not."""
    policy = LogLinearPolicy(torch.tensor([[[1.0], [0.0]]], dtype=F64))
    radius, step = 3.0, 1e-3
    kappa = sensitivity_weak_convexity_bound(1.0, radius)
    assert kappa == 16.0 + 4.0 * radius
    grid = torch.linspace(-radius, radius, 601, dtype=F64)
    values = torch.stack([policy.sensitivity_penalty(t.view(1)) for t in grid])
    shifted = torch.stack([policy.sensitivity_penalty((t + step).view(1)) for t in grid])
    back = torch.stack([policy.sensitivity_penalty((t - step).view(1)) for t in grid])
    second = (shifted - 2 * values + back) / step**2
    assert second.min() < 0
    assert (second + kappa).min() >= 0


def test_log_probs_normalised_and_margins_antisymmetric():
    generator = torch.Generator().manual_seed(1)
    policy, theta, _ = _random_problem(generator)
    log_probs = policy.log_probs(theta)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(policy.num_prompts, dtype=F64), atol=1e-14)
    h = policy.margins(theta)
    assert torch.allclose(h, -h.transpose(1, 2), atol=0)
    # h is the DPO log-ratio margin: log-normalisers of π_θ and π_ref cancel (SPEC §1).
    ratio = log_probs - policy.log_probs(policy.theta_ref)
    assert torch.allclose(h, ratio[:, :, None] - ratio[:, None, :], atol=1e-12)


def test_float32_features_are_accepted():
    generator = torch.Generator().manual_seed(2)
    policy, theta, p_star = _random_problem(generator)
    single = LogLinearPolicy(policy.features.float(), policy.prompt_weights.float(), policy.theta_ref.float())
    exact = policy.robust_loss(theta, p_star, beta=1.0, rho=0.05)
    approx = single.robust_loss(theta.float(), p_star.float(), beta=1.0, rho=0.05)
    assert approx.dtype == torch.float32
    assert approx.item() == pytest.approx(exact.item(), rel=1e-5)


def test_sail_loss_matches_nested_loops():
    generator = torch.Generator().manual_seed(3)
    beta = 0.7
    for _ in range(3):
        policy, theta, p_star = _random_problem(generator)
        feats, mu = policy.features.tolist(), policy.prompt_weights.tolist()
        th, ref, p = theta.tolist(), policy.theta_ref.tolist(), p_star.tolist()
        total = 0.0
        for x in range(policy.num_prompts):
            scores = [sum(a * b for a, b in zip(th, feats[x][y])) for y in range(policy.num_responses)]
            norm = sum(math.exp(s) for s in scores)
            for y1, y2 in itertools.product(range(policy.num_responses), repeat=2):
                h = sum((a - r) * (f1 - f2) for a, r, f1, f2 in zip(th, ref, feats[x][y1], feats[x][y2]))
                expected_dpo = p[x][y1][y2] * _softplus(-beta * h) + (1 - p[x][y1][y2]) * _softplus(beta * h)
                total += mu[x] * math.exp(scores[y1]) / norm * math.exp(scores[y2]) / norm * expected_dpo
        assert policy.sail_loss(theta, p_star, beta=beta).item() == pytest.approx(total, abs=1e-12)


# --- closed form vs brute-force worst case -----------------------------------------------------------


def test_closed_form_equals_brute_force_worst_case():
    """L_SAIL + ρβR == max over the ρ-box of L_SAIL, when ρ < δ ≤ P⋆ ≤ 1 − δ (SPEC §5)."""
    generator = torch.Generator().manual_seed(4)
    for _ in range(25):
        delta = 0.05 + 0.4 * torch.rand(1, generator=generator).item()
        rho = delta * torch.rand(1, generator=generator).item()
        beta = 0.1 + 2 * torch.rand(1, generator=generator).item()
        policy, theta, p_star = _random_problem(generator, delta)
        closed = policy.robust_loss(theta, p_star, beta=beta, rho=rho)
        brute = policy.worst_case_loss(theta, p_star, beta=beta, rho=rho)
        assert closed.item() == pytest.approx(brute.item(), abs=1e-10)
        # The maximiser: move every P⋆ by ρ against the sign of h.
        h = policy.margins(theta)
        attained = policy.sail_loss(theta, p_star - rho * torch.sign(h), beta=beta)
        assert attained.item() == pytest.approx(brute.item(), abs=1e-10)


def test_worst_case_dominates_every_oracle_in_the_box():
    generator = torch.Generator().manual_seed(5)
    for _ in range(10):
        policy, theta, p_star = _random_problem(generator, delta=0.2)
        worst = policy.worst_case_loss(theta, p_star, beta=1.0, rho=0.15).item()
        for _ in range(20):
            noise = 0.15 * (2 * torch.rand(p_star.shape, generator=generator, dtype=F64) - 1)
            oracle = antisymmetric(p_star + noise)
            assert policy.sail_loss(theta, oracle, beta=1.0).item() <= worst + 1e-12


def test_closed_form_overstates_worst_case_when_box_leaves_unit_interval():
    """If P⋆ + ρ > 1 the box is cut at 1, so the closed form is only an upper bound."""
    policy = LogLinearPolicy(torch.tensor([[[1.0], [0.0]]], dtype=F64))
    p_star = antisymmetric(torch.full((1, 2, 2), 0.02, dtype=F64))  # P⋆(a ≻ b) = 0.02 < ρ
    theta = torch.tensor([1.5], dtype=F64)  # h(a, b) > 0, so the adversary wants P(a ≻ b) lower
    closed = policy.robust_loss(theta, p_star, beta=1.0, rho=0.1).item()
    brute = policy.worst_case_loss(theta, p_star, beta=1.0, rho=0.1).item()
    assert brute < closed - 1e-3
    clipped = policy.sail_loss(theta, antisymmetric(torch.zeros(1, 2, 2, dtype=F64)), beta=1.0).item()
    assert brute == pytest.approx(clipped, abs=1e-12)


def test_robust_loss_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(6)
    step = 1e-6
    for _ in range(3):
        policy, theta, p_star = _random_problem(generator)
        point = theta.clone().requires_grad_(True)
        policy.robust_loss(point, p_star, beta=0.8, rho=0.07).backward()
        numeric = torch.zeros_like(theta)
        for k in range(theta.numel()):
            e = torch.zeros_like(theta)
            e[k] = step
            up = policy.robust_loss(theta + e, p_star, beta=0.8, rho=0.07)
            down = policy.robust_loss(theta - e, p_star, beta=0.8, rho=0.07)
            numeric[k] = (up - down) / (2 * step)
        assert torch.allclose(point.grad, numeric, atol=1e-8, rtol=1e-6)


# --- rDPO and the offline robust loss on engine log-probs --------------------------------------------


def _engine_pairs(num_pairs: int = 12, seed: int = 7):
    """Sequence log-probs of (x, y_w, y_l) pairs, y_w ≠ y_l, from the engine at θ and θ_ref."""
    generator = torch.Generator().manual_seed(seed)
    policy, theta, _ = _random_problem(generator)
    while policy.num_responses < 3:
        policy, theta, _ = _random_problem(generator)
    x = torch.randint(policy.num_prompts, (num_pairs,), generator=generator)
    both = torch.stack(
        [torch.randperm(policy.num_responses, generator=generator)[:2] for _ in range(num_pairs)]
    )
    y_w, y_l = both[:, 0], both[:, 1]
    lp, ref = policy.log_probs(theta), policy.log_probs(policy.theta_ref)
    pairs = {
        "chosen_logps": lp[x, y_w],
        "rejected_logps": lp[x, y_l],
        "ref_chosen_logps": ref[x, y_w],
        "ref_rejected_logps": ref[x, y_l],
    }
    return policy, theta, pairs, (x, y_w, y_l)


def _flip(pairs: dict) -> dict:
    return {
        "chosen_logps": pairs["rejected_logps"],
        "rejected_logps": pairs["chosen_logps"],
        "ref_chosen_logps": pairs["ref_rejected_logps"],
        "ref_rejected_logps": pairs["ref_chosen_logps"],
    }


def test_rdpo_on_flipped_labels_is_unbiased_for_dpo():
    """E over flips at rate ε (enumerated exactly) of rDPO on noisy labels == DPO on clean labels (SPEC §2)."""
    losses = pytest.importorskip("robalign.losses")
    _, _, clean, _ = _engine_pairs()
    for beta, epsilon in ((0.1, 0.1), (1.0, 0.3), (2.0, 0.45)):
        dpo = losses.preference_loss("dpo", beta=beta, **clean)
        kept = losses.preference_loss("rdpo", beta=beta, epsilon=epsilon, **clean)
        flipped = losses.preference_loss("rdpo", beta=beta, epsilon=epsilon, **_flip(clean))
        expected = (1 - epsilon) * kept.per_pair + epsilon * flipped.per_pair
        assert torch.allclose(expected, dpo.per_pair, atol=1e-12)
        assert ((1 - epsilon) * kept.loss + epsilon * flipped.loss).item() == pytest.approx(
            dpo.loss.item(), abs=1e-12
        )
        # And the noise is real: plain DPO on the noisy labels is biased.
        noisy_dpo = (1 - epsilon) * dpo.per_pair + epsilon * losses.preference_loss(
            "dpo", beta=beta, **_flip(clean)
        ).per_pair
        assert not torch.allclose(noisy_dpo, dpo.per_pair, atol=1e-3)


def test_offline_robust_loss_equals_rscgd_per_sample_loss():
    """SPEC §2's `oracle_robust_offline` row is R-SCGD's ℓ_i = softplus(−βh(y_w, y_l)) + ρβ|h| (SPEC §5)."""
    losses = pytest.importorskip("robalign.losses")
    policy, theta, pairs, (x, y_w, y_l) = _engine_pairs()
    offline = losses.preference_loss("oracle_robust_offline", beta=0.5, rho=0.2, **pairs)
    batch = RSCGDBatch(prompts=x, y1=y_w, y2=y_l, y1_wins=torch.ones_like(x, dtype=torch.bool))
    _, per_sample = surrogate_loss(policy, theta, batch, beta=0.5, rho=0.2)
    assert torch.allclose(offline.per_pair, per_sample, atol=1e-12)


# --- R-SCGD -----------------------------------------------------------------------------------------


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


def test_adversarial_oracle_stays_within_rho():
    p_star = random_instance(3, 4, 2, seed=1, delta=0.2).p_star
    observed = adversarial_oracle(p_star, 0.1)
    assert (observed - p_star).abs().max().item() == pytest.approx(0.1)
    assert torch.allclose(observed, antisymmetric(observed))
