"""Tests for robalign.methods.gapo_weights: the anchor's scope (last k layers, all, LoRA) and its precision guard."""

import pytest
import torch
from test_gapo import _batch, _copy, _method, _record_anchor_weights, _snapshot

from robalign.errors import UserError
from robalign.methods.gapo_weights import scoped_parameters
from robalign.reference import NoReference


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
