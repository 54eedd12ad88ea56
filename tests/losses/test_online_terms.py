"""The pure terms of SAIL and oracle-robust online alignment, with worked numbers and limits."""

import math

import torch
import torch.nn.functional as F

from robalign.losses import preference_loss
from robalign.losses.online import (
    DP,
    DPO,
    PP,
    PR,
    draw_routes,
    oracle_robust_loss,
    sail_loss,
    score_function_term,
    self_label,
    self_label_term,
    sensitivity_penalty,
)


def test_self_label_term_worked_number_and_finite_difference_gradient():
    # h = 2, β = 0.5, coef = 0.2: −½·0.2·(log σ(1))² = −0.1·0.313262² = −0.00981330
    value = self_label_term(torch.tensor([2.0], dtype=torch.float64), 0.5, 0.2)
    assert abs(value.item() + 0.1 * math.log(1 / (1 + math.exp(-1))) ** 2) < 1e-12
    assert abs(value.item() + 0.0098133) < 1e-6
    h = torch.tensor([-3.0, -0.4, 0.0, 1.5, 7.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(self_label_term(h, 0.3, 0.7).sum(), h)
    eps = 1e-6
    numeric = (self_label_term(h.detach() + eps, 0.3, 0.7) - self_label_term(h.detach() - eps, 0.3, 0.7)) / (2 * eps)
    assert torch.allclose(grad, numeric, atol=1e-9)
    # Closed form: d/dh −½c(log σ(βh))² = −c·β·log σ(βh)·σ(−βh) (positive: it pushes h down).
    closed = -0.7 * 0.3 * F.logsigmoid(0.3 * h.detach()) * torch.sigmoid(-0.3 * h.detach())
    assert torch.allclose(grad, closed, atol=1e-12)


def test_score_function_term_value_gradient_and_batch_mean_baseline():
    loss = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    logp = torch.tensor([-3.0, -5.0, -1.0], dtype=torch.float64, requires_grad=True)
    term, b = score_function_term(loss, logp, 0.5)
    assert abs(b.item() - 0.5) < 1e-12
    assert torch.allclose(term, 0.5 * torch.tensor([-0.3, 0.4, -0.1], dtype=torch.float64) * logp.detach())
    g_loss, g_logp = torch.autograd.grad(term.sum(), (loss, logp), allow_unused=True)
    assert g_loss is None or torch.count_nonzero(g_loss) == 0  # ℓ enters as a constant
    assert torch.allclose(g_logp, 0.5 * (loss.detach() - 0.5))  # coef·(ℓ − b)·∇lp
    # b is the batch mean: changing one sample's loss changes every other sample's term.
    moved, b2 = score_function_term(torch.tensor([0.2, 0.9, 1.3], dtype=torch.float64), logp.detach(), 0.5)
    assert abs(b2.item() - 0.8) < 1e-12
    assert (moved[:2] != term.detach()[:2]).all()
    # A constant shift of every loss leaves the term unchanged.
    shifted, _ = score_function_term(loss.detach() + 10, logp.detach(), 0.5)
    assert torch.allclose(shifted, term.detach())


def test_score_function_baseline_over_sampled_rows_only():
    loss = torch.tensor([5.0, 1.0, 3.0, 100.0])
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    mask = torch.tensor([False, True, True, False])
    term, b = score_function_term(loss, logp, torch.tensor([0.0, 0.2, 0.3, 0.0]), mask)
    assert b.item() == 2.0
    assert torch.allclose(term, torch.tensor([0.0, 0.2 * -1 * -2, 0.3 * 1 * -3, 0.0]))


def test_sensitivity_penalty():
    h = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(sensitivity_penalty(h, 0.1, 0.25), torch.tensor([0.05, 0.0, 0.075]))


def test_route_frequencies_match_r_p_g():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    routes = draw_routes(u, r=0.2, p=0.3, g=0.1)
    freq = torch.bincount(routes, minlength=4).double() / len(u)
    assert torch.allclose(freq, torch.tensor([0.4, 0.2, 0.3, 0.1], dtype=torch.float64), atol=0.005)
    assert (draw_routes(u, 0.0, 0.0, 0.0) == DPO).all()
    assert not (draw_routes(u, 0.4, 0.3, 0.3) == DPO).any()
    assert (draw_routes(u, 0.0, 0.0, 1.0) == PR).all()


def test_self_label_swaps_with_probability_one_minus_sigmoid():
    n, beta = 100_000, 0.5
    gen = torch.Generator().manual_seed(1)
    for h in (-3.0, 0.0, 1.2, 4.0):
        kept = self_label(torch.full((n,), h), beta, torch.rand(n, generator=gen))
        swap_rate = 1 - kept.double().mean().item()
        expected = 1 - 1 / (1 + math.exp(-beta * h))
        assert abs(swap_rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def _logps(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(b, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)]


def test_sail_all_dpo_rows_is_dpo_exactly():
    c, r, rc, rr = _logps(5)
    dpo = preference_loss("dpo", chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr,
                          beta=0.1)
    h = (c - rc) - (r - rr)
    out = sail_loss(h, torch.ones(5, dtype=torch.bool), c + r, torch.full((5,), DPO), beta=0.1,
                    coef_dp=0.2, coef_pp=0.2, coef_pr=0.3)
    assert torch.equal(out.loss, dpo.loss)
    assert torch.equal(out.per_pair, dpo.per_pair)


def test_sail_per_route_terms_worked_by_hand():
    h = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    y1 = torch.tensor([True, False, True, False])
    logp = torch.tensor([-10.0, -20.0, -30.0, -40.0], dtype=torch.float64)
    routes = torch.tensor([DPO, DP, PP, PR])
    out = sail_loss(h, y1, logp, routes, beta=0.5, coef_dp=0.2, coef_pp=0.4, coef_pr=0.3)
    hw = torch.tensor([1.0, 2.0, 0.5, -3.0], dtype=torch.float64)
    base = F.softplus(-0.5 * hw)
    b = (base[2] + base[3]) / 2
    expected = torch.stack([
        base[0],
        base[1] - 0.5 * 0.2 * F.logsigmoid(0.5 * hw[1]) ** 2,
        base[2] - 0.5 * 0.4 * F.logsigmoid(0.5 * hw[2]) ** 2 + 0.4 * (base[2] - b) * logp[2],
        base[3] + 0.3 * (base[3] - b) * logp[3],
    ])
    assert torch.allclose(out.per_pair, expected)
    assert torch.allclose(out.loss, expected.mean())  # every term averaged over all B pairs


def test_oracle_robust_limits_and_gradient():
    c, r, rc, rr = _logps(6, seed=2)
    h = ((c - rc) - (r - rr)).requires_grad_(True)
    y1 = torch.tensor([True, False, True, True, False, False])
    logp = (c + r).requires_grad_(True)
    plain = oracle_robust_loss(h, y1, logp, beta=0.1, rho=0.0, sf_coef=0.0)
    hw = torch.where(y1, h, -h)
    assert torch.allclose(plain.loss, F.softplus(-0.1 * hw).mean())  # ρ = 0, sf = 0: online DPO
    out = oracle_robust_loss(h, y1, logp, beta=0.1, rho=0.2, sf_coef=1.0)
    assert torch.allclose(out.extra, 0.2 * 0.1 * h.detach().abs())
    gh, glp = torch.autograd.grad(out.loss, (h, logp))
    ell = (F.softplus(-0.1 * hw) + 0.02 * h.abs()).detach()
    assert torch.allclose(glp, (ell - ell.mean()) / 6)  # sf·(ℓ − b)·∇lp, averaged over B
    dell = torch.where(y1, -0.1 * torch.sigmoid(-0.1 * hw), 0.1 * torch.sigmoid(-0.1 * hw)) + 0.02 * h.sign()
    assert torch.allclose(gh, dell.detach() / 6)


def test_baseline_summed_over_processes_is_the_global_batch_mean():
    # Two "processes" hold halves of a global batch; all_sum adds the other half's (sum, count), as
    # torch.distributed.all_reduce would. Each half then gets the baseline of the whole batch.
    loss = torch.tensor([0.2, 0.9, 0.4, 1.7], dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])
    _, whole = score_function_term(loss, torch.zeros(4, dtype=torch.float64), 1.0, mask)
    halves = [(loss[:2], mask[:2]), (loss[2:], mask[2:])]
    local = [torch.stack([(v * m).sum(), m.double().sum()]) for v, m in halves]
    for k, (v, m) in enumerate(halves):
        _, b = score_function_term(v, torch.zeros(2, dtype=torch.float64), 1.0, m,
                                   all_sum=lambda s, k=k: s + local[1 - k])
        assert abs(b.item() - whole.item()) < 1e-15
    assert abs(whole.item() - (0.2 + 0.4 + 1.7) / 3) < 1e-15
