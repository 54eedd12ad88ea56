"""The chunked LM-head log-probs against the plain linear + cross-entropy path and finite differences."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robalign.fused_head import can_fuse, chunk_columns, fused_token_logps


def plain(weight, hidden, targets):
    logits = F.linear(hidden, weight)
    return -F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="none")


def _inputs(n=37, vocab=1000, h=24, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, h, generator=g, dtype=dtype)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0], targets[1] = 0, vocab - 1  # the first column and the last, partial chunk
    return weight, hidden, targets


@pytest.mark.parametrize("chunk", [1, 128, 300, 1000, 4096])
def test_values_and_input_gradient_equal_the_plain_path(chunk):
    weight, hidden, targets = _inputs()
    upstream = torch.randn(hidden.shape[0], dtype=hidden.dtype)
    h1 = hidden.clone().requires_grad_(True)
    h2 = hidden.clone().requires_grad_(True)
    got = fused_token_logps(weight, h1, targets, chunk)
    want = plain(weight, h2, targets)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trained_head", [False, True])
def test_gradients_match_finite_differences(trained_head):
    """Both backward paths: the input gradient folded into the forward (frozen head) and the kept logits."""
    weight, hidden, targets = _inputs(n=5, vocab=50, h=6)
    hidden.requires_grad_(True)
    weight.requires_grad_(trained_head)
    assert torch.autograd.gradcheck(lambda x, w: fused_token_logps(w, x, targets, 16), (hidden, weight))


@pytest.mark.parametrize("chunk", [7, 128, 1000])
def test_weight_gradient_of_a_trained_head_equals_the_plain_path(chunk):
    weight, hidden, targets = _inputs()
    targets[2:5] = targets[5]  # repeated targets accumulate into one row
    upstream = torch.randn(hidden.shape[0], dtype=hidden.dtype)
    grads = []
    for fn in (lambda w, h: fused_token_logps(w, h, targets, chunk), lambda w, h: plain(w, h, targets)):
        w, h = weight.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
        (fn(w, h) * upstream).sum().backward()
        grads.append((w.grad, h.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-12)


def test_same_arithmetic_with_and_without_gradients():
    """A policy equal to its reference must give margins of exactly 0: the values may not depend on the mode."""
    weight, hidden, targets = _inputs(n=50, vocab=3000, h=32, dtype=torch.float32)
    with torch.no_grad():
        frozen = fused_token_logps(weight, hidden, targets)
    trained = fused_token_logps(weight.clone().requires_grad_(True), hidden.clone().requires_grad_(True), targets)
    assert torch.equal(frozen, trained.detach())


def test_large_logits_do_not_overflow_across_chunks():
    # The running maximum must be rescaled: the largest logit sits in a late chunk, far above the first ones.
    weight, hidden, targets = _inputs(n=8, vocab=600, h=4, dtype=torch.float32)
    weight[550:] *= 200.0
    got = fused_token_logps(weight, hidden, targets, 100)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, plain(weight.double(), hidden.double(), targets).float(), rtol=1e-5, atol=1e-4)


def test_fp32_and_no_grad():
    weight, hidden, targets = _inputs(n=200, vocab=5000, h=64, dtype=torch.float32)
    with torch.no_grad():
        got = fused_token_logps(weight, hidden, targets)
    torch.testing.assert_close(got, plain(weight.double(), hidden.double(), targets).float(), rtol=1e-5, atol=1e-5)


def test_bf16_inputs_give_fp32_logps_and_a_bf16_gradient():
    weight, hidden, targets = _inputs(n=16, vocab=700, h=32, dtype=torch.float32)
    wb, hb = weight.bfloat16(), hidden.bfloat16().requires_grad_(True)
    got = fused_token_logps(wb, hb, targets, 128)
    assert got.dtype == torch.float32
    got.sum().backward()
    assert hb.grad.dtype == torch.bfloat16
    ref = hidden.bfloat16().requires_grad_(True)
    want = plain(wb, ref, targets)
    want.sum().backward()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(hb.grad.float(), ref.grad.float(), rtol=5e-2, atol=5e-2)


def test_autocast_bf16_with_fp32_master_weights_trains_the_head():
    """Mixed precision: fp32 weights and states, bf16 products; the backward recomputes in bf16 too."""
    weight, hidden, targets = _inputs(n=16, vocab=700, h=32, dtype=torch.float32)
    out = {}
    for name, fn in (("fused", lambda w, h: fused_token_logps(w, h, targets, 128)),
                     ("plain", lambda w, h: plain(w, h, targets))):
        w, h = weight.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = fn(w, h)
        lp.sum().backward()
        assert lp.dtype == torch.float32 and w.grad.dtype == h.grad.dtype == torch.float32
        out[name] = (lp, w.grad, h.grad)
    for got, want in zip(out["fused"], out["plain"]):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)


def test_chunk_columns_is_a_bounded_power_of_two():
    for n in (1, 100, 640, 5000, 10**6):
        c = chunk_columns(n)
        assert 1024 <= c <= 8192 and c & (c - 1) == 0
    assert chunk_columns(100) > chunk_columns(5000)


def test_can_fuse_only_what_it_computes_exactly():
    hidden = torch.randn(3, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight.requires_grad_(False)
    assert can_fuse(head, hidden)
    assert not can_fuse(head, hidden[None])
    assert can_fuse(nn.Linear(4, 10, bias=False), hidden)  # a trained head too (its weight gradient below)
    biased = nn.Linear(4, 10).requires_grad_(False)
    assert not can_fuse(biased, hidden)
    handle = head.register_forward_hook(lambda *a: None)  # e.g. GAPO records the head's logits
    assert not can_fuse(head, hidden)
    handle.remove()
    seen = []
    torch.func.jvp(lambda x: seen.append(can_fuse(head, x)) or x.sum(), (hidden,), (torch.ones_like(hidden),))
    assert seen == [False]  # forward-mode tangents: the plain path carries them


def test_engine_uses_it_for_a_frozen_head_and_agrees(tiny, monkeypatch):
    """`sequence_logps` with the head frozen gives the plain path's log-probs and trunk gradients."""
    import robalign.logprobs as engine
    from conftest import make_pairs
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs

    model, tok = tiny
    model.get_output_embeddings().weight.requires_grad_(False)
    data, _ = tokenize_pairs(tok, make_pairs(4), max_length=64, max_prompt_length=32)
    batch = collate(data, tok.pad_token_id)
    calls = []
    monkeypatch.setattr(engine, "fused_token_logps", lambda *a: calls.append(1) or fused_token_logps(*a))

    def run():
        model.zero_grad()
        out = engine.sequence_logps(model, batch)
        (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]
        return torch.cat([out.chosen, out.rejected]).detach(), grads

    fused, fused_grads = run()
    assert calls
    monkeypatch.setattr(engine, "can_fuse", lambda head, hidden: False)
    want, want_grads = run()
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-5)
    assert len(fused_grads) == len(want_grads) > 0
    for a, b in zip(fused_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
