"""GAPO (SPEC §3): the anchor step by hand, exact restoration, limits, equivalent paths, scope, precision."""

import copy
import json
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
from robalign.methods.gapo_weights import scoped_parameters
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


def test_scope_last_k_layers_and_all(tiny):
    batch = _batch(tiny[1])
    for scope, expect in (("last_k_layers", lambda n: n.startswith("model.layers.1.")), ("all", lambda n: True)):
        model = _copy(tiny)
        before = _snapshot(model)
        seen, handle = _record_anchor_weights(model)
        _method(scope=scope, last_k=1, tail_forward=False).step(model, NoReference(), batch)  # 2nd body pass
        handle.remove()
        changed = {n for n in before if not torch.equal(seen[1][n], before[n])}
        names = {n for n in before if expect(n)}
        # every weight in scope moves except embedding rows no token used (all of a tensor never stays)
        assert changed == names, (scope, changed ^ names)
    assert "lm_head.weight" in changed


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


def test_first_order_anchor_matches_exact_for_small_radius_only(tiny):
    model, batch = _copy(tiny, torch.float64), _batch(tiny[1])

    def gaps(rho, anchor):
        return _method(radius=rho, anchor=anchor).anchor(model, batch).gap

    small_exact, small_fo = gaps(1e-2, "exact"), gaps(1e-2, "first_order")
    assert (small_fo - small_exact).norm() / small_exact.norm() < 1e-2
    big_exact, big_fo = gaps(20.0, "exact"), gaps(20.0, "first_order")
    assert (big_fo - big_exact).norm() / big_exact.norm() > 5e-2


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


# ------------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("anchor", ["exact", "first_order"])
def test_lora_anchor_perturbs_base_weights_only_and_leaves_no_frozen_grads(tiny, anchor):
    from robalign.models import apply_lora

    model = apply_lora(_copy(tiny), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # nonzero adapters, so the ASAM scale W + s·BA differs from W
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch = _batch(tiny[1])
    before = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    scoped = {n for n, _ in scoped_parameters(model, "backbone")}
    assert not scoped & trainable and "base_model.model.lm_head.weight" not in scoped
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in scoped
    seen, handle = _record_anchor_weights(model)
    result = _method(anchor=anchor).step(model, NoReference(), batch)
    handle.remove()
    result.loss.backward()
    if anchor == "exact":
        changed = {n for n in before if not torch.equal(seen[1][n], before[n])}
        assert changed == scoped
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.requires_grad == (n in trainable), n
        assert (p.grad is not None) == (n in trainable), n  # frozen weights gathered no .grad
    assert result.per_pair["gap"].abs().max() > 0


# ------------------------------------------------------------------------------------ precision


def test_precision_guard_and_changed_fraction_in_bf16(tiny):
    batch = _batch(tiny[1], n=2)
    model = _copy(tiny, torch.bfloat16)
    with pytest.raises(UserError, match="fp32"):
        _method().step(model, NoReference(), batch)
    fp32 = _copy(tiny)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(UserError, match="autocast"):
        _method().step(fp32, NoReference(), batch)
    result = _method(allow_low_precision_anchor=True).step(model, NoReference(), batch)
    # ρ = 0.05: at most ~(ρ·2⁹)² ≈ 655 of ~80k moved bf16 weights can change at all
    assert result.metrics["gapo/changed_fraction"] < 0.02
    assert _method().anchor(fp32, batch).changed_fraction > 0.95


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


@pytest.mark.parametrize("lora_r", [0, 4])
def test_trainer_end_to_end_writes_pairs_plot_and_summary(tmp_path, lora_r):
    from robalign.trainer import Trainer

    tree = {"model": {"name": "tiny-llama", "lora_r": lora_r}, "method": {"name": "gapo"},
            "gapo": {"radius": 0.5, "margin": "dpo" if lora_r else "simpo"}, "data": {"max_length": 40},
            "train": {"output_dir": str(tmp_path), "batch_size": 4, "max_steps": 2, "lr": 1e-3, "progress": False}}
    pairs = make_pairs(8)
    Trainer(build_config(tree), train_pairs=pairs, eval_pairs=pairs[:2]).train()
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["step"] for r in rows} == {1, 2}
    assert all({"id", "gap", "weight", "is_flipped"} <= set(r) for r in rows)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("gapo/changed_fraction" in m and m["gapo/changed_fraction"] > 0.95 for m in metrics)
    assert (tmp_path / "gapo_weights.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "gapo_summary.json").read_text())
    last = [r for r in rows if r["step"] == 2]
    assert summary["pairs"] == len(last) and summary["from_step"] == 2
    flipped = [r["weight"] for r in last if r["is_flipped"]]
    assert summary["weight_flipped_mean"] == pytest.approx(sum(flipped) / len(flipped))
