"""GAPO (SPEC §3): the anchor step by hand, limits, equivalent paths, metrics.

The anchor weights are tested in test_gapo_anchor.py, the scope and precision in test_gapo_weights.py, the
end-of-run report in test_gapo_report.py; they import the helpers here.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_pairs
from robalign.config import build_config
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import ConfigError, UserError
from robalign.logprobs import sequence_logps
from robalign.losses.gapo import anchor_step, flip_auroc, flip_auroc_ranked, gapo_loss
from robalign.methods import build_method, method_params
from robalign.methods.gapo import GapoMethod, GapoParams
from robalign.reference import FrozenCopyReference, NoReference

BETA, GAMMA = 2.0, 0.5


def _batch(tok, n=4, seed=0):
    data, _ = tokenize_pairs(tok, make_pairs(n, seed=seed), max_length=40, max_prompt_length=20)
    return collate(data, tok.pad_token_id)


def _method(**gapo):
    return GapoMethod(GapoParams(**gapo))


def _copy(tiny, dtype=None):
    model = copy.deepcopy(tiny[0])
    return model.to(dtype) if dtype is not None else model


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _record_anchor_weights(model):
    """Hook on the body: the weights as every forward saw them (the 2nd call of a step is the anchor)."""
    from robalign.logprobs import split_body_and_head

    seen = []
    body, _ = split_body_and_head(model)
    handle = body.register_forward_pre_hook(lambda *_: seen.append(_snapshot(model)))
    return seen, handle


# ------------------------------------------------------------------------------------- pure math


def test_anchor_step_by_hand_one_global_norm():
    g = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0]])]
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[-2.0]])]
    rho = 0.1
    # ASAM: w⊙g = [3, 8], [-2] -> ‖w⊙g‖ = √77 over both tensors; w⊙w⊙g = [3, 16], [4]
    asam = anchor_step(g, w, rho=rho)
    assert torch.allclose(asam[0], rho * torch.tensor([3.0, 16.0]) / math.sqrt(77))
    assert torch.allclose(asam[1], rho * torch.tensor([[4.0]]) / math.sqrt(77))
    # SAM: ‖g‖ = √26 over both tensors
    sam = anchor_step(g, None, rho=rho)
    assert torch.allclose(sam[0], rho * torch.tensor([3.0, 4.0]) / math.sqrt(26))
    assert torch.allclose(sam[1], rho * torch.tensor([[1.0]]) / math.sqrt(26))
    # a per-tensor norm would give a different step
    assert not torch.allclose(sam[0], rho * g[0] / g[0].norm())
    zero = anchor_step([torch.zeros(3)], [torch.ones(3)], rho=rho)
    assert torch.equal(zero[0], torch.zeros(3))  # no NaN from 0/0
    assert anchor_step([g[0].bfloat16()], None, rho=rho)[0].dtype == torch.float32


def test_gapo_loss_weight_is_the_gradient_factor():
    m = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    anchor = torch.tensor([0.1, 0.4, 1.0])
    per_pair, gap, weight = gapo_loss(m, anchor, beta=BETA, gamma=GAMMA)
    assert torch.allclose(gap, torch.tensor([0.2, -0.6, 0.0]))
    assert torch.allclose(per_pair, F.softplus(-(BETA * gap - GAMMA)))
    assert torch.allclose(weight, torch.sigmoid(GAMMA - BETA * gap))
    per_pair.sum().backward()
    assert torch.allclose(m.grad, -BETA * weight)  # ∂ℓ_i/∂m_i = −β σ(γ − βΓ_i); m̃ is a constant


def test_flip_auroc_by_hand_ties_and_single_class():
    scores = torch.tensor([0.9, 0.5, 0.5, 0.1, 0.7])
    flags = torch.tensor([1.0, 1.0, 0.0, 0.0, math.nan])
    # flipped {0.9, 0.5} vs clean {0.5, 0.1}: wins 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4
    assert flip_auroc(scores, flags).item() == pytest.approx(0.875)
    assert flip_auroc_ranked(scores, flags).item() == pytest.approx(0.875)
    assert math.isnan(flip_auroc(scores, torch.tensor([1.0, 1.0, math.nan, 1.0, 1.0])).item())
    assert math.isnan(flip_auroc_ranked(scores, torch.zeros(5)).item())
    gen = torch.Generator().manual_seed(0)
    s, f = torch.randn(200, generator=gen).round(decimals=1), (torch.rand(200, generator=gen) < 0.3).float()
    assert flip_auroc(s, f).item() == pytest.approx(flip_auroc_ranked(s, f).item(), abs=1e-6)


# ------------------------------------------------------------------------------------ validation


def test_parameters_and_config_are_validated():
    d = GapoParams().to_dict()
    assert {k: d[k] for k in ("beta", "gamma", "sft_weight", "sft_reduction")} == {
        "beta": 2.0, "gamma": 0.5, "sft_weight": 0.0, "sft_reduction": "mean"}
    for bad in ({"epsilon": 0.1}, {"beta": 0.0}, {"beta": float("nan")}, {"sft_weight": -1.0},
                {"sft_reduction": "max"}, {"gamma": True}):
        with pytest.raises(ValueError):
            method_params("gapo", bad)
    tree = {"method": {"name": "gapo", "beta": 1.5, "gamma": 0.2}, "gapo": {"radius": 0.1, "margin": "dpo"}}
    cfg = build_config(tree)
    method = build_method("gapo", cfg.method.params, cfg)
    assert (method.beta, method.gamma, method.params.radius, method.needs_reference) == (1.5, 0.2, 0.1, True)
    assert not build_method("gapo", {}).needs_reference
    for bad in ({"radius": -0.1}, {"scope": "head"}, {"perturbation": "adam"}, {"anchor": "second"},
                {"last_k": 0}, {"margin": "ipo"}):
        with pytest.raises(ConfigError):
            build_config({"gapo": bad})
    with pytest.raises(ConfigError, match="epsilon"):
        build_config({"method": {"name": "gapo", "epsilon": 0.1}})
    with pytest.raises(ConfigError, match="lora_dropout"):
        cfg = build_config({"model": {"lora_dropout": 0.1}, "method": {"name": "gapo"}})
        build_method("gapo", {}, cfg)


def test_live_dropout_is_refused(tiny):
    model = _copy(tiny)
    model.model.layers[0].mlp.add_module("drop", torch.nn.Dropout(0.1))
    with pytest.raises(UserError, match="dropout"):
        _method().step(model, NoReference(), _batch(tiny[1]))


# ---------------------------------------------------------------------------------- the anchor


def test_rho_zero_gives_zero_gap_uniform_weights_and_scaled_simpo_gradient(tiny):
    model, batch = _copy(tiny), _batch(tiny[1])
    result = _method(radius=0.0).step(model, NoReference(), batch)
    assert torch.allclose(result.per_pair["gap"], torch.zeros(4), atol=1e-6)
    assert torch.allclose(result.per_pair["weight"], torch.full((4,), torch.sigmoid(torch.tensor(GAMMA)).item()))
    assert result.loss.item() == pytest.approx(F.softplus(torch.tensor(GAMMA)).item(), rel=1e-5)
    result.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    # Γ ≡ 0 but ∇Γ_i = ∇M_i, so ∇L = −β σ(γ) mean_i ∇M_i
    model.zero_grad()
    c, r = sequence_logps(model, batch).mean()
    (-BETA * torch.sigmoid(torch.tensor(GAMMA)) * (c - r).mean()).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-7), n


def _loss_and_grads(model, method, batch):
    model.zero_grad()
    result = method.step(model, NoReference(), batch)
    result.loss.backward()
    return result, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_reused_graph_equals_three_forward_path_in_float64(tiny):
    model, batch = _copy(tiny, torch.float64), _batch(tiny[1])
    a, ga = _loss_and_grads(model, _method(radius=0.5, reuse_graph=True), batch)
    b, gb = _loss_and_grads(model, _method(radius=0.5, reuse_graph=False), batch)
    assert a.per_pair["gap"].abs().min() > 1e-4  # a real anchor, not the ρ = 0 limit
    assert abs(a.loss.item() - b.loss.item()) < 1e-6
    assert torch.allclose(a.per_pair["gap"], b.per_pair["gap"], atol=1e-6)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6), n


def test_dpo_margin_uses_the_reference(tiny):
    model, batch = _copy(tiny), _batch(tiny[1])
    ref = FrozenCopyReference(model)
    with torch.no_grad():  # move the policy away from the reference so h ≠ Δ_θ
        model.model.norm.weight.mul_(1.1)
    result = _method(margin="dpo").step(model, ref, batch)
    lp, rl = sequence_logps(model, batch), ref.logps(batch)
    h = (lp.chosen - rl.chosen) - (lp.rejected - rl.rejected)
    assert torch.allclose(result.per_pair["margin"], h.detach(), atol=1e-5)
    assert result.metrics["rewards/chosen"].item() == pytest.approx(
        (BETA * (lp.chosen - rl.chosen)).mean().item(), rel=1e-5)


# ------------------------------------------------------------------------------------ metrics


def test_step_metrics_and_per_pair_records(tiny):
    model, batch = _copy(tiny), _batch(tiny[1], n=6)
    result = _method(radius=0.5).step(model, NoReference(), batch)
    w = result.per_pair["weight"]
    flags = batch.is_flipped
    assert set(result.per_pair) >= {"gap", "weight", "margin"}
    assert result.metrics["gapo/weight_min"].item() == pytest.approx(w.min().item())
    assert result.metrics["gapo/weight_flipped"].item() == pytest.approx(w[flags == 1].mean().item())
    assert result.metrics["gapo/weight_clean"].item() == pytest.approx(w[flags == 0].mean().item())
    assert result.metrics["gapo/flip_auroc"].item() == pytest.approx(flip_auroc_ranked(-w, flags).item())
    c, r = sequence_logps(model, batch).mean()
    assert result.metrics["rewards/chosen"].item() == pytest.approx((BETA * c).mean().item(), rel=1e-5)
    batch.is_flipped = torch.full_like(flags, math.nan)
    assert "gapo/flip_auroc" not in _method().step(model, NoReference(), batch).metrics
