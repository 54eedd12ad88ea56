"""Tests for robalign.loglinear.policy, the exact log-linear engine (SPEC §5–6): worked numbers, brute force,
the adversarial oracle, and rDPO on engine log-probs.

Tests of the other loglinear modules live beside this file and import its helpers from here.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from robalign.loglinear import LogLinearPolicy, adversarial_oracle, antisymmetric, random_instance

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


# --- rDPO on engine log-probs (test_rscgd.py: the offline robust loss) -------------------------------


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


def test_adversarial_oracle_stays_within_rho():
    p_star = random_instance(3, 4, 2, seed=1, delta=0.2).p_star
    observed = adversarial_oracle(p_star, 0.1)
    assert (observed - p_star).abs().max().item() == pytest.approx(0.1)
    assert torch.allclose(observed, antisymmetric(observed))
