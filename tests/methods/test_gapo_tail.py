"""The last-k-blocks anchor forward gives the full forward's anchor margins (same Γ, same loss, same grads)."""


import pytest
import torch

from conftest import make_pairs
from robalign.data.collate import collate
from robalign.data.tokenize import tokenize_pairs
from robalign.logprobs import split_body_and_head
from robalign.methods.gapo import GapoMethod, GapoParams
from robalign.reference import NoReference


def _batch(tok, shared_prompt):
    data, _ = tokenize_pairs(tok, make_pairs(4, seed=1), max_length=40, max_prompt_length=20)
    return collate(data, tok.pad_token_id, shared_prompt=shared_prompt)


def _step(model, batch, tail):
    method = GapoMethod(GapoParams(radius=0.5, scope="last_k_layers", last_k=1,
                                   tail_forward=tail))
    model.zero_grad(set_to_none=True)
    calls = []
    body, _ = split_body_and_head(model)
    handle = body.register_forward_pre_hook(lambda *_: calls.append(1))
    result = method.step(model, NoReference(), batch)
    handle.remove()
    result.loss.backward()
    return result, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("shared_prompt", [True, False])
@pytest.mark.parametrize("lora", [False, True])
def test_tail_anchor_equals_full_anchor(tiny, shared_prompt, lora):
    model = tiny[0].to(torch.float64)  # the fixture gives each test its own copy
    if lora:
        from robalign.models import apply_lora

        model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    batch = _batch(tiny[1], shared_prompt)
    full, g_full, full_calls = _step(model, batch, tail=False)
    tail, g_tail, tail_calls = _step(model, batch, tail=True)
    assert (full_calls, tail_calls) == (2, 1)  # the tail path never runs the body a second time
    assert full.per_pair["gap"].abs().min() > 1e-6  # a real anchor
    assert torch.allclose(full.per_pair["gap"], tail.per_pair["gap"], atol=1e-10, rtol=0)
    assert abs(full.loss.item() - tail.loss.item()) < 1e-12
    assert g_full.keys() == g_tail.keys()
    for n in g_full:
        assert torch.allclose(g_full[n], g_tail[n], atol=1e-10, rtol=0), n


@pytest.mark.parametrize("margin", ["simpo", "dpo"])
@pytest.mark.parametrize("lora", [None, ["q_proj", "v_proj"], ["q_proj", "v_proj", "lm_head"]])
def test_tail_first_order_anchor_equals_full_first_order_anchor(tiny, lora, margin):
    """The tail's written-out LM-head tangent (from the replayed states' logits) equals full forward-mode,
    also when the head itself carries adapters (then forward mode runs through it)."""
    model = tiny[0].to(torch.float64)  # the fixture gives each test its own copy
    if lora:
        from robalign.models import apply_lora

        model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=lora)
        for name, p in model.named_parameters():
            if "lm_head" in name and "lora_B" in name:  # PEFT starts B at 0: make the head's adapter count
                torch.nn.init.normal_(p, std=0.5)
    batch = _batch(tiny[1], True)
    ref = None
    if margin == "dpo":  # any fixed reference log-probs: the margin's tangent must not depend on them
        from robalign.pair_logps import PairLogps

        # Seeded, not the global RNG: a draw where every βh ≫ γ makes the probe gradient ~e^-40, which the
        # anchor step's eps swamps (δ ≈ 0), and whether that happened depended on the tests run before.
        g, b = torch.Generator().manual_seed(0), batch.num_pairs
        ref = PairLogps(-torch.rand(b, generator=g, dtype=torch.float64) * 50,
                        -torch.rand(b, generator=g, dtype=torch.float64) * 50, torch.ones(b), torch.ones(b))

    def gap(tail):
        cfg = GapoParams(radius=0.5, scope="last_k_layers", last_k=1, anchor="first_order", tail_forward=tail,
                         margin=margin)
        return GapoMethod(cfg).anchor(model, batch, ref).gap

    full, tail = gap(False), gap(True)
    assert full.abs().min() > 1e-6
    assert torch.allclose(full, tail, atol=1e-10, rtol=0)


def test_first_order_probe_takes_the_fused_head_so_step_0_margins_are_exactly_0(tiny, monkeypatch):
    """With margin 'dpo' and the policy equal to its reference, the probe's margins are exactly 0 only if the
    probe computes its log-probs as the reference does, through the fused head; a hook on the head (how the
    probe's logits used to be kept) sends it down the plain path, whose rounding differs on real vocabularies."""
    import robalign.logprobs as logprobs
    from robalign.reference import FrozenCopyReference

    model = tiny[0]
    batch = _batch(tiny[1], True)
    ref = FrozenCopyReference(model).logps(batch)
    fused = []
    can_fuse = logprobs.can_fuse
    monkeypatch.setattr(logprobs, "can_fuse", lambda head, hidden: fused.append(can_fuse(head, hidden)) or fused[-1])
    cfg = GapoParams(radius=0.5, scope="last_k_layers", last_k=1, anchor="first_order", margin="dpo")
    anchor = GapoMethod(cfg).anchor(model, batch, ref)
    assert fused == [True]  # the probe's one pass through the head (the anchor's head work is written out)
    assert torch.equal(anchor.margin, torch.zeros_like(anchor.margin))
    assert anchor.gap.abs().max() > 0  # the anchor itself moved
